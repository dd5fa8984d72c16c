"""`smartbin demo` on what a user gives it: a typo, a renamed text file, photos from labelled folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera.simulation import SimulatedTray
from tests.broker import free_port
from tests.conftest import needs_data, real_photos


def demo(tmp_path: Path, *sources: Path | str, timeout: float = 120) -> subprocess.CompletedProcess:
    args = ["--fps", "0", "--dwell", "0.05", "--broker", f"127.0.0.1:{free_port()}", "--state", "state"]
    return subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--source", *map(str, sources), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,  # a demo that waits for photos it cannot show fails here, never hangs the suite
    )


def text_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a photo\n")
    return path


def drawn(path: Path, colour: tuple[int, int, int] = (30, 90, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((240, 320, 3), 220, np.uint8)
    cv2.circle(image, (160, 120), 70, colour, -1)
    cv2.imwrite(str(path), image)
    return path


BAD_SOURCES = {
    "a typo": (lambda tmp: "nope/", "--source: nope/ does not exist", "check the path"),
    "a text file renamed .jpg": (
        lambda tmp: text_file(tmp / "photo.jpg"),
        "no photo could be read (read 0 photos, skipped 1: cannot decode image",
        "give photos (.bmp",
    ),
    "an empty folder": (
        lambda tmp: (tmp / "empty").mkdir() or "empty",
        "--source: folder empty has no photos (it is empty)",
        "give photos (.bmp",
    ),
    "a folder of text files": (
        lambda tmp: text_file(tmp / "notes" / "a.txt").parent,
        "has no photos (only 1 other file: a.txt)",
        "give photos (.bmp",
    ),
    "a text file that is no video": (
        lambda tmp: text_file(tmp / "notes.txt"),
        "is neither a photo (.bmp",
        "give photos or folders of photos, or one video file",
    ),
}


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_demo_checks_its_source_before_it_starts(tmp_path, case):
    make, problem, fix = BAD_SOURCES[case]
    result = demo(tmp_path, make(tmp_path), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stderr and f"fix: {fix}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "please report" not in result.stderr
    assert "items sorted" not in result.stdout and "simulated hardware" not in result.stdout
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_the_tray_skips_a_photo_it_cannot_read_and_goes_on(tmp_path):
    """Read once before the demo starts, a photo may still go bad before it is laid on the tray."""
    photos = [
        drawn(tmp_path / "a.png"),
        text_file(tmp_path / "b.jpg"),
        drawn(tmp_path / "c.png", (200, 40, 40)),
    ]
    tray = SimulatedTray(photos, fps=0, gap_frames=2, lead_frames=2)
    laid = []
    for _ in range(100):
        if tray.read() is None:
            break
        if tray.current is not None:
            laid.append(tray.current_name)
            tray.servo_moved(0, 2000.0)  # tip it, and back home
            tray.servo_moved(0, 1500.0)
    else:
        pytest.fail("the tray never ran out of items")
    assert laid == ["a.png", "c.png"]
    assert len(tray.skipped) == 1 and "b.jpg" in tray.skipped[0]


@needs_data
def test_demo_rows_show_each_photos_label_and_bin_and_mark_a_wrong_bin(tmp_path):
    """Two batteries filed as battery, one filed as paper (the bin's hazardous is then the wrong bin for
    that folder), and a text file renamed .jpg: read 3, skipped 1."""
    first, second = real_photos("battery", 2)
    for photo in (first, second):
        (tmp_path / "photos" / "battery").mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / "battery" / photo.name).symlink_to(photo)
    (tmp_path / "photos" / "paper").mkdir()
    (tmp_path / "photos" / "paper" / "filed-as-paper.jpg").symlink_to(first)
    text_file(tmp_path / "photos" / "paper" / "renamed.jpg")
    result = demo(tmp_path, tmp_path / "photos")
    assert result.returncode == 1, result.stdout + result.stderr  # a photo was skipped
    out = result.stdout
    assert "(3 photos); read 3 photos, skipped 1: cannot decode image" in out and "renamed.jpg" in out
    assert "its label" in out and "its bin" in out
    rows = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 3, out
    for row in rows[:2]:
        assert row.split()[2:5] == ["battery", "hazardous", "→"] and "WRONG BIN" not in row, out
    wrong = rows[2]
    assert wrong.split()[1:5] == ["filed-as-paper.jpg", "paper", "recyclable", "→"], out
    assert "hazardous" in wrong and "WRONG BIN" in wrong, out
    assert "bin right 2/3" in out and "1 photo skipped" in out
