"""Frame sources: a camera, a stream, a video file or a folder of images, behind one interface.

``camera.source`` in the config picks one:

| value                          | source                                   |
|--------------------------------|------------------------------------------|
| ``0``, ``1``, …                | camera by index (V4L2 on Linux)          |
| ``/dev/video0``                | camera by device path                    |
| ``… ! appsink``                | GStreamer pipeline (the Pi camera stack) |
| ``rtsp://…``, ``http://…``     | network stream                           |
| ``clip.mp4``                   | video file, replayed at ``replay_fps``   |
| ``frames/``                    | folder of images, replayed in name order |

(``smartbin demo`` adds a simulated tray camera, ``edge.camera.simulation``.)

:class:`Camera` wraps one for the daemon: a source that fails or turns black
is a fault, reopened with backoff; a dark or covered view is reported and its
frames are not classified.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Union

import cv2
import numpy as np

from edge.config import STREAM_SCHEMES, CameraConfig
from edge.errors import SmartbinError
from edge.images import IMAGE_SUFFIXES, list_images, read_image
from edge.retry import backoff_delay

log = logging.getLogger(__name__)

BLACK_LEVEL = 8  # brightest pixel of a frame with no signal at all


class SourceFault(Exception):
    """A source that cannot give frames now: the camera vanished, the stream dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameSource(Protocol):
    description: str
    finite: bool

    def read(self) -> np.ndarray | None:
        """The next BGR frame; ``None`` at the end of a finite source; raises SourceFault."""
        ...

    def close(self) -> None: ...


def source_kind(source: Union[int, str]) -> str:
    if isinstance(source, int) or str(source).isdigit():
        return "camera"
    text = str(source)
    if text.startswith("/dev/"):
        return "camera"
    if "!" in text:
        return "gstreamer"
    if text.startswith(STREAM_SCHEMES):
        return "stream"
    return "folder" if Path(text).is_dir() else "video"


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


def opencv_has_gstreamer() -> bool:
    return cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)


def source_fix(source: Union[int, str]) -> str:
    """What to check when this source fails."""
    if source_kind(source) == "gstreamer" and not opencv_has_gstreamer():
        return (
            f"this OpenCV ({cv2.__version__}, {Path(cv2.__file__).parent}) has no GStreamer, as the pip "
            "wheel has none: on the bin, sudo apt install python3-opencv, and deploy with "
            "deploy/flash.sh --system-opencv"
        )
    return {
        "camera": "check the cable and `ls /dev/video*`; the smartbin user must be in the video group; "
        "set camera.source to the right index or device",
        "gstreamer": "test the pipeline with gst-launch-1.0 (replace appsink with fakesink)",
        "stream": "check the URL, the network and the credentials (ffplay URL)",
        "video": "check camera.source: the file must exist and be a video OpenCV can decode",
        "folder": "check camera.source: the folder must hold images",
    }[source_kind(source)]


class CaptureSource:
    """OpenCV ``VideoCapture``: a camera, a GStreamer pipeline, a stream or a video file."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.kind = source_kind(cfg.source)
        self.finite = self.kind == "video"
        self.description = f"{self.kind} {cfg.source}"
        target: Any = int(cfg.source) if str(cfg.source).isdigit() else str(cfg.source)
        api = {
            "camera": cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY,
            "gstreamer": cv2.CAP_GSTREAMER,
            "stream": cv2.CAP_FFMPEG,
            "video": cv2.CAP_ANY,
        }[self.kind]
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


def open_source(cfg: CameraConfig) -> FrameSource:
    if source_kind(cfg.source) == "folder":
        return FolderSource(str(cfg.source), cfg.replay_fps)
    return CaptureSource(cfg)


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
