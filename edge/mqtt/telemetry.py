"""Telemetry: publish from the ledger to MQTT, and mark a message done only on the broker's PUBACK.

The topics and their payloads are ``edge.mqtt.topics``; what the bin says to Home Assistant,
``edge.mqtt.discovery``; commands in and their replies, ``edge.mqtt.commands`` (telemetry only
hands each command to the table it was given and publishes the reply).

Everything network-bound runs in one background thread with its own paho
loop, so a dead broker never slows the sorting loop: the daemon only writes
the ledger and calls :meth:`Telemetry.notify`.

Nothing ends that thread: an exception in a paho callback or in reading the
ledger (a full disk that keeps acknowledgements from being written, say) is
logged once with its traceback, becomes the ``mqtt`` fault, drops the
connection and is retried with backoff; unacknowledged rows stay in the
outbox and are sent again. A row that can never be sent (unreadable, too big,
a topic paho refuses) is set aside in the ledger instead (``dead_letters``), so
that the rows behind it go on. Should the thread die all the same,
:meth:`Telemetry.notify` starts a new one. :meth:`Telemetry.faults` says what
is wrong: ``mqtt`` (the link or the thread) and ``outbox`` (events dropped past
``ledger.max_pending_events`` since this telemetry started, until the outbox
has drained).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import ssl
import sys
import threading
import time
from typing import Any, Callable, Sequence

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.ledger import Ledger, Pending
from edge.mqtt.client import connack_timeout, make_client
from edge.mqtt.commands import CommandTable
from edge.mqtt.discovery import discovery_documents
from edge.mqtt.topics import Topics
from edge.retry import Retry

log = logging.getLogger(__name__)

INFLIGHT_LIMIT = 100
# The largest payload the drain publishes. The bin writes none over 2 KiB; a bigger row is damage or a
# bug, and a broker that takes no packet that big (AWS IoT Core: 128 KB) would end every connection
# on it, each time after the rows before it were sent again. Such a row is set aside instead.
MAX_MESSAGE_BYTES = 64 * 1024


def explain(exc: BaseException, ledger: Ledger) -> str:
    """What went wrong in the telemetry thread, and what fixes it, in one line."""
    text = (str(exc) or type(exc).__name__).encode("utf-8", "backslashreplace").decode("utf-8")
    if not isinstance(exc, sqlite3.Error):
        return f"{type(exc).__name__}: {text} (a bug in smartbin: report it with the traceback in the log)"
    path = ledger.path.absolute()
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name == "SQLITE_FULL" or "disk is full" in text:
        return f"{text} (the ledger cannot be written: free space on {path.parent})"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return f"{text} (another process holds the ledger {path}: stop it)"
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return f"{text} (the ledger {path} cannot be written: check its owner and its folder's permissions)"
    return f"ledger {path}: {text} (check the disk; a corrupt ledger can be moved aside: counts restart at 0)"


def outbox_fault(dropped: int, max_pending_events: int) -> str:
    return (
        f"{dropped} event{'s' if dropped != 1 else ''} dropped since start: the broker did not take them "
        f"while more than ledger.max_pending_events ({max_pending_events}) events waited; raise "
        "ledger.max_pending_events or fix the broker connection"
    )


class Telemetry:
    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        ledger: Ledger,
        status: Callable[[], dict[str, Any]] = dict,
        bins: Sequence[str] = (),
        commands: CommandTable | None = None,
        fill_bins: Sequence[str] = (),
    ) -> None:
        self.cfg, self.ledger, self.status = cfg, ledger, status
        self.device_id, self.bins, self.fill_bins = device_id, list(bins), list(fill_bins)
        self.commands = commands if commands is not None else CommandTable()
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
        self.retry = Retry("mqtt", log, cfg.reconnect_max_s)  # its fault is faults()["mqtt"]
        self._crash: str | None = None  # what last failed inside the thread, until it works again
        self._acked = False  # an acknowledgement was written since that failure
        self._death: str | None = None  # what ended a thread that died all the same
        self.max_pending_events = ledger.max_pending_events
        self._dropped_at_start: int | None = None
        self._dropped_seen = 0  # events dropped since start that are already a fault
        self._outbox_fault: str | None = None
        self._outbox_empty = False  # the last drain found nothing unacknowledged
        self.started = time.time()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._handed: set[int] = set()  # outbox seqs paho holds (it resends them itself)
        self._connack_by = 0.0  # after a TCP connect: when a broker that has not answered is a fault
        self._state_due = threading.Event()
        self._outbox_due = threading.Event()  # look at the ledger's dropped_events
        self._outbox_due.set()
        self._stop = threading.Event()
        self._restart_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    @property
    def fault(self) -> str | None:
        """What is wrong with the broker link or the thread (faults()["mqtt"]), or None."""
        return self.retry.fault

    # -- called from the daemon ---------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # else the thread reads it, and names the problem
            self._dropped_at_start = self.ledger.dropped_events()
        self._thread.start()

    def notify(self) -> None:
        """Something changed in the ledger: drain it and republish the state. Never blocks.

        The last line of defence too: a telemetry thread that died is started again here."""
        self._state_due.set()
        self._outbox_due.set()
        if self._thread_died():
            self._restart()

    def faults(self) -> dict[str, str]:
        """Telemetry's faults by part: ``mqtt`` (the broker link, the thread), ``outbox`` (dropped events)."""
        died = self._thread_died()
        found = {
            "mqtt": (
                f"the telemetry thread ended ({self._death or 'no reason given'}); it starts again "
                "with the next change"
                if died
                else self.fault
            ),
            "outbox": self._outbox_fault,
        }
        return {part: reason for part, reason in found.items() if reason}

    def stop(self, timeout_s: float = 3.0) -> None:
        """Flush what the broker will take within ``timeout_s``, publish ``offline``, disconnect."""
        deadline = time.monotonic() + timeout_s
        while self.connected and self._unsent() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self.connected:
            info = self.client.publish(self.topics.availability, "offline", qos=1, retain=True)
            while not info.is_published() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
            self.client.disconnect()
            self.client.loop(timeout=0.1)

    def _unsent(self) -> bool:
        try:
            return bool(self._inflight or self.ledger.pending(1))
        except sqlite3.Error:  # the thread names it as the fault; a stop must not fail on it
            return False

    def _thread_died(self) -> bool:
        started = self._thread.ident is not None
        return started and not self._thread.is_alive() and not self._stop.is_set()

    def _restart(self) -> None:
        with self._restart_lock:
            if not self._thread_died():
                return
            log.error(
                "mqtt: the telemetry thread ended (%s); starting a new one", self._death or "no reason given"
            )
            self._drop()  # paho may have been halfway through a packet: start from a new connection
            self.retry.retry_at = 0.0
            self._death = None
            self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
            self._thread.start()

    # -- the telemetry thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._turn()
                except Exception:  # paho 2 lets a callback's exception out of loop(): never let it end us
                    self._crashed()
        except BaseException as exc:  # SystemExit and the like: notify() starts a new thread
            self._death = f"{type(exc).__name__}: {exc}"
            log.error("mqtt: the telemetry thread is ending: %s", self._death, exc_info=True)
            raise

    def _turn(self) -> None:
        if not self.connected and self._connack_by and time.monotonic() >= self._connack_by:
            self._connack_by = 0.0
            self.client.disconnect()
            self.retry.failed(
                f"broker {self.cfg.host}:{self.cfg.port} accepted the connection but sent no CONNACK "
                f"within {connack_timeout(self.cfg):g} s (is it an MQTT broker, and does it want TLS "
                "(mqtt.ca_file)?)"
            )
        if not self.connected and self.retry.due:
            self._connect()
        if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
            self._stop.wait(0.05)  # not connected: loop() returns at once
        if self._outbox_due.is_set():
            self._outbox_due.clear()
            try:
                self._watch_outbox()
            except BaseException:
                self._outbox_due.set()  # look again after the backoff
                raise
        if self.connected:
            if self._state_due.is_set():
                self._state_due.clear()
                self._publish_state()
            self._drain()
            self._recovered()

    def _crashed(self) -> None:
        """Called in an ``except`` block: log it once, make it the fault, reconnect after a backoff."""
        exc = sys.exc_info()[1]
        problem = explain(exc, self.ledger) if exc is not None else "unknown error"
        delay = self.retry.schedule()
        if problem != self._crash:
            log.exception("mqtt: telemetry failed: %s; reconnecting", problem)
        self._crash = problem
        self.retry.fault = f"telemetry failed: {problem}; retrying in {delay:.1f} s"
        self._drop()

    def _drop(self) -> None:
        """Forget the connection: what the ledger still holds unacknowledged is published again."""
        self.connected = self.listening = False  # first: no "lost broker" from on_disconnect
        self._connack_by = 0.0
        self._inflight.clear()
        self._handed.clear()
        self._acked = False
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 (a half-broken client: connect() starts a new socket anyway)
            log.debug("mqtt: disconnect failed", exc_info=True)

    def _recovered(self) -> None:
        """After a failure: connected, drained, and acknowledgements written (or none needed)."""
        if self._crash is not None and (self._acked or not self._inflight):
            log.info("mqtt: telemetry works again (it failed with: %s)", self._crash)
            self._crash = None
            self.retry.recovered()
        if self._outbox_fault is not None and self._outbox_empty:
            log.info(
                "outbox: drained to the broker; %d events dropped since start remain lost",
                self._dropped_seen,
            )
            self._outbox_fault = None
            self._state_due.set()

    def _watch_outbox(self) -> None:
        dropped_total = self.ledger.dropped_events()
        if self._dropped_at_start is None:
            self._dropped_at_start = dropped_total
        dropped = dropped_total - self._dropped_at_start
        if dropped > self._dropped_seen:
            self._dropped_seen = dropped
            if self._outbox_fault is None:
                log.error("outbox: %s", outbox_fault(dropped, self.max_pending_events))
            self._outbox_fault = outbox_fault(dropped, self.max_pending_events)
            self._outbox_empty = False
            self._state_due.set()

    def _connect(self) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        try:
            self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
            self._connack_by = time.monotonic() + connack_timeout(self.cfg)
            self.retry.retry_at = self._connack_by  # wait for CONNACK before retrying
        except ssl.SSLError as exc:
            self.retry.failed(
                f"TLS with broker {where} failed: {exc.reason or exc} (check mqtt.ca_file and the host name)"
            )
        except OSError as exc:
            self.retry.failed(f"cannot reach broker {where}: {exc.strerror or exc}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = (
                " (check mqtt.username and the password in mqtt.password_file or $"
                + str(self.cfg.password_env)
                + ")"
                if reason_code in ("Bad user name or password", "Not authorized")
                else ""
            )
            self.retry.failed(
                f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}{hint}"
            )
            return
        # after a failure inside, the fault stays until a drain works
        if self._crash is None and self.retry.recovered():
            log.info("mqtt: connected to %s:%s again", self.cfg.host, self.cfg.port)
        self.connected, self._connack_by = True, 0.0
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
        for topic, doc in discovery_documents(
            self.cfg.ha_prefix, self.device_id, self.topics, self.bins, self.fill_bins
        ):
            self.client.publish(topic, json.dumps(doc, ensure_ascii=False), qos=1, retain=True)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == f"{self.cfg.ha_prefix}/status":
            if message.payload == b"online":
                self._announce()  # Home Assistant restarted and forgot us
            return
        name = message.topic.rsplit("/", 1)[-1]
        reply = self.commands.dispatch(
            name, message.payload, self.device_id, topic=message.topic, retained=bool(message.retain)
        )
        client.publish(self.topics.reply, json.dumps(reply), qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._commands_mid:
            self.listening = not any(rc.is_failure for rc in reason_codes)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = self.listening = False
        if was and not self._stop.is_set():
            self.retry.failed(f"lost broker {self.cfg.host}:{self.cfg.port} ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.ledger.acknowledge(seq)
            self._handed.discard(seq)
            self._acked = True

    def _drain(self) -> None:
        room = INFLIGHT_LIMIT - len(self._inflight)
        if room <= 0:
            return
        rows = self.ledger.pending(room + len(self._handed))
        self._outbox_empty = not rows
        for row in rows:
            if row.seq not in self._handed:
                self._publish_row(row)

    def _publish_row(self, row: Pending) -> None:
        """Hand one outbox row to paho, or set it aside (``ledger.dead_letters``) if it cannot be sent."""
        size = len(row.payload.encode("utf-8"))
        if size > MAX_MESSAGE_BYTES:
            reason = (
                f"its payload of {size} bytes is over the {MAX_MESSAGE_BYTES} bytes the bin publishes in one "
                "message (its own stay under 2 KiB: a damaged row, or a bug)"
            )
            self.ledger.set_aside(row.seq, reason)
            return
        topic, retain = self.topics.for_row(row)
        try:
            info = self.client.publish(topic, row.payload, qos=1, retain=retain)
        except ValueError as exc:  # paho refuses it (a topic with a wildcard from a damaged key)
            self.ledger.set_aside(row.seq, f"it cannot be published on {topic!r}: {exc}")
            return
        self._inflight[info.mid] = row.seq
        self._handed.add(row.seq)

    def state(self) -> dict[str, Any]:
        counts = self.ledger.counts()
        status = self.status()
        outbox = {"outbox": self._outbox_fault} if self._outbox_fault else {}
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "uptime_s": round(time.time() - self.started),
            "dropped_events": self.ledger.dropped_events(),
            **status,
            "faults": {**status.get("faults", {}), **outbox},
        }

    def _publish_state(self) -> None:
        state = self.state()
        self.client.publish(self.topics.state, json.dumps(state, separators=(",", ":")), qos=1, retain=True)
        for bin_id, fill in state.get("fill", {}).items():
            self.client.publish(
                self.topics.fill(bin_id), json.dumps(fill, separators=(",", ":")), qos=1, retain=True
            )
