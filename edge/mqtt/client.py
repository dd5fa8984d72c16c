"""The paho client as ``mqtt:`` asks for it: client id, persistent session, last will, login, TLS."""

from __future__ import annotations

import os
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import SECRET_MAX_BYTES, MqttConfig
from edge.errors import SmartbinError
from edge.mqtt.topics import Topics
from edge.schema import UnfitFile, read_capped


def broker_address(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT``, as the command line gives a broker."""
    host, _, port = text.partition(":")
    if not host or (port and not port.isdigit()):
        raise SmartbinError(f"broker {text!r} is not HOST or HOST:PORT", "e.g. --broker broker.local:1883")
    return host, int(port) if port else default_port


def connack_timeout(cfg: MqttConfig) -> float:
    """How long a broker that took the TCP connection may take to answer it (CONNACK)."""
    return float(min(10, cfg.keepalive_s))


def read_password(cfg: MqttConfig) -> str | None:
    """From a file or an environment variable, never from the YAML."""
    if cfg.password_file:
        try:
            return read_capped(Path(cfg.password_file), SECRET_MAX_BYTES).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError, UnfitFile) as exc:
            reason = (
                exc.strerror
                if isinstance(exc, OSError)
                else str(exc)
                if isinstance(exc, UnfitFile)
                else "it is not UTF-8 text"
            )
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
    return log_in(client, cfg)


def log_in(client: mqtt.Client, cfg: MqttConfig) -> mqtt.Client:
    """The login (``mqtt.username``, the password) and TLS files ``mqtt:`` asks for."""
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
