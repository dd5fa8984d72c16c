"""A damaged outbox row against a real Mosquitto and a real ledger file: set aside, kept, and every
other row delivered in order, exactly once."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest

from edge.config import MqttConfig
from edge.ledger import Ledger, SortedItem
from edge.mqtt.telemetry import MAX_MESSAGE_BYTES, Telemetry
from tests.broker import Broker, Subscriber, mosquitto_path, wait_for

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it")

BINS = ("recyclable", "kitchen", "hazardous", "other")


def sort_items(ledger: Ledger, n: int) -> list[str]:
    """``n`` items counted with no telemetry running; their event ids, in the order sorted."""
    ids = []
    for i in range(n):
        item = SortedItem(str(uuid.uuid4()), time.time(), "item", BINS[i % 4], 0.9, False, 1.0, "m")
        ledger.record(item)
        ids.append(item.id)
    return ids


def damage(path, sql: str, *args) -> int:
    """Change the ledger file from another connection (a bit flip, a bug); the row's seq."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        seq = other.execute(
            "SELECT seq FROM outbox WHERE kind = 'event' ORDER BY seq LIMIT 1 OFFSET 2"
        ).fetchone()[0]
        other.execute(sql, (*args, seq))
        return seq
    finally:
        other.close()


def telemetry_for(broker: Broker, ledger: Ledger) -> Telemetry:
    cfg = MqttConfig(port=broker.port, host="127.0.0.1", reconnect_max_s=0.5, keepalive_s=5)
    telemetry = Telemetry(cfg, "bin-1", ledger)
    telemetry.start()
    return telemetry


def delivered_once_in_order(broker: Broker, ledger: Ledger, expected: list[str]) -> Subscriber:
    """Start the bin's telemetry and wait until the outbox is empty and ``expected`` has arrived."""
    events = Subscriber(broker.port, "smartbin/bin-1/event", client_id="exactly-once", qos=2)
    telemetry = telemetry_for(broker, ledger)
    try:
        wait_for(
            lambda: len(events.event_ids()) >= len(expected) and not ledger.pending(),
            timeout_s=15,
            what="every other event delivered",
        )
        time.sleep(0.5)  # a duplicate would come now
        assert events.event_ids() == expected  # in order, each once
        assert telemetry.faults() == {} and telemetry._thread.is_alive()
    finally:
        telemetry.stop()
        events.close()
    return events


@pytest.mark.parametrize(
    "sql, what",
    [
        ("UPDATE outbox SET payload = CAST(X'7BFF22' AS TEXT) WHERE seq = ?", "payload is not UTF-8"),
        ("UPDATE outbox SET key = CAST(X'61FF62' AS TEXT) WHERE seq = ?", "key is not UTF-8"),
    ],
)
def test_an_unreadable_outbox_row_is_set_aside_and_every_other_row_delivered_once(
    broker, tmp_path, caplog, sql, what
):
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    ids = sort_items(ledger, 6)
    seq = damage(path, sql)
    delivered_once_in_order(broker, ledger, ids[:2] + ids[3:])

    [kept] = ledger.dead_letters()
    assert kept.seq == seq and kept.kind == b"event" and what.split()[0] in kept.reason
    assert what in kept.reason
    [line] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert line.startswith(f"outbox: message {seq} (event") and what in line
    assert f"kept in the dead_letters table of {path.absolute()}" in line
    assert f"sqlite3 {path.absolute()} " in line and "FROM dead_letters" in line
    assert not [r for r in caplog.records if r.exc_info]  # no crash, no reconnect
    ledger.close()


def test_a_count_row_whose_topic_paho_refuses_is_set_aside_and_delivery_goes_on(broker, tmp_path, caplog):
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    ids = sort_items(ledger, 6)
    other = sqlite3.connect(path, isolation_level=None)
    seq = other.execute("SELECT seq FROM outbox WHERE kind = 'count' AND key = 'kitchen'").fetchone()[0]
    other.execute("UPDATE outbox SET key = 'kit#chen' WHERE seq = ?", (seq,))
    other.close()
    delivered_once_in_order(broker, ledger, ids)
    [kept] = ledger.dead_letters()
    assert (kept.seq, kept.key, kept.payload) == (seq, b"kit#chen", b"2")
    assert "cannot be published" in kept.reason and "wildcard" in kept.reason
    ledger.close()


def test_a_row_over_what_the_broker_takes_is_set_aside_and_nothing_is_sent_twice(tmp_path, caplog):
    """A broker that takes packets up to 300,000 bytes disconnects a client that sends a bigger one:
    sent, the row would end every connection, and the rows before it would be sent again each time."""
    broker = Broker(tmp_path, "max_packet_size 300000\n").start()
    try:
        path = tmp_path / "l.db"
        ledger = Ledger(path)
        ids = sort_items(ledger, 6)
        huge = json.dumps({"id": "huge", "filler": "x" * 400_000})
        seq = damage(path, "UPDATE outbox SET payload = ? WHERE seq = ?", huge)
        delivered_once_in_order(broker, ledger, ids[:2] + ids[3:])
        [kept] = ledger.dead_letters()
        assert kept.seq == seq and kept.payload == huge.encode()
        assert f"payload of {len(huge)} bytes is over the {MAX_MESSAGE_BYTES}" in kept.reason
        ledger.close()
    finally:
        broker.stop()
