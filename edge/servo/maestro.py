"""Pololu Maestro: the compact protocol (and the addressed Pololu protocol for daisy-chained boards).

Targets are in quarter-microseconds. A move is confirmed when the position reads back within
tolerance; the board's error register is checked after every move.
"""

from __future__ import annotations

import time

from edge.servo.link import ActuatorFault, LidOpen, Link, ServoSettings

# An input channel's Get Position is its value: 0..1023 (analog, 0..5 V) or exactly 0 / 1023 (digital).
# The interlock switch pulls the input to GND when closed; a pull-up makes it (and a cut wire) read high.
INPUT_MAX = 1023
INPUT_OPEN_AT = 512
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


# --- Byte encoding (pure) ---------------------------------------------------------


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


class MaestroController:
    """Pololu Maestro: a move is confirmed when the position reads back within tolerance.

    With an ``interlock`` input channel, a move reads it first (refused while open) and between the
    position reads until the target is reached; open on the way, the servo is sent to ``stop_us``
    (home), or kept where it is (``stop_us`` None: hold), and the move fails as :class:`LidOpen`.
    The Maestro itself knows nothing of the lid: this host polling is the whole interlock.
    """

    def __init__(
        self,
        link: Link,
        device: int | None = None,
        tolerance_us: float = 10.0,
        interlock: int | None = None,
        stop_us: float | None = None,
    ) -> None:
        self.link, self.device, self.tolerance_us = link, device, tolerance_us
        self.interlock, self.stop_us = interlock, stop_us
        self.lid_open: bool | None = None

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

    def lid(self) -> bool | None:
        """Whether the interlock input reads open (None: no interlock); a silent or impossible
        answer is a fault, never read as closed."""
        if self.interlock is None:
            return None
        self.link.write(get_position(self.interlock, self.device))
        what = f"the interlock input on channel {self.interlock}"
        value = int.from_bytes(self.link.read(2, what), "little")
        if value > INPUT_MAX:
            raise ActuatorFault(
                f"the interlock input on channel {self.interlock} reads {value}, not 0..{INPUT_MAX}: "
                "configure the channel as an input (Maestro Control Center, Channel Settings)"
            )
        self.lid_open = value >= INPUT_OPEN_AT
        return self.lid_open

    def _stop(self, channel: int, position: float, target: float) -> LidOpen:
        stop = self.stop_us if self.stop_us is not None else position
        self.link.write(set_target(channel, stop, self.device))
        where = "sent home" if self.stop_us is not None else "held"
        return LidOpen(
            f"lid opened during the move to {target:g} µs (interlock channel {self.interlock}): "
            f"stopped at {position:g} µs and {where}"
        )

    def ping(self) -> str:
        self.check_errors()
        return (
            "Pololu Maestro (compact protocol)" if self.device is None else f"Pololu Maestro #{self.device}"
        )

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        if self.lid():
            raise LidOpen(
                f"lid open (interlock channel {self.interlock}): the move to {pulse_us:g} µs was not started"
            )
        self.link.write(set_target(channel, pulse_us, self.device))
        deadline = time.monotonic() + timeout_s
        while True:
            position = self.position_us(channel)
            if abs(position - pulse_us) <= self.tolerance_us:
                self.check_errors()
                return
            if self.lid():
                raise self._stop(channel, position, pulse_us)
            if time.monotonic() > deadline:
                raise ActuatorFault(
                    f"servo on channel {channel} is at {position:g} µs, not {pulse_us:g} µs, "
                    f"after {timeout_s:g} s"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self.link.close()


def open_maestro(cfg: ServoSettings) -> MaestroController:
    link = Link(cfg.port, cfg.baud, cfg.reply_timeout_s)
    if cfg.speed is not None:
        link.write(set_speed(cfg.channel, cfg.speed, cfg.device_number))
    if cfg.acceleration is not None:
        link.write(set_acceleration(cfg.channel, cfg.acceleration, cfg.device_number))
    interlock = getattr(cfg, "interlock", None)
    home = getattr(cfg, "interlock_stop", "home") == "home"
    controller = MaestroController(
        link,
        cfg.device_number,
        cfg.tolerance_us,
        None if interlock is None else int(interlock),
        cfg.home_us if home else None,
    )
    try:
        controller.lid()  # an interlock that does not answer is a fault now, not at the first move
    except ActuatorFault:
        link.close()
        raise
    return controller
