"""The daemon's camera: a source that fails or turns black is a fault, reopened with backoff; a dark
or covered view is reported and its frames are not classified."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from edge.camera.kinds import open_source, source_fix
from edge.camera.sources import FrameSource, SourceFault
from edge.retry import backoff_delay

if TYPE_CHECKING:
    from edge.config import CameraConfig

log = logging.getLogger(__name__)

BLACK_LEVEL = 8  # brightest pixel of a frame with no signal at all


def dark_view(frame: np.ndarray, dark_level: float) -> str | None:
    """Why the view cannot be classified (too dark, lens covered), or None."""
    mean = float(frame[::8, ::8].mean())
    if mean < dark_level:
        return f"view too dark or lens covered (brightness {mean:.0f} < camera.dark_level {dark_level:g})"
    return None


def is_black(frame: np.ndarray) -> bool:
    return int(frame[::8, ::8].max()) <= BLACK_LEVEL


class Camera:
    """The daemon's source: faults reported and retried with backoff, never raised.

    ``read`` returns a frame, or ``None`` when there is none now (the source is
    down, or it has ended: see ``ended``). ``fault`` says why the source is down;
    ``condition`` says why the last frame is not fit to classify.
    """

    def __init__(
        self,
        cfg: CameraConfig,
        opener: Callable[[CameraConfig], FrameSource] = open_source,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.opener, self.clock = cfg, opener, clock
        self.source: FrameSource | None = None
        self.fault: str | None = None
        self.condition: str | None = None
        self.ended = False
        self.opened = 0  # how many times a source was opened: a new one means a new view
        self._attempts = 0
        self._retry_at = 0.0
        self._black_run = 0

    def _failed(self, reason: str) -> None:
        if reason != self.fault:
            log.error("camera fault: %s (%s)", reason, source_fix(self.cfg.source))
        self.fault = reason
        self._retry_at = self.clock() + backoff_delay(self._attempts, 0.5, self.cfg.retry_max_s)
        self._attempts += 1
        self.close()

    def open(self) -> bool:
        if self.source is not None:
            return True
        if self.clock() < self._retry_at:
            return False
        try:
            self.source = self.opener(self.cfg)
        except SourceFault as exc:
            self._failed(exc.reason)
            return False
        if self.fault:
            log.info("camera back after %d failed attempts: %s", self._attempts, self.source.description)
        else:
            log.info("camera: %s", self.source.description)
        self.opened += 1
        self.fault, self._attempts, self._black_run = None, 0, 0
        return True

    def read(self) -> np.ndarray | None:
        if self.ended or not self.open():
            return None
        try:
            frame = self.source.read()
        except SourceFault as exc:
            self._failed(exc.reason)
            return None
        if frame is None:
            self.ended = True
            log.info("camera: end of %s", self.source.description)
            return None
        if is_black(frame):
            self._black_run += 1
            if self._black_run >= self.cfg.black_frames:
                self._failed(f"{self.source.description} gives black frames (no signal)")
            return None
        self._black_run = 0
        condition = dark_view(frame, self.cfg.dark_level)
        if condition != self.condition:
            if condition:
                log.warning("camera: %s; not classifying until it clears", condition)
            else:
                log.info("camera: the view is clear again")
            self.condition = condition
        return frame

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
