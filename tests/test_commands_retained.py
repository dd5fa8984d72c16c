"""Retained commands against a real Mosquitto and a real ledger: never carried out, always answered.

A retained ``cmd/<name>`` is sent again by the broker at every subscription, that is at every
reconnect and every restart of the bin: carried out, a retained ``reset_counts`` would zero the
counts at each one, and a retained ``emptied {}`` empty every bin."""

from __future__ import annotations

import json
import logging
import time
import uuid
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.ledger import Ledger, SortedItem
from edge.mqtt.commands import CommandTable
from edge.mqtt.telemetry import Telemetry
from edge.service.commands import register_commands
from tests.broker import Broker, Subscriber, mosquitto_path, wait_for

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it")

BINS = ("recyclable", "kitchen", "hazardous", "other")
CMD = "smartbin/bin-1/cmd/"


def publish(port: int, topic: str, payload: bytes, retain: bool) -> None:
    """One QoS 1 message from a throwaway client, as a dashboard or ``mosquitto_pub [-r]`` sends it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port, 5)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def sorted_ledger(path) -> Ledger:
    """A real ledger with one item counted into each bin."""
    ledger = Ledger(path)
    for bin_id in BINS:
        ledger.record(SortedItem(str(uuid.uuid4()), time.time(), "item", bin_id, 0.9, False, 1.0, "m1"))
    return ledger


def start_bin(broker: Broker, ledger: Ledger) -> SimpleNamespace:
    """The daemon's command table on a stand-in daemon whose ledger is real, and its telemetry."""
    daemon = SimpleNamespace(ledger=ledger, sorts=[])
    daemon.request_sort = lambda source: daemon.sorts.append(source)
    daemon.empty_bins = lambda requested, by: ledger.emptied(
        BINS if requested in (None, "all") else [requested], by, time.time()
    )
    commands = CommandTable()
    register_commands(commands, daemon, "bin-1")
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_max_s=0.5)
    daemon.telemetry = Telemetry(cfg, "bin-1", ledger, bins=BINS, commands=commands)
    daemon.telemetry.start()
    return daemon


def replies(sub: Subscriber) -> list[dict]:
    return [json.loads(p) for p in sub.payloads("/reply")]


def answered(sub: Subscriber, times: int) -> bool:
    """Each of the three retained commands has been answered at least ``times`` times."""
    names = [reply["command"] for reply in replies(sub)]
    return all(names.count(name) >= times for name in ("reset_counts", "emptied", "sort"))


def refusal(name: str) -> str:
    return (
        "retained command refused: publish commands without the retain flag; clear it with an empty "
        f"retained message on {CMD}{name}"
    )


def test_retained_commands_are_refused_at_every_reconnect_and_restart_and_never_carried_out(
    broker, tmp_path, caplog
):
    ledger = sorted_ledger(tmp_path / "l.db")
    counts, fill = ledger.counts(), ledger.fill()
    publish(broker.port, CMD + "reset_counts", b'{"confirm": "reset_counts", "request_id": "r1"}', True)
    publish(broker.port, CMD + "emptied", b"{}", True)
    publish(broker.port, CMD + "sort", b"{}", True)
    sub = Subscriber(broker.port, "smartbin/bin-1/reply")
    bin_ = start_bin(broker, ledger)
    wait_for(lambda: answered(sub, 1), what="three refusals")

    broker.stop()  # a clean stop keeps the retained commands; the bin reconnects and subscribes again
    broker.start()
    wait_for(lambda: answered(sub, 2), timeout_s=20, what="three refusals after the reconnect")
    warnings = [r.getMessage() for r in caplog.records if "retained command" in r.getMessage()]
    assert len(warnings) == 3  # once per topic, not once per reconnect
    assert all(w.startswith(f"mqtt: retained command on {CMD}") for w in warnings)
    bin_.telemetry.stop()

    again = start_bin(broker, ledger)  # the bin restarted
    wait_for(lambda: answered(sub, 3), what="three refusals after the restart")
    again.telemetry.stop()
    sub.close()

    assert ledger.counts() == counts and ledger.fill() == fill and bin_.sorts == again.sorts == []
    assert {reply["command"] for reply in replies(sub)} == {"emptied", "reset_counts", "sort"}
    for reply in replies(sub):  # QoS 1: a command the broker sent twice is answered twice, alike
        name = reply["command"]
        request_id = "r1" if name == "reset_counts" else None
        assert reply == {"command": name, "ok": False, "request_id": request_id, "error": refusal(name)}


def test_clearing_a_retained_command_is_not_taken_for_the_command(broker, tmp_path, caplog):
    """Mosquitto forwards the empty retained message that clears a command to the bin's live
    subscription without the retain flag: on its own it would read as ``emptied`` of every bin."""
    caplog.set_level(logging.INFO, logger="edge.mqtt.commands")
    ledger = sorted_ledger(tmp_path / "l.db")
    fill = ledger.fill()
    publish(broker.port, CMD + "emptied", b'{"bin": "all"}', True)
    sub = Subscriber(broker.port, "smartbin/bin-1/reply")
    bin_ = start_bin(broker, ledger)
    wait_for(lambda: len(replies(sub)) == 1, what="the refusal")

    publish(broker.port, CMD + "emptied", b"", True)  # the fix the refusal names
    wait_for(lambda: len(replies(sub)) == 2, what="the clearing answered")
    assert ledger.fill() == fill
    assert replies(sub)[1] == {
        "command": "emptied",
        "ok": False,
        "request_id": None,
        "error": f"taken as clearing the retained command on {CMD}emptied: nothing done; "
        "send the command again to carry it out",
    }
    assert f"mqtt: the retained command on {CMD}emptied was cleared" in caplog.text

    publish(broker.port, CMD + "emptied", b"", False)  # an ordinary emptied of every bin, now carried out
    wait_for(lambda: len(replies(sub)) == 3, what="the emptied reply")
    assert replies(sub)[2]["ok"] is True
    assert {items for items, _ in ledger.fill().values()} == {0}
    bin_.telemetry.stop()
    sub.close()
