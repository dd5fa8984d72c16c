"""The tray's moves for the daemon: calibrated targets, confirmed moves, and a controller kept connected."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge.errors import SmartbinError
from edge.retry import Retry
from edge.servo.link import ActuatorFault
from edge.servo.protocols import Controller

if TYPE_CHECKING:
    from edge.config import ServoConfig

log = logging.getLogger(__name__)


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
        self.retry = Retry("servo fault", log, cap_s, base_s, clock)
        self.actuator: Actuator | None = None

    @property
    def fault(self) -> str | None:
        """Why the controller is offline (for the state topic), or None."""
        return self.retry.fault

    def _failed(self, reason: str) -> ActuatorFault:
        self.retry.failed(reason)
        if self.actuator is not None:
            self.actuator.controller.close()
            self.actuator = None
        return ActuatorFault(reason)

    def _connected(self, now: bool = False) -> Actuator:
        if self.actuator is not None:
            return self.actuator
        wait = self.retry.wait_s()
        if wait > 0 and not now:
            raise ActuatorFault(f"servo controller offline ({self.fault}); next try in {wait:.1f} s")
        try:
            controller = self.connect()
        except SmartbinError as exc:
            raise self._failed(f"{exc.problem} ({exc.fix})") from None
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        failed = self.retry.recovered()
        if failed:
            log.info("servo controller back after %d failed attempts", failed)
        self.actuator = Actuator(controller, self.cal)
        return self.actuator

    @property
    def ready(self) -> bool:
        """Connected, or due for another try."""
        return self.actuator is not None or self.retry.due

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
