"""A real Mosquitto broker on a free loopback port, started and killed by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def mosquitto_path() -> str | None:
    """Debian installs it in /usr/sbin, which a normal user's PATH may lack."""
    found = shutil.which("mosquitto")
    return found or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Broker:
    def __init__(self, folder: Path, extra: str = "", port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            f"log_dest file {folder}/mosquitto.log\n" + ("user root\n" if os.geteuid() == 0 else "") + extra
            # as root it would switch to the mosquitto user, who cannot read pytest's private tmp folders
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.process = subprocess.Popen([mosquitto_path(), "-c", str(self.conf)])

        def accepting() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, what=f"mosquitto on port {self.port}")
        return self

    def wait_for_autosave(self, timeout_s: float = 5.0) -> None:
        """Until the broker has written its persistence file anew, after this call began: what it held
        by then (a subscriber's persistent session, say) survives a SIGKILL. Mosquitto saves every
        ``autosave_interval`` s whether or not anything changed (every 2 s in practice: it waits for the
        interval to have fully passed in whole seconds). A file's time stamp comes from a coarse clock
        that lags the real one, so a save in the first milliseconds may be missed: then the next one counts.
        """
        store = self.folder / "mosquitto.db"
        since = time.time_ns()

        def saved() -> bool:
            try:
                return store.stat().st_mtime_ns > since
            except FileNotFoundError:
                return False

        wait_for(saved, timeout_s, what=f"mosquitto's autosave to {store}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)


class Subscriber:
    """Records every message under a topic filter; a persistent QoS 1 session survives broker restarts."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber", qos: int = 1) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.delivery: dict[str, tuple[int, bool]] = {}  # topic -> (QoS, retained) of its last message
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._received
        self.client.connect("127.0.0.1", port, 5)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _received(self, client, userdata, message) -> None:
        self.delivery[message.topic] = (message.qos, bool(message.retain))
        self.messages.append((message.topic, message.payload, message.retain))

    def payloads(self, suffix: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t.endswith(suffix)]

    def event_ids(self) -> list[str]:
        return [json.loads(p)["id"] for p in self.payloads("/event")]

    def latest(self, suffix: str) -> bytes | None:
        found = self.payloads(suffix)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
