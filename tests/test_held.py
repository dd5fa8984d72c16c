"""Held items in the running daemon: a hand or a phone on the tray is never tipped by itself.

Real parts: the ledger, a Mosquitto (tests/broker.py), the servo controller emulated on a pty, the
daemon's own command table and loop. The camera is the simulated tray; the model is a stand-in that
says "hand" (or "phone") whatever it sees, since the shipped model has no such label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge.service.daemon as daemon_module
from edge.camera.simulation import SimulatedTray
from edge.ledger import Ledger
from edge.model.bundle import load_bundle
from edge.paths import DEFAULT_BUNDLE
from edge.service.daemon import Daemon
from edge.servo.emulator import LineEmulator
from tests.broker import Subscriber, wait_for
from tests.conftest import SHARED, make_photo_folder, needs_data, real_photos
from tests.test_daemon import Running, bin_moves, config_for, needs_broker
from tests.test_mqtt_doc import documented_payloads, shape

HAND_REASON = "a hand is on the tray"
PHONE_REASON = "phone on the tray: take it back"


class StandInModel:
    """The shipped bundle (its labels, hand and phone among them, and its never_tip rules) whose
    ``predict`` gives ``item`` 90% (and paper 6%) whatever the frame shows."""

    runtime = "stand-in"

    def __init__(self, item: str) -> None:
        self.bundle = load_bundle(DEFAULT_BUNDLE)
        self.labels = self.bundle.labels
        self.item = item

    def predict(self, frame: np.ndarray) -> np.ndarray:
        p = np.full(len(self.labels), 0.04 / (len(self.labels) - 2), np.float32)
        p[self.labels.index(self.item)], p[self.labels.index("paper")] = 0.9, 0.06
        return p


def stand_in(monkeypatch, item: str) -> None:
    monkeypatch.setattr(daemon_module, "load_classifier", lambda cfg: StandInModel(item))


def take_off(tray: SimulatedTray) -> None:
    """A person takes the item off the tray by hand."""
    with tray._lock:
        tray.current, tray._gap = None, tray.gap_frames


def untouched(daemon: Daemon, tray: SimulatedTray) -> bool:
    """The item lies on the tray, never tipped, never a move in the ledger, never counted."""
    ledger = daemon.ledger
    return (
        tray.current is not None
        and not tray.tipped
        and ledger.counts() == {}
        and ledger.moving() == []
        and ledger.parked_items() == 0
    )


@needs_broker
def test_a_hand_is_held_uncounted_with_a_tray_fault_and_a_held_event(tmp_path, emulator, broker, monkeypatch):
    stand_in(monkeypatch, "hand")
    config = config_for(tmp_path, emulator.port, broker.port)
    emulator.tray.total = 1
    sub = Subscriber(broker.port, "smartbin/t1/#")
    daemon = Daemon(config, opener=lambda cfg: emulator.tray)
    running = Running(daemon)
    wait_for(lambda: daemon.held is not None, what="the hand held")
    wait_for(lambda: daemon.telemetry.listening, what="commands subscribed")
    fault = daemon.faults()["tray"]
    assert HAND_REASON in fault and "never tipped" in fault
    wait_for(lambda: sub.payloads("/held"), what="the held event")
    held = json.loads(sub.payloads("/held")[0])
    assert held["item"] == "hand" and held["reason"] == HAND_REASON and held["override"] is False
    assert held["confidence"] == 0.9 and held["time"] > 1.7e9
    assert shape(held) == shape(documented_payloads()["held"])  # docs/mqtt.md shows what a bin sends
    # neither the sort command nor the tray button tips it, however often
    for n in range(3):
        sub.client.publish("smartbin/t1/cmd/sort", json.dumps({"request_id": f"r{n}"}).encode(), qos=1)
    wait_for(lambda: len(sub.payloads("/reply")) == 3, what="3 replies")
    for reply in map(json.loads, sub.payloads("/reply")):
        assert reply["ok"] is False and HAND_REASON in reply["error"] and "never tipped" in reply["error"]
    daemon.request_sort("the tray button")
    daemon.request_sort("the tray button")
    wait_for(lambda: json.loads(sub.payloads("/state")[-1])["held"] is not None, what="held in state")
    state = json.loads(sub.payloads("/state")[-1])
    assert state["held"]["item"] == "hand" and HAND_REASON in state["faults"]["tray"]
    assert untouched(daemon, emulator.tray) and bin_moves(emulator, config) == []
    assert len(sub.payloads("/held")) == 1 and sub.payloads("/event") == []
    # taken off the tray: the hold and its fault clear, nothing was ever counted
    take_off(emulator.tray)
    assert running.join() == 0
    assert daemon.held is None and "tray" not in daemon.faults()
    ledger = Ledger(config.ledger.path)
    assert ledger.counts() == {} and ledger.pending() == [] and ledger.parked_items() == 0
    sub.close()


@needs_broker
def test_a_phone_is_sorted_after_a_second_press_exactly_once(tmp_path, emulator, broker, monkeypatch):
    stand_in(monkeypatch, "phone")
    config = config_for(tmp_path, emulator.port, broker.port)
    emulator.tray.total = 1
    seen = []
    sub = Subscriber(broker.port, "smartbin/t1/#")
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.held is not None and daemon.telemetry.listening, what="the phone held")
    bin_for = daemon.held.decision.override_bin
    assert bin_for == "recyclable" and PHONE_REASON in daemon.faults()["tray"]
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "first"}', qos=1)
    wait_for(lambda: sub.payloads("/reply"), what="the first reply")
    first = json.loads(sub.payloads("/reply")[0])
    assert first["ok"] is False and "press sort again" in first["error"]
    assert untouched(daemon, emulator.tray)
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "second"}', qos=1)
    wait_for(lambda: seen, what="the phone sorted")
    for _ in range(3):  # more presses after the tip: the tray is empty, nothing more is counted
        daemon.request_sort("the tray button")
    assert running.join() == 0
    assert len(seen) == 1 and seen[0].item == "phone" and seen[0].bin == bin_for
    assert bin_moves(emulator, config) == [bin_for]
    assert Ledger(config.ledger.path).counts() == {bin_for: 1}
    assert json.loads(sub.payloads("/reply")[1]) == {"command": "sort", "ok": True, "request_id": "second"}
    assert daemon.held is None and "tray" not in daemon.faults()
    wait_for(lambda: sub.payloads("/event"), what="the phone's event")
    assert len(sub.payloads("/held")) == 1
    sub.close()


@needs_broker
def test_the_second_press_looks_again_and_never_tips_a_hand_that_came_since(
    tmp_path, emulator, broker, monkeypatch
):
    """A phone is held; a person reaches in to take it back; the second press arrives: the model looks
    again, sees the hand, and holds it. A press sorts only what the model still sees held and may sort."""
    model = StandInModel("phone")
    monkeypatch.setattr(daemon_module, "load_classifier", lambda cfg: model)
    config = config_for(tmp_path, emulator.port, broker.port)
    emulator.tray.total = 1
    sub = Subscriber(broker.port, "smartbin/t1/#")
    daemon = Daemon(config, opener=lambda cfg: emulator.tray)
    running = Running(daemon)
    wait_for(lambda: daemon.held is not None and daemon.telemetry.listening, what="the phone held")
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "first"}', qos=1)
    wait_for(lambda: sub.payloads("/reply"), what="the first reply")
    model.item = "hand"
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "first"}', qos=1)  # a duplicate delivery
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "second"}', qos=1)
    wait_for(lambda: daemon.held is not None and daemon.held.decision.item == "hand", what="the hand held")
    wait_for(lambda: len(sub.payloads("/reply")) == 3, what="3 replies")
    replies = [json.loads(r) for r in sub.payloads("/reply")]
    assert [r["ok"] for r in replies] == [False, False, True]
    assert "already received" in replies[1]["error"]
    daemon.request_sort("the tray button")
    daemon.request_sort("the tray button")
    wait_for(lambda: len(sub.payloads("/held")) == 2, what="the hand's held message")
    assert untouched(daemon, emulator.tray) and bin_moves(emulator, config) == []
    assert [json.loads(h)["item"] for h in sub.payloads("/held")] == ["phone", "hand"]
    running.stop()
    sub.close()


def test_no_sequence_of_presses_and_sort_commands_tips_a_hand(tmp_path, monkeypatch):
    """Whatever people press, in whatever order and rhythm, the hand stays on the tray."""
    stand_in(monkeypatch, "hand")
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator = LineEmulator(on_move=tray.servo_moved)
    config = config_for(tmp_path, emulator.port)
    config.servo.protocol = "line"
    daemon = Daemon(config, opener=lambda cfg: tray)
    running = Running(daemon)
    try:
        wait_for(lambda: daemon.held is not None, what="the hand held")
        commands = daemon.telemetry.commands
        turns = daemon.sorted_this_run

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            st.lists(
                st.sampled_from(["button", "controller-button", "mqtt-sort", "sigusr1", "wait"]),
                min_size=1,
                max_size=8,
            )
        )
        def presses(actions):
            for action in actions:
                if action == "button":
                    daemon.request_sort("the tray button")
                elif action == "controller-button":
                    emulator.press()  # EVT BUTTON over the pty, read by the loop
                elif action == "mqtt-sort":
                    reply = commands.dispatch("sort", b"{}", "t1")
                    assert reply["ok"] is False and HAND_REASON in reply["error"]
                elif action == "sigusr1":
                    daemon.request_sort("SIGUSR1 (smartbin sort)")
                else:
                    daemon._stop.wait(0.05)
            daemon._stop.wait(0.1)  # let the loop read the presses
            assert untouched(daemon, tray) and daemon.held is not None
            assert daemon.held.decision.item == "hand" and daemon.sorted_this_run == turns

        presses()
    finally:
        running.stop()
        emulator.stop()
    assert Ledger(config.ledger.path).counts() == {} and not tray.tipped


def test_home_assistant_gets_a_held_problem_sensor_from_the_state():
    from edge.mqtt.discovery import discovery_documents
    from edge.mqtt.topics import Topics

    docs = dict(discovery_documents("homeassistant", "bin-1", Topics("smartbin/bin-1"), ["other"]))
    held = docs["homeassistant/binary_sensor/bin-1/held/config"]
    assert held["state_topic"] == "smartbin/bin-1/state" and held["device_class"] == "problem"
    assert "value_json.held" in held["value_template"]
    assert Topics("smartbin/bin-1").held == "smartbin/bin-1/held"


def test_the_fleet_keeps_a_bins_held_item_as_text():
    from edge.service.fleet import Fleet

    fleet = Fleet("smartbin")
    held = {"item": "phone", "reason": "<img src=x onerror=alert(1)>", "override": True, "since": 1}
    fleet.receive("smartbin/b1/state", json.dumps({"total": 1, "faults": {}, "held": held}).encode())
    assert fleet.snapshot()["bins"][0]["held"] == held
    page = (Path(daemon_module.__file__).with_name("fleet.html")).read_text(encoding="utf-8")
    assert "held on the tray: ${held.item}: ${held.reason}" in page and "innerHTML" not in page


NOT_WASTE = SHARED / "not-waste"


@needs_data
def test_classify_json_and_eval_say_what_is_held(tmp_path, capsys):
    """A bundle whose ood rule finds nothing familiar (threshold above any probability): a real phone
    photo is held, printed with ``"bin": null`` and its reason; eval gives the share held per folder."""
    from edge.service.cli import main

    folder = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))
    meta = json.loads((folder / "model.json").read_text())
    meta["ood"] = {"score": "max_probability", "threshold": 1.5, "fitted_on": "test"}
    (folder / "model.json").write_text(json.dumps(meta))
    battery = real_photos("battery", 1)[0]
    assert main(["classify", "--json", "--model", str(folder), str(battery)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["bin"] is None and row["held"].startswith("unknown item: take it back")
    assert main(["classify", "--json", str(battery)]) == 0  # the shipped bundle: a battery it knows
    plain = json.loads(capsys.readouterr().out)
    assert plain["bin"] == "hazardous" and plain["held"] is None
    if NOT_WASTE.is_dir():  # a real phone photo: the shipped model knows phones, and holds one
        phone = sorted((NOT_WASTE / "phone").iterdir())[0]
        assert main(["classify", "--json", str(phone)]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["bin"] is None and row["held"] == PHONE_REASON
    items = make_photo_folder(tmp_path / "items", per_class=2, classes=("battery", "cardboard"))
    assert main(["eval", "--data", str(items), "--json", "--model", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["held"] == {"battery": 1.0, "cardboard": 1.0}
    assert main(["eval", "--data", str(items), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["held"] == {"battery": 0.0, "cardboard": 0.0}
