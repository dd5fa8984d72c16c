"""Actuator: turn the tray servo to a bin over a serial controller, and know that it got there.

Two controller protocols sit behind one interface (:class:`Controller`):

- ``maestro``: the Pololu Maestro compact protocol (and the addressed Pololu
  protocol for daisy-chained boards). Targets are in quarter-microseconds.
- ``line``: our ASCII request/response protocol for a hobby microcontroller
  (``docs/line-protocol.md``).

A move is done only when the controller confirms it; anything else is an
:class:`ActuatorFault` with a reason. Targets outside the calibrated limits
are refused, never clamped.
"""

from __future__ import annotations

import contextlib
import logging
import termios
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import serial

from edge.config import ServoConfig
from edge.errors import SmartbinError
from edge.retry import backoff_delay

log = logging.getLogger(__name__)

# Pololu Maestro compact protocol commands.
SET_TARGET = 0x84
SET_SPEED = 0x87
SET_ACCELERATION = 0x89
GET_POSITION = 0x90
GET_MOVING_STATE = 0x93
GET_ERRORS = 0xA1
POLOLU_START = 0xAA

MAESTRO_ERROR_BITS = (
    "serial signal error",
    "serial overrun error",
    "serial RX buffer full",
    "serial CRC error",
    "serial protocol error",
    "serial timeout error",
    "script stack error",
    "script call stack error",
    "script program counter error",
)


class ActuatorFault(Exception):
    """A move that did not happen, or a controller that cannot be trusted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- Maestro byte encoding (pure) -------------------------------------------------


def seven_bit(value: int) -> bytes:
    """A 14-bit value as the Maestro sends it: low 7 bits, then high 7 bits."""
    if not 0 <= value < 1 << 14:
        raise ValueError(f"{value} does not fit in 14 bits")
    return bytes((value & 0x7F, (value >> 7) & 0x7F))


def maestro_command(command: int, payload: bytes = b"", device: int | None = None) -> bytes:
    """Compact protocol, or the addressed Pololu protocol when ``device`` is given."""
    if device is None:
        return bytes((command,)) + payload
    if not 0 <= device <= 0x7F:
        raise ValueError(f"device number {device} is not 0..127")
    return bytes((POLOLU_START, device, command & 0x7F)) + payload


def set_target(channel: int, pulse_us: float, device: int | None = None) -> bytes:
    return maestro_command(SET_TARGET, bytes((channel,)) + seven_bit(round(pulse_us * 4)), device)


def set_speed(channel: int, speed: int, device: int | None = None) -> bytes:
    return maestro_command(SET_SPEED, bytes((channel,)) + seven_bit(speed), device)


def set_acceleration(channel: int, acceleration: int, device: int | None = None) -> bytes:
    return maestro_command(SET_ACCELERATION, bytes((channel,)) + seven_bit(acceleration), device)


def get_position(channel: int, device: int | None = None) -> bytes:
    return maestro_command(GET_POSITION, bytes((channel,)), device)


def get_moving_state(device: int | None = None) -> bytes:
    return maestro_command(GET_MOVING_STATE, b"", device)


def get_errors(device: int | None = None) -> bytes:
    return maestro_command(GET_ERRORS, b"", device)


def decode_maestro_errors(bits: int) -> list[str]:
    names = [name for i, name in enumerate(MAESTRO_ERROR_BITS) if bits & (1 << i)]
    unknown = bits & ~((1 << len(MAESTRO_ERROR_BITS)) - 1)
    if unknown:
        names.append(f"unknown error bits 0x{unknown:04x}")
    return names


# --- The serial link ------------------------------------------------------------

# What a serial port raises when its device goes away (pyserial lets termios errors through).
PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class Link:
    """One serial port; every failure becomes an ActuatorFault or a SmartbinError naming the fix."""

    def __init__(self, port: str, baud: int, timeout_s: float) -> None:
        self.port_name, self.timeout_s = port, timeout_s
        self._partial = b""
        try:
            self.port = serial.Serial(port, baud, timeout=timeout_s, write_timeout=timeout_s)
        except serial.SerialException as exc:
            raise open_error(port, exc) from None

    def write(self, data: bytes, flush_input: bool = True) -> None:
        try:
            if flush_input:
                self.port.reset_input_buffer()
            self.port.write(data)
            self.port.flush()
        except PORT_ERRORS as exc:
            raise ActuatorFault(f"serial port {self.port_name} failed while writing: {exc}") from None

    def read(self, n: int, what: str) -> bytes:
        try:
            data = self.port.read(n)
        except PORT_ERRORS as exc:
            raise ActuatorFault(
                f"serial port {self.port_name} vanished while reading {what}: {exc}"
            ) from None
        if len(data) < n:
            got = f"{len(data)} of {n} bytes" if data else "nothing"
            raise ActuatorFault(
                f"controller on {self.port_name} sent {got} for {what} within {self.timeout_s:g} s"
            )
        return data

    def waiting_lines(self) -> list[str]:
        """Complete lines that have arrived unasked, without waiting; a partial one is kept for later."""
        try:
            self._partial += self.port.read(self.port.in_waiting)
        except PORT_ERRORS as exc:
            raise ActuatorFault(f"serial port {self.port_name} vanished: {exc}") from None
        *lines, self._partial = self._partial.split(b"\n")
        return [line.decode("ascii", "replace").strip() for line in lines]

    def readline(self, what: str) -> str:
        try:
            raw, self._partial = self._partial, b""
            raw += self.port.read_until(b"\n", 256)
        except PORT_ERRORS as exc:
            raise ActuatorFault(
                f"serial port {self.port_name} vanished while reading {what}: {exc}"
            ) from None
        if not raw.endswith(b"\n"):
            shown = f"partial reply {raw!r}" if raw else "nothing"
            raise ActuatorFault(
                f"controller on {self.port_name} sent {shown} for {what} within {self.timeout_s:g} s"
            )
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ActuatorFault(f"controller on {self.port_name} sent garbage for {what}: {raw!r}") from None

    def close(self) -> None:
        with contextlib.suppress(*PORT_ERRORS):
            self.port.close()


def open_error(port: str, exc: serial.SerialException) -> SmartbinError:
    errno = getattr(exc, "errno", None)
    if errno == 2 or "No such file" in str(exc):
        return SmartbinError(
            f"serial port {port} does not exist",
            "plug in the servo controller and name it by its stable path (ls /dev/serial/by-id/)",
        )
    if errno == 13 or "Permission denied" in str(exc):
        return SmartbinError(
            f"serial port {port} is not permitted for this user",
            "add the user to the dialout group (sudo usermod -aG dialout $USER, then log in again)",
        )
    return SmartbinError(f"serial port {port} cannot be opened: {exc}", "check the cable and the port")


# --- Controllers ------------------------------------------------------------------


class Controller(Protocol):
    def events(self) -> list[str]:
        """What the controller reported unasked since the last call (e.g. ``BUTTON``)."""
        ...

    def ping(self) -> str:
        """A description of the controller and its firmware; raises ActuatorFault if silent."""

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        """Drive ``channel`` to ``pulse_us`` and return once the controller confirms it."""

    def position_us(self, channel: int) -> float:
        """Where the controller holds ``channel`` now (the last pulse width it was set to)."""

    def close(self) -> None: ...


class MaestroController:
    """Pololu Maestro: a move is confirmed when the position reads back within tolerance."""

    def __init__(self, link: Link, device: int | None = None, tolerance_us: float = 10.0) -> None:
        self.link, self.device, self.tolerance_us = link, device, tolerance_us

    def errors(self) -> list[str]:
        self.link.write(get_errors(self.device))
        return decode_maestro_errors(int.from_bytes(self.link.read(2, "get errors"), "little"))

    def check_errors(self) -> None:
        errors = self.errors()
        if errors:
            raise ActuatorFault(f"Maestro reports: {', '.join(errors)}")

    def events(self) -> list[str]:
        return []  # the Maestro reports nothing unasked

    def position_us(self, channel: int) -> float:
        self.link.write(get_position(channel, self.device))
        return int.from_bytes(self.link.read(2, "get position"), "little") / 4

    def ping(self) -> str:
        self.check_errors()
        return (
            "Pololu Maestro (compact protocol)" if self.device is None else f"Pololu Maestro #{self.device}"
        )

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        self.link.write(set_target(channel, pulse_us, self.device))
        deadline = time.monotonic() + timeout_s
        while True:
            position = self.position_us(channel)
            if abs(position - pulse_us) <= self.tolerance_us:
                self.check_errors()
                return
            if time.monotonic() > deadline:
                raise ActuatorFault(
                    f"servo on channel {channel} is at {position:g} µs, not {pulse_us:g} µs, "
                    f"after {timeout_s:g} s"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self.link.close()


class LineController:
    """Our line protocol: every command gets ``OK ...`` or ``ERR <code> <text>``.

    Between replies the firmware may send ``EVT <name>`` lines (the tray
    button): they are kept for :meth:`events`, never taken for a reply.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._events: list[str] = []

    def _event(self, line: str) -> bool:
        if line.startswith("EVT "):
            self._events.append(line[4:].strip())
            return True
        return False

    def events(self) -> list[str]:
        for line in self.link.waiting_lines():
            self._event(line)  # anything else arriving unasked is stale and dropped
        events, self._events = self._events, []
        return events

    def request(self, command: str) -> list[str]:
        for line in self.link.waiting_lines():
            self._event(line)
        self.link.write(command.encode("ascii") + b"\n", flush_input=False)
        reply = self.link.readline(command.split()[0])
        while self._event(reply):
            reply = self.link.readline(command.split()[0])
        words = reply.split()
        if words[:1] == ["OK"]:
            return words[1:]
        if words[:1] == ["ERR"] and len(words) >= 2:
            raise ActuatorFault(f"controller refused {command!r}: {' '.join(words[1:])}")
        raise ActuatorFault(f"controller sent an unexpected reply to {command!r}: {reply!r}")

    def ping(self) -> str:
        words = self.request("PING")
        if len(words) < 3 or words[0] != "PONG":
            raise ActuatorFault(
                f"controller answered PING with {' '.join(words)!r}, not PONG <name> <version>"
            )
        return f"{words[1]} {words[2]} (line protocol)"

    def wait_ready(self, startup_s: float) -> str:
        """Ping until the firmware answers: opening the port resets an Arduino (~1.5 s bootloader)."""
        deadline = time.monotonic() + startup_s
        while True:
            try:
                return self.ping()
            except ActuatorFault:
                if time.monotonic() > deadline:
                    raise

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        words = self.request(f"MOVE {channel} {round(pulse_us)}")
        if words != [str(channel), str(round(pulse_us))]:
            raise ActuatorFault(
                f"controller confirmed {' '.join(words)!r} for MOVE {channel} {round(pulse_us)}"
            )

    def position_us(self, channel: int) -> float:
        words = self.request(f"POS {channel}")
        if len(words) != 2 or words[0] != str(channel) or not words[1].isdigit():
            raise ActuatorFault(f"controller answered POS {channel} with {' '.join(words)!r}")
        return float(words[1])

    def detach(self, channel: int) -> None:
        self.request(f"DETACH {channel}")

    def close(self) -> None:
        self.link.close()


def open_controller(cfg: ServoConfig) -> Controller:
    """Open the configured port and controller; a line controller is waited for until it answers."""
    link = Link(cfg.port, cfg.baud, cfg.reply_timeout_s)
    if cfg.protocol == "maestro":
        if cfg.speed is not None:
            link.write(set_speed(cfg.channel, cfg.speed, cfg.device_number))
        if cfg.acceleration is not None:
            link.write(set_acceleration(cfg.channel, cfg.acceleration, cfg.device_number))
        return MaestroController(link, cfg.device_number, cfg.tolerance_us)
    controller = LineController(link)
    try:
        controller.wait_ready(cfg.startup_s)
    except ActuatorFault:
        link.close()
        raise
    return controller


# --- The actuator ---------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Per-bin pulse widths and the safe range of one servo channel (µs)."""

    channel: int
    home_us: float
    min_us: float
    max_us: float
    bins: dict[str, float]
    move_timeout_s: float = 2.0
    dwell_s: float = 0.8
    tolerance_us: float = 10.0

    @classmethod
    def from_config(cls, cfg: ServoConfig) -> Calibration:
        return cls(
            cfg.channel,
            cfg.home_us,
            cfg.min_us,
            cfg.max_us,
            dict(cfg.bins),
            cfg.move_timeout_s,
            cfg.dwell_s,
            cfg.tolerance_us,
        )

    def at(self, pulse_us: float, bin_id: str) -> bool:
        """Whether a position read back from the controller is the bin's (within the tolerance)."""
        return bin_id in self.bins and abs(pulse_us - self.bins[bin_id]) <= self.tolerance_us

    def target(self, bin_id: str) -> float:
        if bin_id not in self.bins:
            raise ActuatorFault(f"bin {bin_id!r} has no calibrated position (known: {', '.join(self.bins)})")
        return self.checked(self.bins[bin_id], f"bin {bin_id!r}")

    def checked(self, pulse_us: float, what: str) -> float:
        if not self.min_us <= pulse_us <= self.max_us:
            raise ActuatorFault(
                f"{what} target {pulse_us:g} µs is outside the calibrated limits "
                f"{self.min_us:g}–{self.max_us:g} µs; refusing to move"
            )
        return pulse_us


class Actuator:
    """Move to a bin, dwell while the item falls, return home; every step confirmed."""

    def __init__(self, controller: Controller, calibration: Calibration) -> None:
        self.controller, self.cal = controller, calibration

    def home(self) -> None:
        cal = self.cal
        self.controller.move(cal.channel, cal.checked(cal.home_us, "home"), cal.move_timeout_s)

    def tip(self, bin_id: str) -> float:
        """Tip into the bin; returns once the controller confirms it, with how long that took (ms)."""
        cal = self.cal
        target = cal.target(bin_id)
        start = time.monotonic()
        self.controller.move(cal.channel, target, cal.move_timeout_s)
        return (time.monotonic() - start) * 1000

    def return_home(self) -> float:
        """Dwell while the item falls, then come back; returns how long the return took (ms)."""
        time.sleep(self.cal.dwell_s)
        start = time.monotonic()
        self.home()
        return (time.monotonic() - start) * 1000

    def sort(self, bin_id: str) -> dict[str, float]:
        """Tip into the bin and come back; returns how long the move and the return took (ms)."""
        move_ms = self.tip(bin_id)
        return {"move_ms": move_ms, "home_ms": self.return_home()}


class ServoSupervisor:
    """Keeps a controller connected for the daemon: a fault never kills the process.

    A failed move drops the connection, logs one line, and records ``fault``
    (for the state topic); the next move reopens the port once its backoff
    delay has passed. A move in flight when the port dies is failed, never done.
    """

    def __init__(
        self,
        connect: Callable[[], Controller],
        calibration: Calibration,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect, self.cal = connect, calibration
        self.base_s, self.cap_s, self.clock = base_s, cap_s, clock
        self.actuator: Actuator | None = None
        self.fault: str | None = None
        self.attempts = 0
        self.retry_at = 0.0

    def _failed(self, reason: str) -> ActuatorFault:
        if reason != self.fault:
            log.error("servo fault: %s", reason)
        self.fault = reason
        self.retry_at = self.clock() + backoff_delay(self.attempts, self.base_s, self.cap_s)
        self.attempts += 1
        if self.actuator is not None:
            self.actuator.controller.close()
            self.actuator = None
        return ActuatorFault(reason)

    def _connected(self, now: bool = False) -> Actuator:
        if self.actuator is not None:
            return self.actuator
        wait = self.retry_at - self.clock()
        if wait > 0 and not now:
            raise ActuatorFault(f"servo controller offline ({self.fault}); next try in {wait:.1f} s")
        try:
            controller = self.connect()
        except SmartbinError as exc:
            raise self._failed(f"{exc.problem} ({exc.fix})") from None
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        if self.fault is not None:
            log.info("servo controller back after %d failed attempts", self.attempts)
        self.actuator, self.fault, self.attempts = Actuator(controller, self.cal), None, 0
        return self.actuator

    @property
    def ready(self) -> bool:
        """Connected, or due for another try."""
        return self.actuator is not None or self.clock() >= self.retry_at

    def tip(self, bin_id: str) -> float:
        """Tip into the bin (confirmed); the daemon counts the item, then calls :meth:`return_home`."""
        self.cal.target(bin_id)  # a calibration problem is not a controller fault
        actuator = self._connected()
        try:
            return actuator.tip(bin_id)
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None

    def return_home(self) -> float:
        actuator = self._connected()
        try:
            return actuator.return_home()
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None

    def position_us(self) -> float | None:
        """Where the controller says the tray is, or ``None`` when it cannot say (offline, silent)."""
        try:
            actuator = self._connected()
            return actuator.controller.position_us(self.cal.channel)
        except ActuatorFault as fault:
            if self.actuator is not None:
                self._failed(fault.reason)
            return None

    def events(self) -> list[str]:
        """The connected controller's unasked reports; none while it is offline."""
        if self.actuator is None:
            return []
        try:
            return self.actuator.controller.events()
        except ActuatorFault as fault:
            self._failed(fault.reason)
            return []

    def home(self, now: bool = False) -> None:
        """Connect if needed and send the tray home (at start, and before exit: ``now`` tries at once,
        whatever the backoff, since there is no later)."""
        actuator = self._connected(now)
        try:
            actuator.home()
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None

    def close(self) -> None:
        if self.actuator is not None:
            self.actuator.controller.close()
            self.actuator = None
