"""The registry of servo controller protocols: ``servo.protocol`` names one.

A protocol is a controller class (the :class:`Controller` interface) and an opener; add a
module beside maestro.py and line.py and one entry to :data:`PROTOCOLS`. The config's
validation and reference, ``smartbin servo --protocol`` and the daemon read this table, so an
unknown name is refused everywhere with the list of known ones.

A move is done only when the controller confirms it; anything else is an ActuatorFault with a
reason. Targets outside the calibrated limits are refused, never clamped (edge.servo.supervisor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from edge.errors import SmartbinError
from edge.servo.line import open_line
from edge.servo.link import ServoSettings
from edge.servo.maestro import open_maestro


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


@dataclass(frozen=True)
class ServoProtocol:
    name: str
    help: str  # what the config reference says about it
    open: Callable[[ServoSettings], Controller]


PROTOCOLS: dict[str, ServoProtocol] = {
    protocol.name: protocol
    for protocol in (
        ServoProtocol("maestro", "Pololu Maestro", open_maestro),
        ServoProtocol("line", "our microcontroller firmware, deploy/firmware/", open_line),
    )
}


def servo_protocol(name: str) -> ServoProtocol:
    if name not in PROTOCOLS:
        raise SmartbinError(
            f"servo protocol {name!r} is unknown", f"set servo.protocol to one of: {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]


def open_controller(cfg: ServoSettings) -> Controller:
    """Open the configured port and controller (``cfg.protocol``); raises ActuatorFault or SmartbinError."""
    return servo_protocol(cfg.protocol).open(cfg)
