"""Frame sources behind one interface: OpenCV capture (camera, GStreamer, stream, video file) and
a folder of images. Which one a ``camera.source`` value opens is edge.camera.kinds' registry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

import cv2
import numpy as np

from edge.errors import SmartbinError
from edge.images import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger(__name__)


class SourceFault(Exception):
    """A source that cannot give frames now: the camera vanished, the stream dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CaptureSettings(Protocol):
    """The ``camera:`` section as a source reads it (edge.config.CameraConfig)."""

    source: Union[int, str]
    width: Optional[int]
    height: Optional[int]
    fps: Optional[float]
    exposure: Optional[float]
    replay_fps: float


class FrameSource(Protocol):
    description: str
    finite: bool

    def read(self) -> np.ndarray | None:
        """The next BGR frame; ``None`` at the end of a finite source; raises SourceFault."""
        ...

    def close(self) -> None: ...


class Pacer:
    """Hands out frames no faster than ``fps`` (0 = unpaced), as a camera would."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.clock, self.due = clock, 0.0

    def wait(self) -> None:
        if self.period:
            now = self.clock()
            if self.due > now:
                time.sleep(self.due - now)
            self.due = max(now, self.due) + self.period


class CaptureSource:
    """OpenCV ``VideoCapture``: a camera, a GStreamer pipeline, a stream or a video file."""

    def __init__(self, cfg: CaptureSettings, kind: str, api: int) -> None:
        """``kind`` names it in messages; ``api`` is the OpenCV backend (``cv2.CAP_*``)."""
        self.kind = kind
        self.finite = self.kind == "video"
        self.description = f"{self.kind} {cfg.source}"
        target: Any = int(cfg.source) if str(cfg.source).isdigit() else str(cfg.source)
        if self.kind == "video" and not Path(str(cfg.source)).is_file():
            raise SourceFault(f"video file {cfg.source} does not exist")
        self.capture = cv2.VideoCapture(target, api)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceFault(f"{self.description} cannot be opened")
        if self.kind == "camera":
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
                (cv2.CAP_PROP_FPS, cfg.fps),
            ):
                if value is not None:
                    self.capture.set(prop, value)
            if cfg.exposure is not None:
                self.capture.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
                self.capture.set(cv2.CAP_PROP_EXPOSURE, cfg.exposure)
        self.pacer = Pacer(cfg.replay_fps if self.finite else 0)

    def read(self) -> np.ndarray | None:
        self.pacer.wait()
        ok, frame = self.capture.read()
        if ok and frame is not None:
            return frame
        if self.finite:
            return None
        raise SourceFault(f"{self.description} gave no frame (unplugged, or the stream dropped)")

    def skip(self, frames: int) -> None:
        """Dequeue ``frames`` frames without decoding them (``grab``): the ones queued before now."""
        for _ in range(frames):
            if not self.capture.grab():
                raise SourceFault(f"{self.description} gave no frame (unplugged, or the stream dropped)")

    def close(self) -> None:
        self.capture.release()


class FolderSource:
    """A folder of images replayed in name order, one image per frame: a recorded tray session."""

    finite = True

    def __init__(self, folder: str | Path, fps: float = 0.0) -> None:
        self.paths = list_images(folder)
        if not self.paths:
            raise SourceFault(f"folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.description = f"folder {folder} ({len(self.paths)} frames)"
        self.position = 0
        self.pacer = Pacer(fps)

    def read(self) -> np.ndarray | None:
        while self.position < len(self.paths):
            path = self.paths[self.position]
            self.position += 1
            self.pacer.wait()
            try:
                return read_image(path)
            except SmartbinError as exc:
                log.warning("skipped frame: %s", exc.problem)
        return None

    def close(self) -> None:
        pass
