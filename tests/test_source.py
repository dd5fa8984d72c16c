"""Frame sources: real files (images, a video written here), a camera that is not there, and faults."""

import logging

import cv2
import numpy as np
import pytest

from edge.camera.kinds import CAMERA_KINDS, open_source, source_kind
from edge.camera.simulation import empty_tray
from edge.camera.sources import CaptureSource, FolderSource, SourceFault
from edge.camera.supervisor import Camera, dark_view
from edge.config import CameraConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame(value: int) -> np.ndarray:
    return np.full((48, 64, 3), value, np.uint8)


@pytest.mark.parametrize(
    "source, kind",
    [
        (0, "camera"),
        ("2", "camera"),
        ("/dev/video0", "camera"),
        ("libcamerasrc ! video/x-raw,width=640 ! videoconvert ! appsink", "gstreamer"),
        ("rtsp://cam.local/stream", "stream"),
        ("clip.mp4", "video"),
    ],
)
def test_the_source_kind_follows_the_value(source, kind):
    assert source_kind(source) == kind


def test_a_kind_added_to_the_registry_opens_its_sources_and_names_its_fix(monkeypatch, tmp_path):
    """A new camera kind is one registry entry: the opener, the fix and the config reference follow."""
    from edge.camera import kinds
    from edge.config import Config
    from edge.schema import describe

    opened = []
    fake = kinds.CameraKind(
        "test", "a test:// camera", lambda s: str(s).startswith("test://"), opened.append, "fix it"
    )
    monkeypatch.setattr(kinds, "CAMERA_KINDS", {"test": fake, **kinds.CAMERA_KINDS})
    open_source(CameraConfig(source="test://one"))
    assert [cfg.source for cfg in opened] == ["test://one"]
    assert kinds.source_fix("test://one") == "fix it" and source_kind("clip.mp4") == "video"
    reference = describe(Config)
    assert all(kind.help in reference for kind in CAMERA_KINDS.values())


def test_a_folder_replays_in_name_order_and_skips_unreadable_frames(tmp_path, caplog):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), frame(60 + i))
    (tmp_path / "frame1b.png").write_bytes(b"truncated")
    source = open_source(CameraConfig(source=str(tmp_path), replay_fps=0))
    assert isinstance(source, FolderSource) and source.finite
    values = []
    while (f := source.read()) is not None:
        values.append(int(f[0, 0, 0]))
    assert values == [60, 61, 62]
    assert "frame1b.png" in caplog.text


def test_a_video_file_is_replayed_to_its_end(tmp_path):
    path = tmp_path / "tray.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        writer.write(frame(20 * (i % 10) + 30))
    writer.release()
    source = open_source(CameraConfig(source=str(path), replay_fps=0))
    assert isinstance(source, CaptureSource) and source.finite
    frames = []
    while (f := source.read()) is not None:
        frames.append(f)
    source.close()
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)


def test_a_missing_camera_or_file_is_a_fault_that_names_it():
    with pytest.raises(SourceFault, match="/dev/video99 cannot be opened"):
        open_source(CameraConfig(source="/dev/video99"))
    with pytest.raises(SourceFault, match="nothere.mp4 does not exist"):
        open_source(CameraConfig(source="nothere.mp4"))


def test_dark_views_are_named_and_bright_ones_are_not():
    assert "too dark or lens covered" in dark_view(frame(5), 20)
    assert dark_view(empty_tray(), 20) is None


class Scripted:
    """A source that plays a script: frames, faults (exceptions) and the end."""

    finite = False
    description = "scripted camera"

    def __init__(self, script):
        self.script = list(script)

    def read(self):
        step = self.script.pop(0) if self.script else SourceFault("unplugged")
        if isinstance(step, Exception):
            raise step
        return step

    def close(self):
        pass


def test_the_camera_reopens_with_backoff_after_it_vanishes(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    opened = []
    scripts = [[frame(120), SourceFault("gave no frame")], [frame(130)]]

    def opener(cfg):
        if len(opened) == 1 and clock.now < 5:
            raise SourceFault("/dev/video0 cannot be opened")
        opened.append(1)
        return Scripted(scripts.pop(0))

    camera = Camera(CameraConfig(), opener, clock)
    assert camera.read() is not None
    assert camera.read() is None and camera.fault == "gave no frame"
    assert camera.read() is None  # backoff: no attempt yet
    clock.now = 2.0
    assert camera.read() is None and "cannot be opened" in camera.fault
    clock.now = 60.0
    assert int(camera.read()[0, 0, 0]) == 130
    assert camera.fault is None and camera.opened == 2
    assert caplog.text.count("camera fault") == 2 and "camera back" in caplog.text


def test_black_frames_make_a_fault_and_dark_frames_a_condition():
    clock = Clock()
    signal = Scripted([frame(0)] * 3 + [frame(10)])
    camera = Camera(CameraConfig(black_frames=3), lambda cfg: signal, clock)
    assert [camera.read() for _ in range(3)] == [None] * 3
    assert "black frames" in camera.fault
    clock.now = 100
    assert camera.read() is not None and camera.fault is None
    assert "too dark" in camera.condition
