"""The daemon's camera: a source that fails or turns black is a fault, reopened with backoff; a dark
or covered view is reported and its frames are not classified."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from edge.camera.kinds import open_source, source_fix
from edge.camera.sources import FrameSource, SourceFault
from edge.retry import Retry

if TYPE_CHECKING:
    from edge.config import CameraConfig

log = logging.getLogger(__name__)

BLACK_LEVEL = 8  # brightest pixel of a frame with no signal at all
BUFFERED_FRAMES = 4  # OpenCV's V4L2 backend queues 4 buffers (CAP_PROP_BUFFERSIZE)


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
        self.retry = Retry("camera fault", log, cfg.retry_max_s, clock=clock)
        self.condition: str | None = None
        self.ended = False
        self.opened = 0  # how many times a source was opened: a new one means a new view
        self._black_run = 0

    @property
    def fault(self) -> str | None:
        """Why the source is down, or None."""
        return self.retry.fault

    def _failed(self, reason: str) -> None:
        self.retry.failed(reason, source_fix(self.cfg.source))
        self.close()

    def open(self) -> bool:
        if self.source is not None:
            return True
        if not self.retry.due:
            return False
        try:
            self.source = self.opener(self.cfg)
        except SourceFault as exc:
            self._failed(exc.reason)
            return False
        failed = self.retry.recovered()
        if failed:
            log.info("camera back after %d failed attempts: %s", failed, self.source.description)
        else:
            log.info("camera: %s", self.source.description)
        self.opened += 1
        self._black_run = 0
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

    def drop_buffered(self) -> None:
        """Skip the frames a live camera captured before now. V4L2 keeps a queue of frames
        (:data:`BUFFERED_FRAMES` by default in OpenCV), so the frames read just after a tip can show the
        tray before it tipped, and a sort command then would count the item again. A replayed source
        (a folder, a video file) keeps every frame."""
        if self.source is None or getattr(self.source, "finite", False):
            return
        skip = getattr(self.source, "skip", None)  # a capture device: dequeued, never decoded
        if skip is None:
            for _ in range(BUFFERED_FRAMES):
                if self.read() is None:
                    return
            return
        try:
            skip(BUFFERED_FRAMES)
        except SourceFault as exc:
            self._failed(exc.reason)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
