"""The bin's MQTT topics, under ``<topic_prefix>/<device_id>``: the contract dashboards rely on.

| topic            | retained | QoS | payload                                             |
|------------------|----------|-----|-----------------------------------------------------|
| availability     | yes      | 1   | ``online`` / ``offline`` (the last will)            |
| state            | yes      | 1   | JSON: counts, total, uptime, model id, faults, ...  |
| count/<bin>      | yes      | 1   | integer                                             |
| fill/<bin>       | yes      | 1   | JSON: items, capacity, percent, state, emptied_at   |
| fill_event       | no       | 1   | JSON: a bin nearly full, full, or emptied           |
| event            | no       | 1   | JSON per sorted item                                |
| held             | no       | 1   | JSON per item left on the tray, not tipped          |
| cmd/<name>       | no       | 1   | commands in (``edge.mqtt.commands``)                |
| reply            | no       | 1   | one JSON reply per command                          |
"""

from __future__ import annotations

from edge.ledger import Pending


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.availability = f"{self.prefix}/availability"
        self.state = f"{self.prefix}/state"
        self.event = f"{self.prefix}/event"
        self.commands = f"{self.prefix}/cmd/+"
        self.reply = f"{self.prefix}/reply"
        self.fill_event = f"{self.prefix}/fill_event"
        self.held = f"{self.prefix}/held"

    def count(self, bin_id: str) -> str:
        return f"{self.prefix}/count/{bin_id}"

    def command(self, name: str) -> str:
        return f"{self.prefix}/cmd/{name}"

    def fill(self, bin_id: str) -> str:
        return f"{self.prefix}/fill/{bin_id}"

    def for_row(self, row: Pending) -> tuple[str, bool]:
        """The topic and retain flag of an outbox row."""
        if row.kind == "count":
            return self.count(row.key), True
        if row.kind == "fill_event":
            return self.fill_event, False
        if row.kind == "held":
            return self.held, False
        return self.event, False
