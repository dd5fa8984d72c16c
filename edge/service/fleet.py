"""``smartbin fleet``: one page for every bin on a broker, served on this machine.

The server subscribes to ``<prefix>/+/#`` and keeps what each bin last said: its availability,
its state (counts, items today, faults, fill) and its last item. A bin appears with its first
message (the retained ones arrive at once) and is shown offline when its availability says so
(its last will, when it vanishes). The page asks the server for the picture every second; no
broker websockets are needed. A broker that does not answer is shown on the page, and retried.
A bin whose last state cannot be read (not strict JSON, over ``MAX_PAYLOAD``) keeps its card with a
note saying why; one whose retained state or availability is cleared (an empty message) is forgotten.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.mqtt.client import log_in
from edge.service.web import PageHandler, PageServer, listen, strict_json

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("fleet.html")
MAX_PAYLOAD = 64 * 1024


def bin_object(payload: bytes, what: str) -> dict[str, Any]:
    """A bin's ``state`` or ``event``: a JSON object of at most ``MAX_PAYLOAD`` bytes, in strict JSON
    (``NaN`` and ``Infinity`` would make the page's own JSON unreadable); ValueError says why not."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{len(payload):,} bytes, over the {MAX_PAYLOAD // 1024} KiB this page accepts")
    data = strict_json(payload)
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object")
    return data


@dataclass
class BinView:
    """What one bin has said, as the page shows it."""

    device_id: str
    online: bool | None = None  # None: no availability heard yet
    state: dict[str, Any] = field(default_factory=dict)
    last_event: dict[str, Any] | None = None
    heard_at: float = 0.0
    note: str | None = None  # why its last state is not shown

    def to_dict(self) -> dict[str, Any]:
        state = self.state
        return {
            "device_id": self.device_id,
            "online": self.online,
            "total": state.get("total"),
            "items_today": state.get("items_today"),
            "counts": state.get("counts", {}),
            "fill": state.get("fill", {}),
            "faults": state.get("faults", {}),
            "held": state.get("held"),  # an item left on the tray, not tipped (not waste, or unknown)
            "model_id": state.get("model_id"),
            "last_item": self.last_event or state.get("last_item"),
            "heard_at": self.heard_at,
            "note": self.note,
        }


class Fleet:
    """Every bin heard under ``prefix``; fed by the MQTT thread, read by the web server's."""

    def __init__(self, prefix: str = "smartbin") -> None:
        self.prefix = prefix.rstrip("/")
        self.bins: dict[str, BinView] = {}
        self.broker = {"connected": False, "problem": "connecting"}
        self.ignored = 0  # messages that were not what a bin publishes (not JSON, a wrong shape)
        self._lock = threading.Lock()

    def receive(self, topic: str, payload: bytes, now: float | None = None) -> None:
        parts = topic.split("/")
        head = self.prefix.split("/")
        if parts[: len(head)] != head or len(parts) < len(head) + 2:
            return
        device_id, kind = parts[len(head)], parts[len(head) + 1]
        if kind not in ("availability", "state", "event"):
            return  # counts, fill and commands are all in the state
        with self._lock:
            if not payload and kind in ("availability", "state"):
                self.forget(device_id)
                return
            view = self.bins.get(device_id) or BinView(device_id)
            try:
                self.update(view, kind, payload)
            except Exception as exc:  # noqa: BLE001 - any payload (even one nested past the recursion limit)
                self.ignored += 1
                log.warning("fleet: ignored a message on %s: %s", topic[:120], exc)
                if kind != "state":
                    return
                view.state, view.note = {}, f"its last state was unreadable ({str(exc)[:200]})"
            view.heard_at = time.time() if now is None else now
            self.bins[device_id] = view

    def update(self, view: BinView, kind: str, payload: bytes) -> None:
        if kind == "availability":
            view.online = payload == b"online"
        elif kind == "state":
            view.state, view.note = bin_object(payload, "state"), None
        else:
            event = bin_object(payload, "event")
            view.last_event = {k: event.get(k) for k in ("item", "bin", "confidence", "time")}

    def forget(self, device_id: str) -> None:
        """A bin whose retained state or availability was cleared (an empty message) was taken away."""
        if self.bins.pop(device_id, None) is not None:
            log.info("fleet: %s cleared its retained messages: no longer shown", device_id)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "prefix": self.prefix,
                "broker": dict(self.broker),
                "ignored": self.ignored,
                "bins": [self.bins[d].to_dict() for d in sorted(self.bins)],
            }


def watch(fleet: Fleet, cfg: MqttConfig) -> mqtt.Client:
    """Subscribe to every bin under the fleet's prefix, with the broker, login and TLS of ``cfg``; a
    broker that is down is retried (1 to 30 s)."""
    where = f"{cfg.host}:{cfg.port}"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"smartbin-fleet-{os.getpid()}", clean_session=True
    )
    log_in(client, cfg)

    def connected(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            fleet.broker.update(
                connected=False, problem=f"broker {where} refused the connection: {reason_code}"
            )
            return
        fleet.broker.update(connected=True, problem=None)
        client.subscribe(f"{fleet.prefix}/+/#", qos=1)
        log.info("fleet: connected to %s, listening to %s/+/#", where, fleet.prefix)

    def failed(client, userdata) -> None:
        fleet.broker.update(connected=False, problem=f"cannot reach broker {where}; retrying")
        log.warning("fleet: cannot reach broker %s; retrying", where)

    def disconnected(client, userdata, flags, reason_code, properties) -> None:
        fleet.broker.update(connected=False, problem=f"lost broker {where} ({reason_code}); retrying")

    client.on_connect, client.on_connect_fail, client.on_disconnect = connected, failed, disconnected
    client.on_message = lambda client, userdata, message: fleet.receive(message.topic, message.payload)
    client.suppress_exceptions = True  # a callback's failure must never end the network thread
    client.reconnect_delay_set(1, 30)
    client.connect_async(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    return client


def make_server(fleet: Fleet, host: str = "127.0.0.1", port: int = 8766) -> PageServer:
    class Handler(PageHandler):
        def get(self, path: str) -> None:
            if path == "/":
                self.send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/fleet":
                self.send_json(HTTPStatus.OK, fleet.snapshot())
            else:
                super().get(path)

    return listen(host, port, Handler)
