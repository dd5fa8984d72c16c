"""``smartbin check``: after installation, try each part in turn and say which one fails and why.

It validates the config, then opens the model, the ledger, the camera, the
servo controller and the MQTT broker one by one. Nothing moves: the servo
controller is only pinged. Run it while the service is stopped, since the
service holds the camera and the serial port.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
import time
from typing import Any

import numpy as np

from edge.camera.kinds import open_source, source_fix
from edge.camera.sources import SourceFault
from edge.camera.supervisor import dark_view, is_black
from edge.config import Config, LedgerConfig, MqttConfig
from edge.errors import SmartbinError
from edge.ledger import LedgerSummary
from edge.model.classifier import load_classifier
from edge.mqtt.client import make_client
from edge.mqtt.topics import Topics
from edge.paths import ledger_file
from edge.servo.link import ActuatorFault
from edge.servo.protocols import open_controller

PARTS = ("model", "ledger", "camera", "servo", "mqtt")
Result = tuple[str, bool, str]


def check_model(config: Config) -> list[Result]:
    classifier = load_classifier(config.model)
    spec = classifier.spec
    probabilities = classifier.predict(np.full((spec.height, spec.width, 3), 128, np.uint8))
    if not np.isfinite(probabilities).all():
        return [("model", False, f"{classifier.bundle.model_id} gives non-finite output; export it again")]
    return [
        (
            "model",
            True,
            f"{classifier.bundle.model_id} runs on {classifier.runtime} ({len(classifier.labels)} items, "
            f"taxonomy {classifier.bundle.taxonomy.name}), {classifier.bundle.calibration_note}",
        )
    ]


def check_ledger(config: Config) -> list[Result]:
    path = ledger_file(config.ledger).absolute()
    if not path.exists():
        return [("ledger", True, f"no ledger yet at {path}: the service creates it when it starts")]
    found = ledger_summary(config.ledger)
    counted = f"{found.total} items counted, {found.waiting} messages wait for the broker"
    return [("ledger", True, f"{found.path}: {counted}")]


def ledger_summary(cfg: LedgerConfig) -> LedgerSummary:
    """The ledger's counts, read without creating or changing a file (``check`` and ``counts`` only read).

    A ledger that no process has open has no ``-wal`` file: it is read as immutable, since even a
    read-only connection would leave ``-wal`` and ``-shm`` files beside it. One the running service has
    open is read through its WAL, read-only.
    """
    path = ledger_file(cfg).absolute()
    if not path.exists():
        raise SmartbinError(
            f"no ledger yet at {path}",
            "the service creates it when it starts; give the bin's config (--config, its ledger.path)",
        )
    mode = "ro" if path.with_name(path.name + "-wal").exists() else "ro&immutable=1"
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode={mode}", uri=True)
        try:
            counts = dict(db.execute("SELECT bin, count FROM counts ORDER BY bin").fetchall())
            waiting = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            row = db.execute("SELECT value FROM meta WHERE key = 'dropped_events'").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise SmartbinError(
            f"ledger {path} cannot be read: {exc}",
            "check that ledger.path names the bin's ledger, and the file's permissions",
        ) from None
    return LedgerSummary(path, counts, waiting, row[0] if row else 0)


def check_camera(config: Config, tries: int = 10) -> list[Result]:
    try:
        source = open_source(config.camera)
    except SourceFault as exc:
        return [("camera", False, f"{exc.reason}; {source_fix(config.camera.source)}")]
    try:
        for _ in range(tries):  # cameras often give a few black frames while they start
            frame = source.read()
            if frame is None:
                return [("camera", False, f"{source.description} gave no frame")]
            if not is_black(frame):
                break
        else:
            return [("camera", False, f"{source.description} gives black frames (no signal)")]
    except SourceFault as exc:
        return [("camera", False, f"{exc.reason}; {source_fix(config.camera.source)}")]
    finally:
        source.close()
    h, w = frame.shape[:2]
    dark = dark_view(frame, config.camera.dark_level)
    if dark:
        return [("camera", False, f"{source.description}: {dark}; light the tray or uncover the lens")]
    return [("camera", True, f"{w}x{h} frames from {source.description}")]


def check_servo(config: Config) -> list[Result]:
    try:
        controller = open_controller(config.servo)
    except ActuatorFault as fault:
        return [("servo", False, f"{config.servo.port}: {fault.reason}")]
    try:
        answer = controller.ping()
    except ActuatorFault as fault:
        return [("servo", False, f"{config.servo.port}: {fault.reason}")]
    finally:
        controller.close()
    return [("servo", True, f"{answer} on {config.servo.port} ({config.servo.protocol})")]


def check_mqtt(config: Config) -> list[Result]:
    return [(f"mqtt {step}", ok, detail) for step, ok, detail in diagnose_mqtt(config.mqtt, config.device_id)]


CHECKS = {
    "model": check_model,
    "ledger": check_ledger,
    "camera": check_camera,
    "servo": check_servo,
    "mqtt": check_mqtt,
}


def run_checks(config: Config, parts: tuple[str, ...] = PARTS):
    """Yield a result per part as it is checked; a part's SmartbinError is its failure line."""
    for part in parts:
        try:
            yield from CHECKS[part](config)
        except SmartbinError as exc:
            yield part, False, f"{exc.problem}; fix: {exc.fix}" if exc.fix else exc.problem


def diagnose_mqtt(cfg: MqttConfig, device_id: str, timeout_s: float = 5.0) -> list[Result]:
    """Connect step by step, DNS, TCP, TLS, auth, ACL, and say exactly which step fails."""
    steps: list[Result] = []
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
