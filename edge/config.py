"""The device config: one YAML file, every key with a default and a description.

A bad file fails at start with the key path, the bad value and what was
expected, every bad key at once. Sections are dataclasses; ``help`` in a field's
metadata is its description (``smartbin config`` prints them all).

:func:`load_config` also judges what a file on disk decides (:func:`disk_problems`): the bins of the
taxonomy the bin will sort by (``model.taxonomy``, else the one in the bundle's ``model.json``) must
each have a servo position, and ``model.fallback_bin`` and the bins under ``fill.capacity`` must be
bins of it; the MQTT password and TLS files must be regular files. A bundle whose ``model.json``
cannot be read (not there on this machine, damaged) is not judged here: the daemon refuses it at
start with its own message. :func:`parse_config` (a mapping, no disk) leaves these out.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from edge.camera.kinds import STREAM_SCHEMES, sources_help
from edge.errors import SmartbinError
from edge.model.decision import DEFAULT_THRESHOLD, UNKNOWN_CHOICES
from edge.paths import DEFAULT_BUNDLE
from edge.schema import (
    MAX_FILE_BYTES,
    NAME_MAX,
    PATH_EXPECT,
    ConfigErrors,
    UnfitFile,
    build_dataclass,
    char_name,
    escape_char,
    escaped,
    file_path,
    key_type,
    opt,
    problems_of,
    read_capped,
    read_yaml_file,
    regular_file_problem,
    shown,
    unit_interval,
)
from edge.servo.protocols import PROTOCOLS

if TYPE_CHECKING:
    from edge.model.taxonomy import Taxonomy

REFERENCE_HEADER = """\
# smartbin device config: /etc/smartbin/smartbin.yaml on a bin.
# Every key is optional; what is left out takes the default shown here.
# `smartbin config` prints this reference; a bad value stops the daemon at start
# with the key, the value and what was expected.

"""


@dataclass
class ModelConfig:
    bundle: Optional[str] = opt(
        None,
        "model bundle folder (model.tflite + model.json from smartbin-train); "
        "empty = the default bundle shipped in models/",
        file_path,
        PATH_EXPECT,
    )
    taxonomy: Optional[str] = opt(
        None,
        "taxonomy YAML mapping items to bins; empty = the one the model was trained for",
        file_path,
        PATH_EXPECT,
    )
    threshold: float = opt(
        DEFAULT_THRESHOLD,
        "bin confidence below which the item goes to the fallback bin, marked uncertain",
        unit_interval,
        "a number from 0 to 1",
    )
    fallback_bin: Optional[str] = opt(None, "bin for uncertain items; empty = taxonomy default_bin")
    threads: int = opt(2, "interpreter threads", lambda n: 1 <= n <= 64, "1 to 64")
    top_k: int = opt(3, "how many items `classify` lists per photo", lambda n: 1 <= n <= 1000, "1 to 1000")


# What hobby servos take (the Maestro's 14-bit quarter-µs target would allow up to 4095 µs; the line
# firmware refuses outside its own compiled-in limits).
PULSE_RANGE_US = (500.0, 2500.0)


def pulse_width(x: float) -> bool:
    return PULSE_RANGE_US[0] <= x <= PULSE_RANGE_US[1]


PULSE_EXPECT = f"{PULSE_RANGE_US[0]:g} to {PULSE_RANGE_US[1]:g} µs"
# Counts the ledger stores as SQLite integers and sizes that bound memory: far above any real need.
MAX_COUNT = 1_000_000_000


# MQTT 3.1.1 strings (client id, user name, topic) are UTF-8 without U+0000, at most 65535 bytes: paho
# raises UnicodeEncodeError at start for a lone surrogate (which YAML's "\ud800" escape gives).
MQTT_STRING_MAX = 65535
MQTT_STRING_EXPECT = f"UTF-8 text without NUL, at most {MQTT_STRING_MAX} bytes"


def mqtt_string(s: str) -> bool:
    try:
        raw = s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return b"\0" not in raw and len(raw) <= MQTT_STRING_MAX


def topic_level(s: str) -> bool:
    """One or more MQTT topic levels: no wildcards, no NUL, no empty level, not the broker's own ``$``
    topics (a broker acknowledges a message to ``$SYS/...`` and drops it)."""
    return topic_level_problem(s) == ""


def topic_level_problem(s: str) -> str:
    """What is wrong with ``s`` as the start of a topic, or ""."""
    if not s:
        return "it is empty"
    wildcard = next((c for c in s if c in "+#\0"), None)
    if s.startswith("$"):
        return "topics starting with '$' are the broker's own ($SYS): it takes messages there and drops them"
    if wildcard is not None:
        return f"it holds {char_name(wildcard)}" + (", a wildcard" if wildcard != "\0" else "")
    if not all(s.split("/")):
        return "it has an empty level"
    return "" if mqtt_string(s) else "it is not UTF-8 text of at most 65535 bytes"


TOPIC_EXPECT = (
    "topic levels not starting with '$', without '+', '#', NUL or an empty level (no leading, trailing or "
    f"double '/'), {MQTT_STRING_EXPECT}"
)


# A device id is a topic level, a log word and a line on the fleet page: letters (any script) and
# digits, '-', '_', '.': no '/', '+', '#' (topics), no spaces or control characters (log lines, topics),
# no bidirectional controls (U+202E shows the id reversed on the fleet page).
DEVICE_ID_MAX = 64
DEVICE_ID_EXPECT = (
    f"1 to {DEVICE_ID_MAX} letters, digits, '-', '_' or '.' (no '/', '+', '#', spaces, NUL, control or "
    "bidirectional characters)"
)


def device_id_char(c: str) -> bool:
    return c in "-_." or unicodedata.category(c) in ("Lu", "Ll", "Lt", "Lm", "Lo", "Nd")


def device_id_valid(s: str) -> bool:
    return 1 <= len(s) <= DEVICE_ID_MAX and all(device_id_char(c) for c in s)


def device_id_problem(s: str) -> str:
    """Which rule ``s`` breaks, the offending character named and escaped."""
    if not s or len(s) > DEVICE_ID_MAX:
        return f"it is {len(s)} characters long"
    position, bad = next((i, c) for i, c in enumerate(s, 1) if not device_id_char(c))
    return f"character {position} is {char_name(bad)}, written {escape_char(bad)}"


def host_name(s: str) -> bool:
    """A name or address socket.connect takes: an empty one is paho's ValueError, and an empty or
    63-character-plus label (``a..b``) the IDNA codec's UnicodeError, both in the telemetry thread."""
    try:
        s.encode("idna")
    except UnicodeError:
        return False
    return bool(s) and "\0" not in s


def env_name(s: str) -> bool:
    """A name os.environ can look up (a lone surrogate cannot be encoded) and an environment can hold."""
    try:
        os.fsencode(s)
    except UnicodeEncodeError:
        return False
    return not any(c in s for c in "=\0")


LINE_INPUT_PINS = tuple(f"D{n}" for n in range(3, 9))  # free on the line firmware's ATmega328P
MAESTRO_CHANNELS_MAX = 24  # the Mini Maestro 24; a by-id port path names the board's own count
INTERLOCK_EXPECT = f"a Maestro input channel 0 to {MAESTRO_CHANNELS_MAX - 1}, or a line pin D3 to D8"


def interlock_input(value: Union[int, str]) -> bool:
    """A channel number in range, or text: which text the protocol takes is checked in ServoConfig."""
    return 0 <= value < MAESTRO_CHANNELS_MAX if isinstance(value, int) else True


def maestro_channels(port: str) -> Optional[int]:
    """How many channels the Maestro on ``port`` has, when its by-id path names the board."""
    import re

    found = re.search(r"Maestro_(\d+)-", port)
    return int(found.group(1)) if found else None


MAESTRO_BY_ID = (
    "/dev/serial/by-id/usb-Pololu_Corporation_Pololu_Micro_Maestro_6-Servo_Controller_00012345-if00"
)


@dataclass
class ServoConfig:
    protocol: str = opt(
        "maestro",
        " or ".join(f"{p.name} ({p.help})" for p in PROTOCOLS.values()),
        lambda p: p in PROTOCOLS,
        "one of: " + ", ".join(PROTOCOLS),
    )
    port: str = opt(MAESTRO_BY_ID, "serial port, by its stable path: ls /dev/serial/by-id/")
    baud: int = opt(
        115200, "baud rate (the line firmware uses 115200)", lambda n: 0 < n <= 4_000_000, "1 to 4000000"
    )
    device_number: Optional[int] = opt(
        None,
        "maestro: board number for the addressed Pololu protocol (daisy chains); empty = compact",
        lambda n: 0 <= n <= 127,
        "0 to 127",
    )
    channel: int = opt(0, "servo channel on the controller", lambda n: 0 <= n <= 23, "0 to 23")
    home_us: float = opt(
        1500.0, "pulse width (µs) of the home position, tray level", pulse_width, PULSE_EXPECT
    )
    min_us: float = opt(1000.0, "lowest pulse width (µs) the mechanism allows", pulse_width, PULSE_EXPECT)
    max_us: float = opt(2000.0, "highest pulse width (µs) the mechanism allows", pulse_width, PULSE_EXPECT)
    bins: Dict[str, float] = field(
        default_factory=lambda: {
            "recyclable": 1100.0,
            "kitchen": 1300.0,
            "hazardous": 1700.0,
            "other": 1900.0,
        },
        metadata={
            "help": "pulse width (µs) that tips the tray into each bin (smartbin servo calibrate)",
            # not printed in the reference (that is the help); what the bound tests read
            "expect": f"{PULSE_EXPECT}, within servo.min_us..max_us, for every bin of the taxonomy",
        },
    )
    speed: Optional[int] = opt(
        None,
        "maestro: speed limit (0.25 µs per 10 ms; 0 = unlimited); empty = the board's setting",
        lambda n: 0 <= n <= 16383,
        "0 to 16383",
    )
    acceleration: Optional[int] = opt(
        None,
        "maestro: acceleration limit (0.25 µs per 10 ms per 80 ms; 0 = unlimited); empty = the board's",
        lambda n: 0 <= n <= 255,
        "0 to 255",
    )
    tolerance_us: float = opt(
        10.0,
        "maestro: read-back position within this many µs counts as arrived",
        lambda x: 0 < x <= 200,
        "more than 0, at most 200",
    )
    reply_timeout_s: float = opt(
        0.5, "seconds to wait for each controller reply", lambda x: 0 < x <= 60, "more than 0, at most 60"
    )
    move_timeout_s: float = opt(
        2.0, "seconds a move may take before it is a fault", lambda x: 0 < x <= 60, "more than 0, at most 60"
    )
    dwell_s: float = opt(
        0.8, "seconds the tray stays tipped while the item falls", lambda x: 0 <= x <= 60, "0 to 60"
    )
    startup_s: float = opt(
        2.5,
        "line: seconds to wait for the firmware after opening the port (Arduino boards reset)",
        lambda x: 0 <= x <= 60,
        "0 to 60",
    )
    interlock: Optional[Union[int, str]] = opt(
        None,
        "the lid, door or light-curtain switch the controller enforces: maestro: its input channel "
        "(configured as an input; switch to GND with a pull-up); line: the firmware's input pin, "
        "D3 to D8 (switch to GND, internal pull-up). A move is refused, or stopped, while it reads "
        "open; empty = no interlock",
        interlock_input,
        INTERLOCK_EXPECT,
    )
    interlock_stop: str = opt(
        "home",
        "what a move stopped by an opening lid does: home (back to home_us, the tray level) or hold "
        "(stays where it is)",
        lambda s: s in ("home", "hold"),
        "home or hold",
    )

    def __post_init__(self) -> None:
        errors = []
        try:
            self._check_interlock()
        except SmartbinError as exc:
            errors.append(exc)
        errors += self._range_problems()
        if errors:
            raise ConfigErrors(errors, "config")

    def _range_problems(self) -> list[SmartbinError]:
        """min_us below max_us, and home and every bin's position between them."""
        if not self.min_us < self.max_us:
            return [
                SmartbinError(
                    f"servo.min_us ({self.min_us:g}) is not below servo.max_us ({self.max_us:g})",
                    "set the mechanism's safe range",
                )
            ]
        positions = [("home_us", self.home_us)] + [(f"bins.{escaped(b)}", v) for b, v in self.bins.items()]
        return [
            SmartbinError(
                f"servo.{key} = {value:g} µs is outside servo.min_us..max_us "
                f"({self.min_us:g}..{self.max_us:g})",
                "recalibrate it (smartbin servo calibrate) or widen the limits if the mechanism allows",
            )
            for key, value in positions
            if not math.isfinite(value) or not self.min_us <= value <= self.max_us
        ]

    def _check_interlock(self) -> None:
        """The input must be one this controller has: refused at start, never found out mid-move."""
        value = self.interlock
        if value is None or value == "":
            self.interlock = None
            return
        if self.protocol == "line":
            pin = str(value).upper()
            if pin not in LINE_INPUT_PINS:
                raise SmartbinError(
                    f"servo.interlock = {shown(value)} is not an input pin of the line firmware",
                    f"wire the switch to one of {', '.join(LINE_INPUT_PINS)} (D0/D1 are the serial line, "
                    "D2 the button, D9/D10 the servos) and name it in servo.interlock",
                )
            self.interlock = pin
            return
        if self.protocol != "maestro":
            return
        if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 2):
            raise SmartbinError(
                f"servo.interlock = {shown(value)} is not a Maestro channel",
                "name the Maestro channel the switch is wired to (a number), configured as an input",
            )
        channel = int(value)
        if channel >= MAESTRO_CHANNELS_MAX:
            raise SmartbinError(
                f"servo.interlock = {channel}: no Maestro has a channel {channel}",
                f"name the channel the switch is wired to, 0 to {MAESTRO_CHANNELS_MAX - 1}",
            )
        if channel == self.channel:
            raise SmartbinError(
                f"servo.interlock = {channel} is the servo's own channel (servo.channel)",
                "wire the switch to another channel, configure it as an input, and name it here",
            )
        board = maestro_channels(self.port)
        if board is not None and channel >= board:
            raise SmartbinError(
                f"servo.interlock = {channel}: the Maestro on {self.port} has channels 0 to {board - 1}",
                f"name one of its channels 0 to {board - 1}, configured as an input",
            )
        self.interlock = channel


@dataclass
class LedgerConfig:
    path: Optional[str] = opt(
        None,
        "SQLite file of counts and unsent messages; empty = ledger.db in $STATE_DIRECTORY (systemd), "
        "else in /var/lib/smartbin if it exists, else in the working folder",
        file_path,
        PATH_EXPECT,
    )
    max_pending_events: int = opt(
        10_000,
        "unsent events kept through a broker outage; past it the oldest are dropped and counted "
        "(counts and state are never dropped)",
        lambda n: 1 <= n <= MAX_COUNT,
        f"1 to {MAX_COUNT}",
    )
    keep_events: int = opt(
        100_000, "sorted-item history kept on the device", lambda n: 1 <= n <= MAX_COUNT, f"1 to {MAX_COUNT}"
    )


@dataclass
class MqttConfig:
    host: str = opt(
        "localhost",
        "MQTT broker host",
        host_name,
        "a host name or address (no empty label, no label over 63 characters, no NUL)",
    )
    port: int = opt(1883, "MQTT broker port (8883 is usual with TLS)", lambda n: 0 < n < 65536, "1 to 65535")
    topic_prefix: str = opt(
        "smartbin",
        "topics are <topic_prefix>/<device_id>/...",
        topic_level,
        TOPIC_EXPECT,
        topic_level_problem,
    )
    client_id: Optional[str] = opt(
        None, "MQTT client id; empty = smartbin-<device_id>", mqtt_string, MQTT_STRING_EXPECT
    )
    keepalive_s: int = opt(
        30, "seconds between keep-alive pings (MQTT's limit: 65535)", lambda n: 5 <= n <= 65535, "5 to 65535"
    )
    reconnect_max_s: float = opt(
        60.0, "longest wait between reconnect attempts", lambda x: 1 <= x <= 3600, "1 to 3600"
    )
    username: Optional[str] = opt(
        None, "broker user name; empty = anonymous", mqtt_string, MQTT_STRING_EXPECT
    )
    password_file: Optional[str] = opt(
        None, "file holding the password (never put it in this YAML)", file_path, PATH_EXPECT
    )
    password_env: Optional[str] = opt(
        "SMARTBIN_MQTT_PASSWORD",
        "environment variable holding the password, if no password_file",
        env_name,
        "a variable name without '=' or NUL",
    )
    ca_file: Optional[str] = opt(
        None, "CA certificate (PEM) to verify the broker; set to use TLS", file_path, PATH_EXPECT
    )
    cert_file: Optional[str] = opt(
        None, "client certificate (PEM), if the broker wants one", file_path, PATH_EXPECT
    )
    key_file: Optional[str] = opt(None, "client key (PEM) for cert_file", file_path, PATH_EXPECT)
    ha_discovery: bool = opt(True, "announce the bin to Home Assistant (MQTT discovery)")
    ha_prefix: str = opt(
        "homeassistant",
        "Home Assistant's discovery prefix",
        topic_level,
        "topic levels, as topic_prefix",
        topic_level_problem,
    )


CAMERA_INDEX_MAX = 255  # /dev/video0 to /dev/video255, what V4L2 numbers


def camera_source(source: Union[int, str]) -> bool:
    """What edge.camera.kinds can open or report as a fault: an index OpenCV's C int takes (a larger one,
    or a 4300-digit one, raised past the fault handling), and text that is a pipeline, a stream URL or
    a path the OS can take (a 256-byte name raised OSError from stat())."""
    if isinstance(source, int):
        return 0 <= source <= CAMERA_INDEX_MAX
    if source.isdigit():  # an index written as text ("0"); "²" is a digit int() refuses
        return source.isascii() and len(source) <= 3 and int(source) <= CAMERA_INDEX_MAX
    if not mqtt_string(source):  # UTF-8 without NUL, as OpenCV passes it on
        return False
    return bool(source) and ("!" in source or source.startswith(STREAM_SCHEMES) or file_path(source))


@dataclass
class CameraConfig:
    source: Union[int, str] = opt(
        0,
        sources_help(),
        camera_source,
        f"an index 0 to {CAMERA_INDEX_MAX}, a device or file path (no NUL, each name at most "
        f"{NAME_MAX} bytes), a GStreamer pipeline or a {', '.join(STREAM_SCHEMES)} URL",
    )
    width: Optional[int] = opt(
        640,
        "capture width in pixels; empty = the camera's default (320x240 makes the loop faster, "
        "docs/benchmarks.md, if the camera keeps its field of view)",
        lambda n: 16 <= n <= 8192,
        "16 to 8192",
    )
    height: Optional[int] = opt(
        480, "capture height in pixels; empty = the camera's default", lambda n: 16 <= n <= 8192, "16 to 8192"
    )
    fps: Optional[float] = opt(
        15.0,
        "capture frames per second; empty = the camera's default",
        lambda x: 0 < x <= 1000,
        "more than 0, at most 1000",
    )
    exposure: Optional[float] = opt(
        None, "manual exposure in the driver's units (v4l2-ctl -l shows the range); empty = automatic"
    )
    replay_fps: float = opt(
        10.0,
        "video file or image folder: frames per second replayed; 0 = as fast as they are read",
        lambda x: 0 <= x <= 1000,
        "0 to 1000",
    )
    dark_level: float = opt(
        20.0,
        "mean brightness (0-255) below which the view is dark or the lens covered: reported, not classified",
        lambda x: 0 <= x <= 255,
        "0 to 255",
    )
    black_frames: int = opt(
        30,
        "consecutive black frames (no signal) after which the camera is a fault and reopened",
        lambda n: 1 <= n <= 100_000,
        "1 to 100000",
    )
    retry_max_s: float = opt(
        30.0, "longest wait between attempts to reopen a failed camera", lambda x: 1 <= x <= 3600, "1 to 3600"
    )


# The smallest side of trigger.roi, as a share of the frame's: a thinner region is a row or column of a
# few pixels (stretched to the analysis width), whose noise alone reads as an item.
MIN_ROI_SIDE = 0.05
ROI_EXPECT = (
    f"[x, y, width, height], fractions of the frame inside 0..1, width and height at least {MIN_ROI_SIDE:g}"
)


def roi_valid(roi: list) -> bool:
    return roi_problem(roi) == ""


def roi_problem(roi: list) -> str:
    """What is wrong with ``roi`` as a region of the frame, or ""."""
    if len(roi) != 4:
        return f"it has {len(roi)} numbers"
    x, y, w, h = roi
    if not (0 <= x < 1 and 0 <= y < 1):
        return "its corner is outside the frame"
    if w < MIN_ROI_SIDE or h < MIN_ROI_SIDE:
        return f"a region {w:g} wide and {h:g} high is too thin to watch: its noise would read as items"
    if w > 1 - x + 1e-9 or h > 1 - y + 1e-9:
        return "it reaches past the edge of the frame"
    return ""


@dataclass
class TriggerConfig:
    mode: str = opt(
        "presence",
        "presence (an item lands on the tray and settles), continuous (classify every "
        "every_frames; needs a model with an 'empty' label) or manual (only the sort command)",
        lambda m: m in ("presence", "continuous", "manual"),
        "presence, continuous or manual",
    )
    roi: Optional[List[float]] = opt(
        None,
        "region of the tray watched, [x, y, width, height] as fractions of the frame; empty = all of it",
        roi_valid,
        ROI_EXPECT,
        roi_problem,
    )
    pixel_level: float = opt(
        25.0,
        "grey-level change (0-255) from the empty tray that marks a pixel as changed",
        lambda x: 0 < x < 255,
        "more than 0, less than 255",
    )
    area: float = opt(
        0.03, "share of the region that must change for an item to be present", unit_interval, "0 to 1"
    )
    still: float = opt(
        0.01,
        "share of the region that may change between two frames while the item counts as still",
        unit_interval,
        "0 to 1",
    )
    settle_frames: int = opt(
        3,
        "consecutive present-and-still frames before the item counts as settled",
        lambda n: 1 <= n <= 1000,
        "1 to 1000",
    )
    empty_frames: int = opt(
        3,
        "consecutive empty-tray frames that re-arm the trigger after a sort",
        lambda n: 1 <= n <= 1000,
        "1 to 1000",
    )
    rearm_timeout_s: float = opt(
        15.0,
        "after a sort, if the tray never looks empty again (a stuck item), learn the tray as it is "
        "and re-arm, so that the same item is never counted twice",
        lambda x: 0 < x <= 86400,
        "more than 0, at most 86400",
    )
    learn_frames: int = opt(
        10, "frames averaged to learn the empty tray at start", lambda n: 1 <= n <= 1000, "1 to 1000"
    )
    adapt_rate: float = opt(
        0.02,
        "how fast the learned empty tray follows slow lighting changes while empty (0 = never)",
        unit_interval,
        "0 to 1",
    )
    every_frames: int = opt(
        30, "continuous: classify once every this many frames", lambda n: 1 <= n <= 100_000, "1 to 100000"
    )
    idle_after_s: float = opt(
        30.0,
        "presence: after the tray has been empty and still this long, read only idle_fps frames a second "
        "until something changes (an idle bin costs almost no CPU); 0 = never idle",
        lambda x: 0 <= x <= 86400,
        "0 to 86400",
    )
    idle_fps: float = opt(
        1.0,
        "presence: frames a second while idle; an item that lands is seen at most 1/idle_fps s later",
        lambda x: 0.1 <= x <= 30,
        "0.1 to 30",
    )


@dataclass
class SortingConfig:
    vote_frames: int = opt(
        3,
        "frames of the settled item classified and averaged (the multi-frame vote)",
        lambda n: 1 <= n <= 100,
        "1 to 100",
    )
    move_attempts: int = opt(
        3,
        "tries to tip an item before it is parked: left on the tray for a person, logged as a fault, "
        "not counted",
        lambda n: 1 <= n <= 100,
        "1 to 100",
    )
    review_folder: Optional[str] = opt(
        None,
        "where items' frames (+ probabilities JSON) are kept for labelling: every uncertain item and "
        "sorting.review_sample of the others; "
        "empty = review/ beside the ledger",
        file_path,
        PATH_EXPECT,
    )
    review_max: int = opt(
        500,
        "items kept in the review folder, oldest deleted first; 0 = keep none",
        lambda n: 0 <= n <= 1_000_000,
        "0 to 1000000",
    )
    review_sample: float = opt(
        0.02,
        "share of the items sorted with confidence whose frame is kept in the review folder too (marked "
        "sample), so that confident mistakes reach labelling as well; 0 = uncertain items only",
        unit_interval,
        "0 to 1",
    )
    unknown: str = opt(
        "hold",
        "an item the model's out-of-distribution score finds unlike its training photos (only with a "
        "bundle whose model.json has an ood block): hold (left on the tray, a tray fault; a second "
        "press of the sort button sends it to the fallback bin) or fallback (tipped into the fallback "
        "bin at once, marked uncertain)",
        lambda m: m in UNKNOWN_CHOICES,
        "hold or fallback",
    )
    ready_timeout_s: float = opt(
        30.0,
        "at start, how long to wait for the camera and the servo controller before reporting "
        "READY anyway, with the missing part as a fault on the state topic",
        lambda x: 0 <= x <= 3600,
        "0 to 3600",
    )


MAX_CAPACITY = 1_000_000


@dataclass
class FillConfig:
    capacity: Dict[str, int] = field(
        default_factory=lambda: {"recyclable": 200, "kitchen": 100, "hazardous": 50, "other": 200},
        metadata={
            "help": "items each bin holds when full; the fill since it was last emptied is counted against "
            "it (a bin not listed is not tracked)",
            # not printed in the reference (that is the help); what the bound tests read
            "expect": "1 to 1000000 items, for bins of the taxonomy",
        },
    )
    nearly_full: float = opt(
        0.8,
        "share of the capacity at which a bin is reported nearly full (fill_event, Home Assistant)",
        lambda x: 0 < x < 1,
        "more than 0, less than 1",
    )
    park_when_full: bool = opt(
        True,
        "a full bin receives nothing more: an item for it is left on the tray, not counted, and the "
        "state names the bin until it is emptied (MQTT emptied, smartbin emptied)",
    )

    def __post_init__(self) -> None:
        errors = [
            SmartbinError(
                f"fill.capacity.{escaped(str(bin_id))} = {shown(items)} is not a number of items from 1 to "
                f"{MAX_CAPACITY}",
                f"write how many items the {escaped(str(bin_id))} bin holds when full, e.g. "
                f"'fill.capacity.{escaped(str(bin_id))}: 200', or leave the bin out to not track it",
            )
            for bin_id, items in self.capacity.items()
            if isinstance(items, bool) or not isinstance(items, int) or not 0 < items <= MAX_CAPACITY
        ]
        if errors:
            raise ConfigErrors(errors, "config")


@dataclass
class Config:
    device_id: str = opt(
        "smartbin-dev",
        "this bin's id, used in MQTT topics",
        device_id_valid,
        DEVICE_ID_EXPECT,
        device_id_problem,
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the classifier"})
    servo: ServoConfig = field(default_factory=ServoConfig, metadata={"help": "the tray servo"})
    ledger: LedgerConfig = field(default_factory=LedgerConfig, metadata={"help": "counts and the outbox"})
    mqtt: MqttConfig = field(default_factory=MqttConfig, metadata={"help": "the building's MQTT broker"})
    camera: CameraConfig = field(default_factory=CameraConfig, metadata={"help": "the camera over the tray"})
    trigger: TriggerConfig = field(
        default_factory=TriggerConfig, metadata={"help": "when an item is there to classify"}
    )
    sorting: SortingConfig = field(default_factory=SortingConfig, metadata={"help": "the sorting loop"})
    fill: FillConfig = field(default_factory=FillConfig, metadata={"help": "how full each bin is"})


def parse_config(data: Any, source: str = "config") -> Config:
    return build_dataclass(Config, data, "", source)


def load_config(path: str | Path | None) -> Config:
    """Read the YAML config; ``None`` gives the defaults. Every problem of the file is named at once:
    its keys' (:func:`parse_config`) and what the files it names decide (:func:`disk_problems`)."""
    if path is None:
        return Config()
    data = read_yaml_file(
        Path(path),
        "config file",
        missing_fix="copy config/smartbin.yaml to it, or pass --config with the right path",
        damaged_fix="point --config at the YAML file, or write it again from config/smartbin.yaml",
        unreadable_fix="check the path and its permissions (the service reads it as user smartbin)",
    )
    source = str(path)
    try:
        config: Optional[Config] = parse_config(data, source=source)
        errors: list[SmartbinError] = []
    except SmartbinError as exc:
        config, errors = None, problems_of(exc)
    parts = {name: getattr(config, name) for name in DISK_KEYS} if config else parts_alone(data)
    errors += [SmartbinError(f"{source}: {e.problem}", e.fix) for e in disk_problems(parts, data)]
    if errors:
        raise ConfigErrors(errors, source)
    assert config is not None
    return config


# The keys disk_problems reads, by section: judged even when other keys of the file are bad.
DISK_KEYS = {
    "model": ("bundle", "taxonomy", "fallback_bin"),
    "servo": ("bins", "min_us", "max_us", "home_us"),
    "fill": ("capacity",),
    "mqtt": ("password_file", "ca_file", "cert_file", "key_file"),
}


def parts_alone(data: Any) -> dict[str, Any]:
    """The sections of DISK_KEYS, each parsed from only those keys, that are valid on their own (the
    problems of the others are named already)."""
    parts = {}
    for name, keys in DISK_KEYS.items():
        raw = data.get(name) if isinstance(data, Mapping) else None
        try:
            section = {k: raw[k] for k in keys if k in raw} if isinstance(raw, Mapping) else raw
            parts[name] = getattr(parse_config({name: section}), name)
        except SmartbinError:
            pass
    return parts


def disk_problems(parts: Mapping[str, Any], data: Any) -> list[SmartbinError]:
    """What the files a config names say about its sections ``parts`` (problems without its name)."""
    problems = secret_file_problems(parts["mqtt"]) if "mqtt" in parts else []
    model = parts.get("model")
    if model is None:
        return problems
    try:
        taxonomy, where = configured_taxonomy(model)
    except SmartbinError as exc:
        return problems + [SmartbinError(f"model.taxonomy = {shown(model.taxonomy)}: {exc.problem}", exc.fix)]
    if taxonomy is not None:
        problems += taxonomy_problems(parts, taxonomy, where, capacity_written(data))
    return problems


def capacity_written(data: Any) -> bool:
    """Whether the file sets fill.capacity (the default names bins a taxonomy may not have)."""
    fill = data.get("fill") if isinstance(data, Mapping) else None
    return isinstance(fill, Mapping) and fill.get("capacity") is not None


# The password is an MQTT string (at most 65535 bytes) and a line end; a CA bundle is a few hundred KiB.
SECRET_MAX_BYTES = 64 << 10
SECRET_FILES = (
    ("password_file", "password", SECRET_MAX_BYTES),
    ("ca_file", "CA certificate", MAX_FILE_BYTES),
    ("cert_file", "client certificate", MAX_FILE_BYTES),
    ("key_file", "client key", MAX_FILE_BYTES),
)


def secret_file_problems(mqtt: MqttConfig) -> list[SmartbinError]:
    """A password or TLS file that is a device, a pipe or too large (``/dev/zero`` would be read until
    memory runs out). A file not there is left to the broker connection, which names it."""
    problems = []
    for key, what, cap in SECRET_FILES:
        path = getattr(mqtt, key)
        reason = regular_file_problem(path, cap) if path else None
        if reason:
            problems.append(
                SmartbinError(
                    f"mqtt.{key} = {shown(path)} {reason}",
                    f"point mqtt.{key} at the {what} file itself (a regular file the smartbin user can read)",
                )
            )
    return problems


def configured_taxonomy(model: ModelConfig) -> tuple[Optional[Taxonomy], str]:
    """The taxonomy the bin will sort by, and where it comes from: ``model.taxonomy`` (SmartbinError if
    it cannot be read), else the one in the bundle's model.json, or None when that cannot be read
    cheaply (the daemon refuses such a bundle at start with its own message)."""
    from edge.model.taxonomy import load_taxonomy

    if model.taxonomy:
        taxonomy = load_taxonomy(model.taxonomy)
        return taxonomy, f"taxonomy {taxonomy.name!r} ({model.taxonomy})"
    bundle = model.bundle or str(DEFAULT_BUNDLE)
    taxonomy = embedded_taxonomy(bundle)
    return taxonomy, f"taxonomy {taxonomy.name!r} (of model bundle {bundle})" if taxonomy else ""


def embedded_taxonomy(bundle: str) -> Optional[Taxonomy]:
    """The taxonomy in a bundle's model.json, or None if it cannot be read or is not valid."""
    from edge.model.bundle import META_FILE, bundle_folder
    from edge.model.taxonomy import parse_taxonomy

    try:
        meta = json.loads(read_capped(bundle_folder(bundle) / META_FILE).decode("utf-8"))
        return parse_taxonomy(meta["taxonomy"])
    except (OSError, UnfitFile, ValueError, KeyError, TypeError, RecursionError, SmartbinError):
        return None


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    guess = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean {guess[0]}? " if guess else ""


def taxonomy_problems(
    parts: Mapping[str, Any], taxonomy: Taxonomy, where: str, capacity_set: bool
) -> list[SmartbinError]:
    """Bins the config's sections ``parts`` and the taxonomy disagree on: a bin without a servo position
    or a fallback bin the taxonomy lacks parks items at run time; capacities for bins it lacks track
    nothing."""
    problems = []
    if "servo" in parts:
        positions = parts["servo"].bins
        strays = [b for b in positions if b not in taxonomy.bins]
        problems += [missing_position(b, strays, where) for b in taxonomy.bin_ids if b not in positions]
    fallback = parts["model"].fallback_bin
    if fallback and fallback not in taxonomy.bins:
        problems.append(unknown_fallback(fallback, taxonomy, where))
    if capacity_set and "fill" in parts:
        problems += [
            unknown_capacity(b, taxonomy, where) for b in parts["fill"].capacity if b not in taxonomy.bins
        ]
    return problems


def missing_position(bin_id: str, strays: Sequence[str], where: str) -> SmartbinError:
    """A bin of the taxonomy without a servo position; ``strays``, the positions of bins it lacks."""
    typo = difflib.get_close_matches(bin_id, strays, n=1)
    return SmartbinError(
        f"servo.bins.{bin_id} is missing: {where} has the bin {bin_id!r}, and an item for it would be left "
        "on the tray (parked), never tipped",
        (f"servo.bins.{escaped(typo[0])} is no bin of it: did you mean {bin_id}? " if typo else "")
        + f"calibrate it (smartbin servo calibrate --bin {bin_id}), or write servo.bins.{bin_id}: <pulse µs>",
    )


def unknown_fallback(fallback: str, taxonomy: Taxonomy, where: str) -> SmartbinError:
    listing = ", ".join(taxonomy.bin_ids)
    return SmartbinError(
        f"model.fallback_bin = '{escaped(fallback)}' is not a bin of {where} ({listing}): every uncertain "
        "item would be left on the tray (parked)",
        did_you_mean(fallback, taxonomy.bin_ids)
        + f"name one of {listing}, or leave it empty for the taxonomy's default_bin, {taxonomy.default_bin}",
    )


def unknown_capacity(bin_id: str, taxonomy: Taxonomy, where: str) -> SmartbinError:
    listing = ", ".join(taxonomy.bin_ids)
    return SmartbinError(
        f"fill.capacity.{escaped(bin_id)}: {where} has no bin '{escaped(bin_id)}' ({listing}), so its fill "
        "would never be tracked",
        did_you_mean(bin_id, taxonomy.bin_ids) + f"list capacities under the taxonomy's bins: {listing}",
    )


def set_keys(path: Path, values: Mapping[str, Any]) -> None:
    """Set dotted keys in a config file, keeping its comments, order and other keys.

    The new file is checked before it replaces the old one: a bad value never
    breaks a device's config.
    """
    from ruamel.yaml import YAML, YAMLError

    yaml = YAML()
    try:
        data = (yaml.load(read_capped(path).decode("utf-8")) if path.exists() else None) or {}
    except (OSError, UnicodeDecodeError, UnfitFile, YAMLError, RecursionError) as exc:
        raise SmartbinError(
            f"config file {path} cannot be read as YAML, so no key was set: {exc}",
            "fix the file by hand (smartbin config prints the reference), then set the keys again",
        ) from None
    if not isinstance(data, dict):
        raise SmartbinError(
            f"{path}: the file must be a mapping of keys, got {shown(data)}",
            "write the file as 'key: value' lines",
        )
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = data
        for depth, key in enumerate(parents, 1):
            if node.get(key) is None:
                node[key] = section_start(".".join(parents[:depth]))
            node = node[key]
            if not isinstance(node, dict):
                where = ".".join(parents[:depth])
                raise SmartbinError(
                    f"{path}: {where} = {shown(node)} is not a section of keys, so {dotted} cannot be set",
                    f"set {where} itself, or write it as 'key: value' lines",
                )
        node[leaf] = value
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            yaml.dump(data, fh)
    except OSError as exc:
        raise SmartbinError(
            f"cannot write {tmp} (the new {path}): {exc.strerror}",
            f"run it as a user who may write to {path.parent}",
        ) from None
    try:
        load_config(tmp)
    except SmartbinError as exc:
        tmp.unlink()
        raise SmartbinError(
            exc.problem.replace(str(tmp), str(path)), exc.fix.replace(str(tmp), str(path))
        ) from None
    tmp.replace(path)


# Mapping-valued keys that a key set under them starts from their defaults, when the file lacks them:
# servo.bins.kitchen set alone would drop the other bins' positions, and a bin without one is refused.
# (fill.capacity is not: a bin it does not list is just not tracked, and its default names bins a
# taxonomy may lack.)
SEEDED_FROM_DEFAULTS = ("servo.bins",)


def section_start(dotted: str) -> dict:
    """What a key absent from the file starts as when a key under it is set: the default entries of a
    key of SEEDED_FROM_DEFAULTS, else nothing."""
    if dotted not in SEEDED_FROM_DEFAULTS or typing.get_origin(key_type(dotted, Config)) is not dict:
        return {}
    value: Any = Config()
    for name in dotted.split("."):
        value = getattr(value, name)
    return dict(value)


def add_config_option(parser: Any) -> None:
    """``--config``, the same on every command that reads the device config."""
    parser.add_argument("--config", help="device config YAML (default: built-in defaults)")
