"""The device config: one YAML file, every key with a default and a description.

A bad file fails at start with the key path, the bad value and what was
expected. Sections are dataclasses; ``help`` in a field's metadata is its
description (``smartbin config`` prints them all).
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import yaml

from edge.errors import SmartbinError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "models" / "garbage12-mnv2"


def opt(default: Any, help: str, check: Callable[[Any], bool] | None = None, expect: str = ""):
    return field(default=default, metadata={"help": help, "check": check, "expect": expect})


def unit_interval(x: float) -> bool:
    return 0.0 <= x <= 1.0


@dataclass
class ModelConfig:
    bundle: Optional[str] = opt(
        None,
        "model bundle folder (model.tflite + model.json from smartbin-train); "
        "empty = the default bundle shipped in models/",
    )
    taxonomy: Optional[str] = opt(
        None, "taxonomy YAML mapping items to bins; empty = the one the model was trained for"
    )
    threshold: float = opt(
        0.6,
        "bin confidence below which the item goes to the fallback bin, marked uncertain",
        unit_interval,
        "a number from 0 to 1",
    )
    fallback_bin: Optional[str] = opt(None, "bin for uncertain items; empty = taxonomy default_bin")
    threads: int = opt(2, "interpreter threads", lambda n: n >= 1, "an integer >= 1")
    top_k: int = opt(3, "how many items `classify` lists per photo", lambda n: n >= 1, ">= 1")


MAESTRO_BY_ID = (
    "/dev/serial/by-id/usb-Pololu_Corporation_Pololu_Micro_Maestro_6-Servo_Controller_00012345-if00"
)


@dataclass
class ServoConfig:
    protocol: str = opt(
        "maestro",
        "maestro (Pololu Maestro) or line (our microcontroller firmware, deploy/firmware/)",
        lambda p: p in ("maestro", "line"),
        "maestro or line",
    )
    port: str = opt(MAESTRO_BY_ID, "serial port, by its stable path: ls /dev/serial/by-id/")
    baud: int = opt(115200, "baud rate (the line firmware uses 115200)", lambda n: n > 0, "> 0")
    device_number: Optional[int] = opt(
        None, "maestro: board number for the addressed Pololu protocol (daisy chains); empty = compact"
    )
    channel: int = opt(0, "servo channel on the controller", lambda n: 0 <= n <= 23, "0 to 23")
    home_us: float = opt(1500.0, "pulse width (µs) of the home position, tray level")
    min_us: float = opt(1000.0, "lowest pulse width (µs) the mechanism allows")
    max_us: float = opt(2000.0, "highest pulse width (µs) the mechanism allows")
    bins: Dict[str, float] = field(
        default_factory=lambda: {
            "recyclable": 1100.0,
            "kitchen": 1300.0,
            "hazardous": 1700.0,
            "other": 1900.0,
        },
        metadata={"help": "pulse width (µs) that tips the tray into each bin (smartbin servo calibrate)"},
    )
    speed: Optional[int] = opt(
        None, "maestro: speed limit (0.25 µs per 10 ms; 0 = unlimited); empty = the board's setting"
    )
    acceleration: Optional[int] = opt(
        None, "maestro: acceleration limit (0.25 µs per 10 ms per 80 ms; 0 = unlimited); empty = the board's"
    )
    tolerance_us: float = opt(10.0, "maestro: read-back position within this many µs counts as arrived")
    reply_timeout_s: float = opt(0.5, "seconds to wait for each controller reply", lambda x: x > 0, "> 0")
    move_timeout_s: float = opt(2.0, "seconds a move may take before it is a fault", lambda x: x > 0, "> 0")
    dwell_s: float = opt(0.8, "seconds the tray stays tipped while the item falls", lambda x: x >= 0, ">= 0")
    startup_s: float = opt(
        2.5, "line: seconds to wait for the firmware after opening the port (Arduino boards reset)"
    )

    def __post_init__(self) -> None:
        if not self.min_us < self.max_us:
            raise SmartbinError(
                f"servo.min_us ({self.min_us:g}) is not below servo.max_us ({self.max_us:g})",
                "set the mechanism's safe range",
            )
        for key, value in [("home_us", self.home_us)] + [(f"bins.{b}", v) for b, v in self.bins.items()]:
            if not self.min_us <= value <= self.max_us:
                raise SmartbinError(
                    f"servo.{key} = {value:g} µs is outside servo.min_us..max_us "
                    f"({self.min_us:g}..{self.max_us:g})",
                    "recalibrate it (smartbin servo calibrate) or widen the limits if the mechanism allows",
                )


@dataclass
class LedgerConfig:
    path: Optional[str] = opt(
        None, "SQLite file of counts and unsent messages; empty = $STATE_DIRECTORY/ledger.db (systemd)"
    )
    max_pending_events: int = opt(
        10_000,
        "unsent events kept through a broker outage; past it the oldest are dropped and counted "
        "(counts and state are never dropped)",
        lambda n: n >= 1,
        ">= 1",
    )
    keep_events: int = opt(100_000, "sorted-item history kept on the device", lambda n: n >= 1, ">= 1")


@dataclass
class MqttConfig:
    host: str = opt("localhost", "MQTT broker host")
    port: int = opt(1883, "MQTT broker port (8883 is usual with TLS)", lambda n: 0 < n < 65536, "1 to 65535")
    topic_prefix: str = opt("smartbin", "topics are <topic_prefix>/<device_id>/...")
    client_id: Optional[str] = opt(None, "MQTT client id; empty = smartbin-<device_id>")
    keepalive_s: int = opt(30, "seconds between keep-alive pings", lambda n: n >= 5, ">= 5")
    reconnect_max_s: float = opt(60.0, "longest wait between reconnect attempts", lambda x: x >= 1, ">= 1")
    username: Optional[str] = opt(None, "broker user name; empty = anonymous")
    password_file: Optional[str] = opt(None, "file holding the password (never put it in this YAML)")
    password_env: Optional[str] = opt(
        "SMARTBIN_MQTT_PASSWORD", "environment variable holding the password, if no password_file"
    )
    ca_file: Optional[str] = opt(None, "CA certificate (PEM) to verify the broker; set to use TLS")
    cert_file: Optional[str] = opt(None, "client certificate (PEM), if the broker wants one")
    key_file: Optional[str] = opt(None, "client key (PEM) for cert_file")
    ha_discovery: bool = opt(True, "announce the bin to Home Assistant (MQTT discovery)")
    ha_prefix: str = opt("homeassistant", "Home Assistant's discovery prefix")


@dataclass
class Config:
    device_id: str = opt(
        "smartbin-dev",
        "this bin's id, used in MQTT topics",
        lambda s: bool(s) and "/" not in s and "+" not in s and "#" not in s,
        "a non-empty id without '/', '+' or '#'",
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the classifier"})
    servo: ServoConfig = field(default_factory=ServoConfig, metadata={"help": "the tray servo"})
    ledger: LedgerConfig = field(default_factory=LedgerConfig, metadata={"help": "counts and the outbox"})
    mqtt: MqttConfig = field(default_factory=MqttConfig, metadata={"help": "the building's MQTT broker"})


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key, source)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise SmartbinError(
                f"{source}: {key} = {value!r} is not valid: expected a list", f"fix {key} in {source}"
            )
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise SmartbinError(
                f"{source}: {key} = {value!r} is not valid: expected a mapping", f"fix {key} in {source}"
            )
        key_tp, value_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, key, source): _coerce(v, value_tp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, tp) and not isinstance(value, bool)
        if tp is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float
        else isinstance(value, tp)
    )
    if not ok:
        raise SmartbinError(
            f"{source}: {key} = {value!r} is not valid: expected {_type_name(tp)}",
            f"fix {key} in {source}",
        )
    return float(value) if tp is float else value


def build_dataclass(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Validate a mapping against a dataclass of ``opt`` fields, naming the key path on error."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SmartbinError(
            f"{source}: {prefix or 'the file'} must be a mapping of keys, got {data!r}",
            f"write {prefix or 'the file'} as 'key: value' lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise SmartbinError(
            f"{source}: unknown key {where}{unknown[0]}",
            f"known keys{' under ' + prefix if prefix else ''}: {', '.join(fields)}",
        )
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(data[name], hints[name], key, source)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise SmartbinError(
                f"{source}: {key} = {value!r} is not valid: expected {f.metadata['expect']}",
                f"fix {key} in {source}",
            )
        values[name] = value
    try:
        return cls(**values)
    except SmartbinError as exc:  # a check across keys, in __post_init__
        raise SmartbinError(f"{source}: {exc.problem}", exc.fix) from None


def parse_config(data: Any, source: str = "config") -> Config:
    return build_dataclass(Config, data, "", source)


def load_config(path: str | Path | None) -> Config:
    """Read the YAML config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SmartbinError(
            f"config file {path} does not exist",
            "copy config/smartbin.yaml to it, or pass --config with the right path",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SmartbinError(f"config file {path} is not valid YAML: {exc}", "fix the syntax") from None
    return parse_config(data, source=str(path))


def describe(cls: type = Config, indent: str = "") -> str:
    """The config reference as commented YAML with every default."""
    lines = []
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            lines += [f"{indent}# {help_text}", f"{indent}{f.name}:", describe(type(default), indent + "  ")]
            continue
        lines.append(f"{indent}# {help_text}")
        dumped = yaml.safe_dump({f.name: default}, allow_unicode=True, sort_keys=False).rstrip()
        lines.append(textwrap.indent(dumped, indent))
    return "\n".join(lines)
