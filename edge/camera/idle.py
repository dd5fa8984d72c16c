"""An idle bin sleeps: while the tray has been empty and still for ``trigger.idle_after_s``, the loop
reads a frame ``trigger.idle_fps`` times a second instead of at the camera's rate, and wakes to the
full rate at the first sign of change (a frame that differs from the empty tray, or moves), a sort
command, or a held or waiting item.

A solar or battery bin spends most of its day here, so this is the figure its power budget depends
on. An item that lands while the bin is idle is seen on the next idle frame, at most one idle period
later, and then settles and is sorted at the full rate as usual: a drop is never missed, only seen
up to ``1 / idle_fps`` seconds later.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


class IdlePace:
    """Whether the loop is idle, from whether each frame was quiet; pure apart from its log lines."""

    def __init__(self, after_s: float, fps: float, clock: Callable[[], float]) -> None:
        self.after_s, self.fps, self.clock = after_s, fps, clock
        self.quiet_since: float | None = None
        self.idle = False

    @property
    def enabled(self) -> bool:
        return self.after_s > 0

    @property
    def period_s(self) -> float:
        return 1.0 / self.fps

    def update(self, quiet: bool) -> bool:
        """One frame: ``quiet`` when the tray is empty and still and nothing waits. True while idle."""
        if not self.enabled:
            return False
        now = self.clock()
        if not quiet:
            self.quiet_since = None
            if self.idle:
                log.info("idle: change on the tray; back to the full frame rate")
                self.idle = False
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        if not self.idle and now - self.quiet_since >= self.after_s:
            log.info(
                "idle: the tray has been empty and still for %.0f s; reading %g frames a second until "
                "something changes",
                self.after_s,
                self.fps,
            )
            self.idle = True
        return self.idle

    def wake(self) -> None:
        """Something outside the camera (a sort command, a reload) needs the full rate now."""
        self.quiet_since = None
        if self.idle:
            log.info("idle: woken by a command; back to the full frame rate")
            self.idle = False
