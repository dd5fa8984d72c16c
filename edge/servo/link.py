"""The serial port to a servo controller: every failure an ActuatorFault or a SmartbinError with the fix."""

from __future__ import annotations

import contextlib
from typing import Optional, Protocol, Union

import serial

from edge.errors import SmartbinError


class ServoSettings(Protocol):
    """The ``servo:`` section as a protocol's opener reads it (edge.config.ServoConfig)."""

    protocol: str
    port: str
    baud: int
    reply_timeout_s: float
    channel: int
    device_number: Optional[int]
    speed: Optional[int]
    acceleration: Optional[int]
    tolerance_us: float
    startup_s: float
    home_us: float
    interlock: Optional[Union[int, str]]  # maestro: an input channel; line: a pin (D3..D8); None: off
    interlock_stop: str  # what a move stopped by an opening lid does: home, or hold


class ActuatorFault(Exception):
    """A move that did not happen, or a controller that cannot be trusted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LidOpen(ActuatorFault):
    """The interlock reads open: the move was refused, or stopped before it reached its target.

    The controller itself is fine (no servo fault); the item stays on the tray until the lid closes."""


try:
    import termios
except ImportError:  # Windows: a workstation that trains, or reads the config, has no termios
    termios = None

# What a serial port raises when its device goes away (pyserial lets termios errors through).
PORT_ERRORS = (serial.SerialException, OSError) + ((termios.error,) if termios else ())


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
