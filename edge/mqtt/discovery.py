"""Home Assistant MQTT discovery: the documents the bin announces itself with.

With ``mqtt.ha_discovery`` telemetry publishes them under ``<ha_prefix>/…/config`` (retained) on
every connect, and again whenever ``<ha_prefix>/status`` says ``online``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import edge
from edge.mqtt.topics import Topics


def discovery_documents(
    ha_prefix: str, device_id: str, topics: Topics, bins: Sequence[str], fill_bins: Sequence[str] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """A sensor per bin count, the total, the last item, a fault sensor, a held sensor (an item left on
    the tray, not tipped: not waste, or unknown); per bin whose fill is tracked,
    its fill (%), "nearly full" and "full" binary sensors and an "emptied" button."""
    device = {
        "identifiers": [f"smartbin_{device_id}"],
        "name": f"smartbin {device_id}",
        "manufacturer": "smartbin",
        "model": "automatic waste-sorting bin",
        "sw_version": edge.__version__,
    }
    common = {"availability_topic": topics.availability, "device": device}
    node = re.sub(r"[^a-zA-Z0-9_-]", "_", device_id)
    docs = [
        (
            f"{ha_prefix}/sensor/{node}/count_{bin_id}/config",
            {
                "name": f"{bin_id} count",
                "unique_id": f"smartbin_{node}_count_{bin_id}",
                "state_topic": topics.count(bin_id),
                "state_class": "total_increasing",
                "unit_of_measurement": "items",
                "icon": "mdi:delete-variant",
                **common,
            },
        )
        for bin_id in bins
    ]
    docs += [
        (
            f"{ha_prefix}/sensor/{node}/total/config",
            {
                "name": "items sorted",
                "unique_id": f"smartbin_{node}_total",
                "state_topic": topics.state,
                "value_template": "{{ value_json.total }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "items",
                **common,
            },
        ),
        (
            f"{ha_prefix}/sensor/{node}/last_item/config",
            {
                "name": "last item",
                "unique_id": f"smartbin_{node}_last_item",
                "state_topic": topics.event,
                "value_template": "{{ value_json.item }} → {{ value_json.bin }}",
                **common,
            },
        ),
        (
            f"{ha_prefix}/binary_sensor/{node}/fault/config",
            {
                "name": "fault",
                "unique_id": f"smartbin_{node}_fault",
                "state_topic": topics.state,
                "value_template": "{{ 'ON' if value_json.faults else 'OFF' }}",
                "device_class": "problem",
                **common,
            },
        ),
        (
            f"{ha_prefix}/binary_sensor/{node}/held/config",
            {
                "name": "held",
                "unique_id": f"smartbin_{node}_held",
                "state_topic": topics.state,
                "value_template": "{{ 'ON' if value_json.held else 'OFF' }}",
                "json_attributes_topic": topics.state,
                "json_attributes_template": "{{ (value_json.held or {}) | tojson }}",
                "device_class": "problem",
                "icon": "mdi:hand-back-left",
                **common,
            },
        ),
    ]
    for bin_id in fill_bins:
        fill = {"state_topic": topics.fill(bin_id), **common}
        docs += [
            (
                f"{ha_prefix}/sensor/{node}/fill_{bin_id}/config",
                {
                    "name": f"{bin_id} fill",
                    "unique_id": f"smartbin_{node}_fill_{bin_id}",
                    "value_template": "{{ value_json.percent }}",
                    "unit_of_measurement": "%",
                    "state_class": "measurement",
                    "icon": "mdi:delete-empty",
                    "json_attributes_topic": topics.fill(bin_id),
                    **fill,
                },
            ),
            (
                f"{ha_prefix}/binary_sensor/{node}/nearly_full_{bin_id}/config",
                {
                    "name": f"{bin_id} nearly full",
                    "unique_id": f"smartbin_{node}_nearly_full_{bin_id}",
                    "value_template": "{{ 'OFF' if value_json.state == 'ok' else 'ON' }}",
                    "device_class": "problem",
                    **fill,
                },
            ),
            (
                f"{ha_prefix}/binary_sensor/{node}/full_{bin_id}/config",
                {
                    "name": f"{bin_id} full",
                    "unique_id": f"smartbin_{node}_full_{bin_id}",
                    "value_template": "{{ 'ON' if value_json.state == 'full' else 'OFF' }}",
                    "device_class": "problem",
                    **fill,
                },
            ),
            (
                f"{ha_prefix}/button/{node}/emptied_{bin_id}/config",
                {
                    "name": f"{bin_id} emptied",
                    "unique_id": f"smartbin_{node}_emptied_{bin_id}",
                    "command_topic": topics.command("emptied"),
                    "payload_press": json.dumps({"bin": bin_id}),
                    "icon": "mdi:delete-restore",
                    **common,
                },
            ),
        ]
    return docs
