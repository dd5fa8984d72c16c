"""The registry of camera kinds: what a ``camera.source`` value opens, and what to check when it fails.

| value                          | kind        | source                                   |
|--------------------------------|-------------|------------------------------------------|
| ``0``, ``1``, …, ``/dev/video0`` | camera    | camera by index or device (V4L2 on Linux)|
| ``… ! appsink``                | gstreamer   | GStreamer pipeline (the Pi camera stack) |
| ``rtsp://…``, ``http://…``     | stream      | network stream                           |
| ``frames/``                    | folder      | folder of images, replayed in name order |
| ``clip.mp4``                   | video       | video file, replayed at ``replay_fps``   |

The first kind whose ``matches`` takes the value opens it; ``video`` takes
what is left. A new kind is one entry in :data:`CAMERA_KINDS` (before
``video``), with its opener. ``smartbin demo`` adds a simulated tray camera
(edge.camera.simulation) by passing its own opener to the daemon.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import cv2

from edge.camera.sources import CaptureSettings, CaptureSource, FolderSource, FrameSource

Source = Union[int, str]
# The network streams handed to OpenCV as they are.
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://")


@dataclass(frozen=True)
class CameraKind:
    name: str
    help: str  # what the config reference says about it
    matches: Callable[[str], bool]  # given camera.source as text: an index 0 is "0"
    open: Callable[[CaptureSettings], FrameSource]
    fix: str  # what to check when it fails


def opencv_has_gstreamer() -> bool:
    return cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)


def _capture(kind: str, api: int) -> Callable[[CaptureSettings], FrameSource]:
    return lambda cfg: CaptureSource(cfg, kind, api)


CAMERA_KINDS: dict[str, CameraKind] = {
    kind.name: kind
    for kind in (
        CameraKind(
            "camera",
            "camera index (0), device (/dev/video0)",
            lambda s: s.isdigit() or s.startswith("/dev/"),
            _capture("camera", cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY),
            "check the cable and `ls /dev/video*`; the smartbin user must be in the video group; "
            "set camera.source to the right index or device",
        ),
        CameraKind(
            "gstreamer",
            "GStreamer pipeline (ending in appsink)",
            lambda s: "!" in s,
            _capture("gstreamer", cv2.CAP_GSTREAMER),
            "test the pipeline with gst-launch-1.0 (replace appsink with fakesink)",
        ),
        CameraKind(
            "stream",
            "rtsp:// URL",
            lambda s: s.startswith(STREAM_SCHEMES),
            _capture("stream", cv2.CAP_FFMPEG),
            "check the URL, the network and the credentials (ffplay URL)",
        ),
        CameraKind(
            "folder",
            "a folder of images replayed in name order",
            lambda s: Path(s).is_dir(),
            lambda cfg: FolderSource(str(cfg.source), cfg.replay_fps),
            "check camera.source: the folder must hold images",
        ),
        CameraKind(
            "video",
            "a video file",
            lambda s: True,
            _capture("video", cv2.CAP_ANY),
            "check camera.source: the file must exist and be a video OpenCV can decode",
        ),
    )
}


def sources_help() -> str:
    """What ``camera.source`` takes, for the config reference."""
    helps = [kind.help for kind in CAMERA_KINDS.values()]
    return ", ".join(helps[:-1]) + ", or " + helps[-1]


def camera_kind(source: Source) -> CameraKind:
    return next(kind for kind in CAMERA_KINDS.values() if kind.matches(str(source)))


def source_kind(source: Source) -> str:
    return camera_kind(source).name


def open_source(cfg: CaptureSettings) -> FrameSource:
    """Open ``camera.source``; a source that cannot give frames raises SourceFault."""
    return camera_kind(cfg.source).open(cfg)


def source_fix(source: Source) -> str:
    """What to check when this source fails."""
    kind = camera_kind(source)
    if kind.name == "gstreamer" and not opencv_has_gstreamer():
        return (
            f"this OpenCV ({cv2.__version__}, {Path(cv2.__file__).parent}) has no GStreamer, as the pip "
            "wheel has none: on the bin, sudo apt install python3-opencv, and deploy with "
            "deploy/flash.sh --system-opencv"
        )
    return kind.fix
