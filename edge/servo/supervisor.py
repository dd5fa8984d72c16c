"""The tray's moves for the daemon: calibrated targets, confirmed moves, and a controller kept connected."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge.errors import SmartbinError
from edge.retry import Retry
from edge.servo.link import ActuatorFault, LidOpen
from edge.servo.protocols import Controller

if TYPE_CHECKING:
    from edge.config import ServoConfig

log = logging.getLogger(__name__)

LID_POLL_S = 0.2  # while the lid is open, the interlock is asked again this often


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

    A move the interlock refused or stopped (:class:`LidOpen`) is no controller fault: the
    connection stays, ``lid_open`` says so, the lid is asked again every ``LID_POLL_S`` (a move
    meanwhile is refused at once), and a tray the lid left away from home is sent home once it
    closes. An interlock that does not answer is a controller fault like any other.
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
        self.clock = clock
        self.actuator: Actuator | None = None
        self.lid_open: bool | None = None  # None: no interlock, or not asked yet
        self._lid_asked_at = -LID_POLL_S
        self._home_due = False  # a move the lid refused or stopped may have left the tray away from home

    def _lid(self, fault: LidOpen) -> LidOpen:
        if not self.lid_open:
            log.warning("interlock: %s", fault.reason)
        self.lid_open, self._home_due, self._lid_asked_at = True, True, self.clock()
        return fault

    def _lid_still_open(self, actuator: Actuator) -> bool:
        """While the lid was open: ask again (at most every LID_POLL_S); True if it still is."""
        if not self.lid_open:
            return False
        if self.clock() - self._lid_asked_at < LID_POLL_S:
            return True
        self._lid_asked_at = self.clock()
        try:
            self.lid_open = bool(actuator.controller.lid())  # type: ignore[attr-defined]
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        if not self.lid_open:
            log.info("interlock: the lid is closed again")
        return self.lid_open

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
        if self._lid_still_open(actuator):
            raise LidOpen("lid open: the move was not started")
        try:
            seconds = actuator.tip(bin_id)
        except LidOpen as fault:
            raise self._lid(fault) from None
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        self.lid_open = getattr(actuator.controller, "lid_open", None)
        return seconds

    def return_home(self) -> float:
        actuator = self._connected()
        try:
            seconds = actuator.return_home()
        except LidOpen as fault:
            raise self._lid(fault) from None
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        self._home_due = False
        return seconds

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
            events = self.actuator.controller.events()
        except ActuatorFault as fault:
            self._failed(fault.reason)
            return []
        lid = [e for e in events if e in ("LID_OPEN", "LID_CLOSED")]
        if lid:
            self.lid_open = lid[-1] == "LID_OPEN"
        if self._home_due and self.actuator is not None:
            with contextlib.suppress(ActuatorFault):  # logged; a stopped move left the tray away from home
                if not self._lid_still_open(self.actuator):
                    self.home()
        return events

    def home(self, now: bool = False) -> None:
        """Connect if needed and send the tray home (at start, and before exit: ``now`` tries at once,
        whatever the backoff, since there is no later)."""
        actuator = self._connected(now)
        try:
            actuator.home()
        except LidOpen as fault:
            raise self._lid(fault) from None
        except ActuatorFault as fault:
            raise self._failed(fault.reason) from None
        self._home_due = False

    def close(self) -> None:
        if self.actuator is not None:
            self.actuator.controller.close()
            self.actuator = None
