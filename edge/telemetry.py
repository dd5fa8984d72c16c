"""Telemetry: publish from the ledger to MQTT, and mark a message done only on the broker's PUBACK.

Topics (prefix ``<topic_prefix>/<device_id>``), the contract dashboards rely on:

| topic            | retained | QoS | payload                                             |
|------------------|----------|-----|-----------------------------------------------------|
| availability     | yes      | 1   | ``online`` / ``offline`` (the last will)            |
| state            | yes      | 1   | JSON: counts, total, uptime, model id, faults, ...  |
| count/<bin>      | yes      | 1   | integer                                             |
| event            | no       | 1   | JSON per sorted item                                |
| cmd/<name>       | no       | 1   | commands in (``edge.commands``)                     |
| reply            | no       | 1   | one JSON reply per command                          |

With ``mqtt.ha_discovery`` the bin announces itself to Home Assistant under
``<ha_prefix>/…/config`` (retained), and again whenever ``<ha_prefix>/status``
says ``online``.

Everything network-bound runs in one background thread with its own paho
loop, so a dead broker never slows the sorting loop: the daemon only writes
the ledger and calls :meth:`Telemetry.notify`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import threading
import time
from typing import Any, Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import edge
from edge.backoff import backoff_delay
from edge.commands import Command, CommandError, parse_command
from edge.config import MqttConfig
from edge.errors import SmartbinError
from edge.ledger import Ledger, Pending

log = logging.getLogger(__name__)

INFLIGHT_LIMIT = 100


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.availability = f"{self.prefix}/availability"
        self.state = f"{self.prefix}/state"
        self.event = f"{self.prefix}/event"
        self.commands = f"{self.prefix}/cmd/+"
        self.reply = f"{self.prefix}/reply"

    def count(self, bin_id: str) -> str:
        return f"{self.prefix}/count/{bin_id}"

    def for_row(self, row: Pending) -> tuple[str, bool]:
        """The topic and retain flag of an outbox row."""
        if row.kind == "count":
            return self.count(row.key), True
        return self.event, False


def discovery_documents(
    ha_prefix: str, device_id: str, topics: Topics, bins: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery: a sensor per bin count, the total, the last item, a fault sensor."""
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
    ]
    return docs


def connack_timeout(cfg: MqttConfig) -> float:
    """How long a broker that took the TCP connection may take to answer it (CONNACK)."""
    return float(min(10, cfg.keepalive_s))


def read_password(cfg: MqttConfig) -> str | None:
    """From a file or an environment variable, never from the YAML."""
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as fh:
                return fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise SmartbinError(
                f"mqtt.password_file {cfg.password_file} cannot be read: {reason}",
                "create it readable by the smartbin user (mode 0600), holding only the password",
            ) from None
    return os.environ.get(cfg.password_env) if cfg.password_env else None


def make_client(cfg: MqttConfig, device_id: str, topics: Topics) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id or f"smartbin-{device_id}",
        clean_session=False,  # the broker keeps our session (and QoS 1 state) across reconnects
        protocol=mqtt.MQTTv311,
    )
    client.will_set(topics.availability, "offline", qos=1, retain=True)
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.ca_file:
        try:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
        except (OSError, ValueError) as exc:
            raise SmartbinError(
                f"mqtt TLS files cannot be loaded: {exc}",
                "check mqtt.ca_file, mqtt.cert_file and mqtt.key_file",
            ) from None
    return client


class Telemetry:
    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        ledger: Ledger,
        status: Callable[[], dict[str, Any]] = dict,
        bins: Sequence[str] = (),
        on_sort: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.ledger, self.status = cfg, ledger, status
        self.device_id, self.bins, self.on_sort = device_id, list(bins), on_sort
        self.topics = Topics(f"{cfg.topic_prefix}/{device_id}")
        self.client = make_client(cfg, device_id, self.topics)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.connected = False
        self.listening = False  # the broker has confirmed the command subscription
        self._commands_mid: int | None = None
        self.fault: str | None = None
        self.started = time.time()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._handed: set[int] = set()  # outbox seqs paho holds (it resends them itself)
        self._attempts = 0
        self._retry_at = 0.0
        self._connack_by = 0.0  # after a TCP connect: when a broker that has not answered is a fault
        self._state_due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    # -- called from the daemon ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """Something changed in the ledger: drain it and republish the state. Never blocks."""
        self._state_due.set()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Flush what the broker will take within ``timeout_s``, publish ``offline``, disconnect."""
        deadline = time.monotonic() + timeout_s
        while self.connected and (self._inflight or self.ledger.pending(1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self.connected:
            info = self.client.publish(self.topics.availability, "offline", qos=1, retain=True)
            while not info.is_published() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
            self.client.disconnect()
            self.client.loop(timeout=0.1)

    # -- the telemetry thread ---------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.connected and self._connack_by and time.monotonic() >= self._connack_by:
                self._connack_by = 0.0
                self.client.disconnect()
                self._failed(
                    f"broker {self.cfg.host}:{self.cfg.port} accepted the connection but sent no CONNACK "
                    f"within {connack_timeout(self.cfg):g} s (is it an MQTT broker, and does it want TLS "
                    "(mqtt.ca_file)?)"
                )
            if not self.connected and time.monotonic() >= self._retry_at:
                self._connect()
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                self._stop.wait(0.05)  # not connected: loop() returns at once
            if self.connected:
                if self._state_due.is_set():
                    self._state_due.clear()
                    self._publish_state()
                self._drain()

    def _failed(self, reason: str) -> None:
        if reason != self.fault:
            log.error("mqtt: %s", reason)
        self.fault = reason
        self._retry_at = time.monotonic() + backoff_delay(self._attempts, 0.5, self.cfg.reconnect_max_s)
        self._attempts += 1

    def _connect(self) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        try:
            self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
            self._connack_by = time.monotonic() + connack_timeout(self.cfg)
            self._retry_at = self._connack_by  # wait for CONNACK before retrying
        except ssl.SSLError as exc:
            self._failed(
                f"TLS with broker {where} failed: {exc.reason or exc} (check mqtt.ca_file and the host name)"
            )
        except OSError as exc:
            self._failed(f"cannot reach broker {where}: {exc.strerror or exc}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = (
                " (check mqtt.username and the password in mqtt.password_file or $"
                + str(self.cfg.password_env)
                + ")"
                if reason_code in ("Bad user name or password", "Not authorized")
                else ""
            )
            self._failed(
                f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}{hint}"
            )
            return
        if self.fault:
            log.info("mqtt: connected to %s:%s again", self.cfg.host, self.cfg.port)
        self.connected, self.fault, self._attempts, self._connack_by = True, None, 0, 0.0
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        # A broker restarted without its retained store has forgotten them: say them again.
        for bin_id, count in self.ledger.counts().items():
            client.publish(self.topics.count(bin_id), str(count), qos=1, retain=True)
        _, self._commands_mid = client.subscribe(self.topics.commands, qos=1)
        if self.cfg.ha_discovery:
            client.subscribe(f"{self.cfg.ha_prefix}/status", qos=1)
            self._announce()
        self._publish_state()

    def _announce(self) -> None:
        for topic, doc in discovery_documents(self.cfg.ha_prefix, self.device_id, self.topics, self.bins):
            self.client.publish(topic, json.dumps(doc, ensure_ascii=False), qos=1, retain=True)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == f"{self.cfg.ha_prefix}/status":
            if message.payload == b"online":
                self._announce()  # Home Assistant restarted and forgot us
            return
        name = message.topic.rsplit("/", 1)[-1]
        reply: dict[str, Any] = {"command": name[:40], "ok": False, "request_id": None}
        try:
            command = parse_command(name, message.payload, self.device_id)
            reply["request_id"] = command.request_id
            reply.update(self._execute(command))
            reply["ok"] = True
        except CommandError as exc:
            log.warning("mqtt: refused command on %s: %s", message.topic[:120], exc)
            reply["error"] = str(exc)
        except Exception as exc:  # a command must never take the daemon down
            log.exception("mqtt: command %s failed", name[:40])
            reply["error"] = f"internal error: {exc}"
        client.publish(self.topics.reply, json.dumps(reply), qos=1)

    def _execute(self, command: Command) -> dict[str, Any]:
        if command.name == "ping":
            return {"device_id": self.device_id, "version": edge.__version__}
        if command.name == "reset_counts":
            self.ledger.reset_counts()
            log.warning("mqtt: counts reset by command")
            self.notify()
            return {"counts": self.ledger.counts()}
        if self.on_sort is None:
            raise CommandError("sort is not available: the sorting loop is not running")
        self.on_sort()
        return {}

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._commands_mid:
            self.listening = not any(rc.is_failure for rc in reason_codes)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = self.listening = False
        if was and not self._stop.is_set():
            self._failed(f"lost broker {self.cfg.host}:{self.cfg.port} ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.ledger.acknowledge(seq)
            self._handed.discard(seq)

    def _drain(self) -> None:
        room = INFLIGHT_LIMIT - len(self._inflight)
        if room <= 0:
            return
        for row in self.ledger.pending(room + len(self._handed)):
            if row.seq in self._handed:
                continue
            topic, retain = self.topics.for_row(row)
            info = self.client.publish(topic, row.payload, qos=1, retain=retain)
            self._inflight[info.mid] = row.seq
            self._handed.add(row.seq)

    def state(self) -> dict[str, Any]:
        counts = self.ledger.counts()
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "uptime_s": round(time.time() - self.started),
            "dropped_events": self.ledger.dropped_events(),
            **self.status(),
        }

    def _publish_state(self) -> None:
        self.client.publish(
            self.topics.state, json.dumps(self.state(), separators=(",", ":")), qos=1, retain=True
        )


def diagnose(cfg: MqttConfig, device_id: str, timeout_s: float = 5.0) -> list[tuple[str, bool, str]]:
    """Connect step by step, DNS, TCP, TLS, auth, ACL, and say exactly which step fails."""
    import socket

    steps: list[tuple[str, bool, str]] = []
    where = f"{cfg.host}:{cfg.port}"
    try:
        address = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)[0][4]
        steps.append(("dns", True, f"{cfg.host} is {address[0]}"))
    except socket.gaierror as exc:
        return [("dns", False, f"cannot resolve {cfg.host}: {exc.strerror}; check mqtt.host")]
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout_s)
        steps.append(("tcp", True, f"{where} accepts connections"))
    except OSError as exc:
        return steps + [
            (
                "tcp",
                False,
                f"{where}: {exc.strerror or exc}; is the broker running, is a firewall in the way?",
            )
        ]
    if cfg.ca_file:
        try:
            context = ssl.create_default_context(cafile=cfg.ca_file)
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
            with context.wrap_socket(sock, server_hostname=cfg.host):
                steps.append(("tls", True, f"certificate of {cfg.host} verified with {cfg.ca_file}"))
        except (ssl.SSLError, OSError) as exc:
            return steps + [
                ("tls", False, f"{getattr(exc, 'reason', None) or exc}; check mqtt.ca_file and mqtt.host")
            ]
    else:
        sock.close()
    topics = Topics(f"{cfg.topic_prefix}/{device_id}")
    client = make_client(cfg, f"{device_id}-test", topics)
    result: dict[str, Any] = {}
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("connack", rc)
    client.on_message = lambda c, u, m: result.setdefault("echo", m.payload)
    client.on_subscribe = lambda c, u, mid, rcs, p: result.setdefault("suback", rcs)
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(cfg.host, cfg.port, 10)
        while "connack" not in result and time.monotonic() < deadline:
            client.loop(0.05)
        connack = result.get("connack")
        if connack is None or connack.is_failure:
            return steps + [
                (
                    "auth",
                    False,
                    f"broker refused: {connack or 'no answer'}; check mqtt.username and the password",
                )
            ]
        steps.append(("auth", True, f"logged in as {cfg.username or 'anonymous'}"))
        probe = f"{topics.prefix}/mqtt-test"
        client.subscribe(probe, qos=1)
        client.publish(probe, b"smartbin mqtt test", qos=1)
        while "echo" not in result and time.monotonic() < deadline:
            client.loop(0.05)
        if "echo" not in result:
            return steps + [
                (
                    "acl",
                    False,
                    f"publish/subscribe on {topics.prefix}/# is refused for this user; check the ACL",
                )
            ]
        steps.append(("acl", True, f"may publish and subscribe under {topics.prefix}/"))
    finally:
        client.disconnect()
    return steps
