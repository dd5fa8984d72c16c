"""docs/mqtt.md is the dashboard's contract: its example payloads must have the fields a real bin
publishes, no more and no fewer, so the page cannot drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edge.camera.trigger import TriggerState
from edge.ledger import Ledger
from edge.service.daemon import Daemon
from tests.broker import Subscriber, wait_for
from tests.test_daemon import config_for, needs_broker
from tests.test_telemetry import live, publish, replies  # noqa: F401 (fixture)

DOC = Path(__file__).resolve().parents[1] / "docs" / "mqtt.md"


def documented_payloads() -> dict[str, object]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- payload: ([\w-]+) -->\s*```json\n(.*?)```", text, re.S)
    return {name: json.loads(body) for name, body in blocks}


def shape(value: object, free_keys: frozenset[str] = frozenset({"counts"})) -> object:
    """The field names of a payload, nested; ``counts`` holds one key per bin that has items."""
    if isinstance(value, dict):
        return {k: (type(v).__name__ if k in free_keys else shape(v)) for k, v in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return type(value).__name__
    return "number"


def test_the_page_shows_every_payload_kind():
    assert set(documented_payloads()) == {
        "state",
        "event",
        "count",
        "fill",
        "fill-event",
        "held",
        "reply",
        "reply-refused",
    }


def test_the_page_names_every_trigger_state():
    text = DOC.read_text(encoding="utf-8")
    assert all(f"`{s.value}`" in text for s in TriggerState)


@needs_broker
def test_state_event_and_count_payloads_match_the_page(tmp_path, emulator, broker):  # noqa: F811
    config = config_for(tmp_path, emulator.port, broker.port)
    emptied_before = Ledger(config.ledger.path)
    emptied_before.emptied(["other"], "smartbin emptied (user test)", 1795390000.0, {"other": 200})
    emptied_before.close()
    sub = Subscriber(broker.port, "smartbin/t1/#")
    assert Daemon(config, opener=lambda cfg: emulator.tray).run() == 0
    wait_for(lambda: len(sub.payloads("/event")) == 3, what="3 events")
    docs = documented_payloads()
    state = json.loads(sub.payloads("/state")[-1])
    assert state["last_item"] is not None
    assert shape(state) == shape(docs["state"])
    assert shape(json.loads(sub.payloads("/event")[0])) == shape(docs["event"])
    fill = json.loads(sub.latest("/fill/other"))
    assert shape(fill) == shape(docs["fill"]) and shape(state["fill"]["other"]) == shape(docs["fill"])
    wait_for(lambda: sub.payloads("/fill_event"), what="the emptied fill event")
    assert shape(json.loads(sub.payloads("/fill_event")[0])) == shape(docs["fill-event"])
    count = next(p for t, p, _ in sub.messages if "/count/" in t)
    assert isinstance(json.loads(count), int) and isinstance(docs["count"], int)
    published = {t.split("/", 2)[2].split("/")[0] for t, _, _ in sub.messages}
    table = DOC.read_text(encoding="utf-8").split("## Delivery")[0]
    assert all(f"`{topic}" in table for topic in published), published
    sub.close()


@needs_broker
def test_command_replies_match_the_page(live):  # noqa: F811
    broker, telemetry, ledger, sub, sorts = live
    publish(broker.port, "smartbin/bin-1/cmd/ping", b'{"request_id": "r1"}')
    publish(broker.port, "smartbin/bin-1/cmd/reset_counts", b"{}")
    wait_for(lambda: len(replies(sub)) == 2, what="two replies")
    ok, refused = replies(sub)
    docs = documented_payloads()
    assert shape(ok) == shape(docs["reply"])
    assert shape(refused) == shape(docs["reply-refused"])
    assert refused["error"] == docs["reply-refused"]["error"]
