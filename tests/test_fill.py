"""How full each bin is: the fill kept with the counts, its events, a full bin parking items, emptied."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from edge.camera.simulation import empty_tray
from edge.config import parse_config
from edge.errors import SmartbinError
from edge.fill import bins_to_empty, crossing, fill_report, fill_state, full_bins, full_fault
from edge.ledger import Ledger, SortedItem
from edge.mqtt.commands import CommandTable
from edge.mqtt.discovery import discovery_documents
from edge.mqtt.topics import Topics
from edge.service.cli import main as smartbin
from edge.service.daemon import Daemon
from edge.servo.emulator import LineEmulator
from tests.broker import Subscriber, wait_for
from tests.test_daemon import Running, config_for, needs_broker

BINS = ["recyclable", "kitchen", "hazardous", "other"]


class EmptyTray:
    """A camera over a tray nobody uses: the daemon runs until it is stopped."""

    finite = False
    description = "an empty tray"

    def read(self) -> np.ndarray:
        time.sleep(0.02)
        return cv2.add(empty_tray(), np.random.default_rng().integers(0, 4, (480, 640, 3), dtype=np.uint8))

    def close(self) -> None:
        pass


def item(n: int, bin_id: str = "other") -> SortedItem:
    return SortedItem(f"id{n}", 1000.0 + n, "paper", bin_id, 0.9, False, 10.0, "m")


def test_states_and_crossings():
    assert [fill_state(n, 10, 0.8) for n in (0, 7, 8, 9, 10, 12)] == ["ok", "ok"] + ["nearly_full"] * 2 + [
        "full"
    ] * 2
    assert crossing(7, 8, 10, 0.8) == "nearly_full" and crossing(9, 10, 10, 0.8) == "full"
    assert crossing(8, 9, 10, 0.8) is None and crossing(10, 11, 10, 0.8) is None
    assert crossing(10, 0, 10, 0.8) is None  # emptying is its own event
    report = fill_report({"other": (164, 1795390000.0)}, {"other": 200, "kitchen": 100}, 0.8)
    assert report["other"] == {
        "items": 164,
        "capacity": 200,
        "percent": 82.0,
        "state": "nearly_full",
        "emptied_at": 1795390000.0,
    }
    assert report["kitchen"]["items"] == 0 and report["kitchen"]["emptied_at"] is None
    full = fill_report({"other": (200, None)}, {"other": 200}, 0.8)
    assert full_bins(full) == ["other"] and "other (200 of 200 items)" in full_fault(full)
    assert full_fault(report) is None


def test_bins_to_empty():
    assert bins_to_empty("other", BINS) == ["other"]
    assert bins_to_empty("all", BINS) == bins_to_empty(None, BINS) == BINS
    with pytest.raises(ValueError, match="no bin 'compost'; the bins are: recyclable, kitchen"):
        bins_to_empty("compost", BINS)


@pytest.mark.parametrize(
    "section, words",
    [
        ({"capacity": {"other": 0}}, "fill.capacity.other = 0 is not a number of items from 1 to 1000000"),
        ({"capacity": {"other": -5}}, "fill.capacity.other = -5"),
        ({"capacity": {"other": "lots"}}, "fill.capacity.other"),
        ({"capacity": {"other": 10**30}}, "fill.capacity.other = 1000000000000000000000000000000"),
        ({"nearly_full": 1.5}, "fill.nearly_full = 1.5"),
    ],
)
def test_a_bad_capacity_is_refused_with_the_key(section, words):
    with pytest.raises(SmartbinError, match=words) as err:
        parse_config({"fill": section})
    assert err.value.fix


def test_the_fill_is_counted_with_the_item_survives_a_restart_and_is_emptied(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    for n in range(4):
        ledger.record(item(n), capacity=5, nearly_full=0.8)
    ledger.close()
    ledger = Ledger(path)  # a restart
    assert ledger.fill() == {"other": (4, None)}
    ledger.record(item(4), capacity=5, nearly_full=0.8)
    ledger.record(item(5), capacity=5, nearly_full=0.8)  # past full (park_when_full off)
    events = [json.loads(p.payload) for p in ledger.pending(100) if p.kind == "fill_event"]
    assert [(e["event"], e["items"]) for e in events] == [("nearly_full", 4), ("full", 5)]
    assert events[0] == {
        "bin": "other",
        "event": "nearly_full",
        "time": 1003.0,
        "items": 4,
        "capacity": 5,
        "by": None,
    }
    assert ledger.emptied(["other", "kitchen"], "a test", 2000.0, {"other": 5}) == {"other": 6, "kitchen": 0}
    assert ledger.fill() == {"kitchen": (0, 2000.0), "other": (0, 2000.0)}
    assert ledger.counts() == {"other": 6}  # counts are not the fill: they keep going
    emptied = [json.loads(p.payload) for p in ledger.pending(100) if p.kind == "fill_event"][2:]
    assert emptied[0] == {
        "bin": "other",
        "event": "emptied",
        "time": 2000.0,
        "items": 6,
        "capacity": 5,
        "by": "a test",
    }
    assert emptied[1]["capacity"] is None  # kitchen has none here
    ledger.record(item(6), capacity=5, nearly_full=0.8)
    assert ledger.fill()["other"] == (1, 2000.0)


def test_fill_events_reach_their_topic_and_are_never_dropped_with_old_events(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db", max_pending_events=1)
    ledger.record(item(0), capacity=1)
    ledger.record(item(1), capacity=1)
    kinds = [p.kind for p in ledger.pending(100)]
    assert kinds.count("fill_event") == 1 and kinds.count("event") == 1  # one event dropped, not the fill
    row = next(p for p in ledger.pending(100) if p.kind == "fill_event")
    assert Topics("smartbin/b").for_row(row) == ("smartbin/b/fill_event", False)


def test_home_assistant_gets_a_fill_sensor_two_alarms_and_an_emptied_button_per_tracked_bin():
    topics = Topics("smartbin/bin-1")
    docs = dict(discovery_documents("homeassistant", "bin-1", topics, BINS, ["other"]))
    plain = dict(discovery_documents("homeassistant", "bin-1", topics, BINS))
    added = {t: d for t, d in docs.items() if t not in plain}
    assert sorted(added) == [
        "homeassistant/binary_sensor/bin-1/full_other/config",
        "homeassistant/binary_sensor/bin-1/nearly_full_other/config",
        "homeassistant/button/bin-1/emptied_other/config",
        "homeassistant/sensor/bin-1/fill_other/config",
    ]
    button = added["homeassistant/button/bin-1/emptied_other/config"]
    assert button["command_topic"] == "smartbin/bin-1/cmd/emptied"
    table = CommandTable()
    table.register("emptied", lambda command: {}, {"bin"})
    assert table.parse("emptied", button["payload_press"].encode(), "bin-1").args == {"bin": "other"}
    sensor = added["homeassistant/sensor/bin-1/fill_other/config"]
    assert sensor["state_topic"] == "smartbin/bin-1/fill/other" and sensor["unit_of_measurement"] == "%"
    assert len({d["unique_id"] for d in docs.values()}) == len(docs)


def test_a_full_bin_receives_nothing_until_it_is_emptied(tmp_path, emulator, caplog):
    """Three items, every bin holding one: no bin is counted past its capacity, an item for a full bin
    stays on the tray (parked, not counted) and the state names the bin; emptied lets it take items."""
    config = config_for(tmp_path, emulator.port)
    config.model.threshold = 1.0  # every item is uncertain: the fallback bin, other (or hazardous by costs)
    config.fill.capacity = {b: 1 for b in BINS}
    seen = []
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.started and len(seen) + daemon.ledger.parked_items() >= 2, what="two items")
    counts = daemon.ledger.counts()
    assert all(n == 1 for n in counts.values())
    parked = daemon.ledger.parked_items()
    assert parked >= 1, f"two of the synthetic items are expected in one bin: {[i.bin for i in seen]}"
    full = [b for b, f in daemon.status()["fill"].items() if f["state"] == "full"]
    assert sorted(full) == sorted(counts)
    faults = daemon.faults()
    assert "is full" in faults["tray"] and "smartbin emptied" in faults["tray"]
    assert all(f"{b} (1 of 1 items)" in faults["fill"] for b in full)
    assert "left on the tray: bin" in caplog.text
    other_process = Ledger(config.ledger.path)  # `smartbin emptied all`, run beside the service
    assert other_process.emptied(BINS, "a test", time.time()) == {b: counts.get(b, 0) for b in BINS}
    other_process.close()
    wait_for(lambda: not {"fill", "tray"} & set(daemon.faults()), what="both faults cleared")
    assert running.stop() == 0
    ledger = Ledger(config.ledger.path)
    assert sum(ledger.counts().values()) == len(seen) and ledger.parked_items() == parked


def test_unknown_bin_is_refused_by_the_daemon(tmp_path, emulator):
    daemon = Daemon(config_for(tmp_path, emulator.port), opener=lambda cfg: emulator.tray)
    daemon.start()
    try:
        with pytest.raises(SmartbinError, match="no bin 'compost'"):
            daemon.empty_bins("compost", "a test")
    finally:
        daemon.shutdown()


@needs_broker
def test_emptied_over_mqtt_with_the_fill_retained_and_the_event(tmp_path, emulator, broker):
    config = config_for(tmp_path, emulator.port, broker.port)
    config.fill.capacity = {"other": 100, "hazardous": 100, "recyclable": 100, "kitchen": 100}
    sub = Subscriber(broker.port, "smartbin/t1/#")
    daemon = Daemon(config, opener=lambda cfg: EmptyTray())
    running = Running(daemon)
    wait_for(lambda: sub.latest("/availability") == b"online", what="the bin online")
    wait_for(lambda: sub.latest("/fill/other") is not None, what="the retained fill")
    assert json.loads(sub.latest("/fill/other"))["state"] == "ok"
    from tests.test_telemetry import publish

    publish(broker.port, "smartbin/t1/cmd/emptied", b'{"bin": "other", "request_id": "e1"}')
    publish(broker.port, "smartbin/t1/cmd/emptied", b'{"bin": "compost"}')
    wait_for(lambda: len(sub.payloads("/reply")) == 2, what="two replies")
    ok, refused = (json.loads(p) for p in sub.payloads("/reply"))
    assert ok == {"command": "emptied", "ok": True, "request_id": "e1", "emptied": {"other": 0}}
    assert not refused["ok"] and "no bin 'compost'; the bins are: recyclable" in refused["error"]
    wait_for(lambda: sub.payloads("/fill_event"), what="the emptied event")
    event = json.loads(sub.payloads("/fill_event")[0])
    assert event["event"] == "emptied" and event["by"] == "MQTT command" and event["capacity"] == 100
    wait_for(lambda: json.loads(sub.latest("/fill/other"))["emptied_at"] is not None, what="the new fill")
    # `smartbin emptied` on the bin writes the ledger from another process: the topic follows by itself
    other_process = Ledger(config.ledger.path)
    other_process.emptied(["kitchen"], "smartbin emptied (user test)", 1795390000.0)
    other_process.close()
    wait_for(
        lambda: json.loads(sub.latest("/fill/kitchen"))["emptied_at"] == 1795390000.0,
        what="the fill emptied from the command line, published",
    )
    assert running.stop() == 0
    sub.close()


def test_smartbin_emptied_on_the_command_line(tmp_path, capsys):
    config = tmp_path / "smartbin.yaml"
    config.write_text(f"ledger: {{path: {tmp_path / 'ledger.db'}}}\n")
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.record(item(0))
    ledger.close()
    assert smartbin(["emptied", "other", "--config", str(config)]) == 0
    assert "other: emptied (it held 1 items" in capsys.readouterr().out
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.fill()["other"][0] == 0
    event = json.loads([p for p in ledger.pending(10) if p.kind == "fill_event"][0].payload)
    assert event["by"].startswith("smartbin emptied (user ") and event["capacity"] == 200
    ledger.close()
    assert smartbin(["emptied", "compost", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no bin 'compost'" in err and "fix:" in err


def test_a_long_press_of_the_controller_button_empties_the_bins(tmp_path):
    emulator = LineEmulator()
    config = config_for(tmp_path, emulator.port)
    config.servo.protocol = "line"
    before = Ledger(config.ledger.path)
    before.record(item(0))
    before.close()
    daemon = Daemon(config, opener=lambda cfg: EmptyTray())
    running = Running(daemon)
    wait_for(lambda: daemon.ready, what="the daemon ready")
    emulator.press(long=True)
    wait_for(lambda: daemon.fill()["other"]["items"] == 0, what="the fill reset by the long press")
    assert running.stop() == 0
    emulator.stop()
    ledger = Ledger(config.ledger.path)
    events = [json.loads(p.payload) for p in ledger.pending(100) if p.kind == "fill_event"]
    assert {e["by"] for e in events} == {"the tray button (long press)"} and len(events) == 4
    assert ledger.counts() == {"other": 1}  # a long press sorts nothing


def test_the_fill_table_keeps_the_schema_version_so_a_rollback_still_opens_the_ledger(tmp_path):
    """The release before fill levels accepts schema 4 at most; a new table it can ignore must not bump it."""
    import sqlite3

    from edge import ledger as ledger_module

    Ledger(tmp_path / "ledger.db").close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(ledger_module.MIGRATIONS) == 4
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'fill'").fetchone() == ("fill",)
    db.close()
