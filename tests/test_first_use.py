"""What a first-time user meets: typos, empty folders, missing extras, stray files, other libraries' logs.

Each test runs the real command in a subprocess, as a user would type it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.ledger import Ledger, SortedItem
from edge.service.cli import EXTRAS
from tests.conftest import REPO, needs_data, real_photos

BIN = Path(sys.executable).parent


def smartbin(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "edge", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def drawn_photo(path: Path) -> Path:
    """A real, readable image (a drawn cup), where the test needs no particular item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((240, 320, 3), 200, np.uint8)
    cv2.circle(image, (160, 120), 60, (30, 90, 200), -1)
    cv2.imwrite(str(path), image)
    return path


def not_a_photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a text file renamed\n")
    return path


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "please report" not in result.stderr, result.stderr


# --- classify and eval: how many photos were read and skipped; none read is a failure ---------------


def test_classify_a_folder_without_photos_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = smartbin("classify", tmp_path / "empty")
    assert result.returncode == 2 and result.stdout == ""
    assert "has no photos (it is empty)" in result.stderr and "fix: give photos (.bmp" in result.stderr
    for name in ("a.txt", "b.txt"):
        (tmp_path / "notes" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "notes" / name).write_text("not a photo")
    result = smartbin("classify", tmp_path / "notes")
    assert result.returncode == 2 and result.stdout == ""
    assert "has no photos (only 2 other files: a.txt, b.txt)" in result.stderr
    no_traceback(result)


def test_classify_a_missing_file_is_a_usage_error_not_a_skipped_photo(tmp_path):
    photo = drawn_photo(tmp_path / "cup.jpg")
    result = smartbin("classify", photo, tmp_path / "cpu.jpg")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{tmp_path / 'cpu.jpg'} does not exist" in result.stderr and "skipped" not in result.stderr
    no_traceback(result)


def test_classify_says_what_it_read_and_skipped_and_fails_when_nothing_could_be_read(tmp_path):
    fake = not_a_photo(tmp_path / "fake.jpg")
    result = smartbin("classify", fake)
    assert result.returncode == 2 and result.stdout == ""  # no model line above nothing
    assert "no photo could be read: read 0 photos, skipped 1: cannot decode image" in result.stderr
    assert "fake.jpg" in result.stderr
    photo = drawn_photo(tmp_path / "cup.jpg")
    result = smartbin("classify", photo, fake)
    assert result.returncode == 1
    assert result.stdout.startswith("model household38-mnv2") and len(result.stdout.splitlines()) == 3
    assert "read 1 photo, skipped 1: cannot decode image" in result.stderr
    result = smartbin("classify", "--json", photo)
    assert result.returncode == 0 and json.loads(result.stdout)["path"] == str(photo)
    assert "read 1 photo, skipped 0" in result.stderr


def test_eval_says_what_it_read_and_skipped_and_fails_when_nothing_could_be_read(tmp_path):
    data = tmp_path / "data"
    not_a_photo(data / "battery" / "fake.jpg")
    result = smartbin("eval", "--data", data)
    assert result.returncode == 2
    assert f"no photo in {data} could be read: read 0 photos, skipped 1: cannot decode" in result.stderr
    no_traceback(result)
    for n in range(2):
        drawn_photo(data / "battery" / f"cup{n}.png")
    result = smartbin("eval", "--data", data, "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["item"]["n"] == 2
    assert "read 2 photos, skipped 1: cannot decode image" in result.stderr


# --- read-only commands leave no file ------------------------------------------------------------------


def test_check_and_counts_create_no_file_in_the_working_folder(tmp_path):
    check = smartbin("check", cwd=tmp_path)
    assert f"ok    ledger  no ledger yet at {tmp_path / 'ledger.db'}" in check.stdout, check.stdout
    counts = smartbin("counts", cwd=tmp_path)
    assert counts.returncode == 2 and f"no ledger yet at {tmp_path / 'ledger.db'}" in counts.stderr
    assert "--config" in counts.stderr
    assert os.listdir(tmp_path) == []


def sorted_item(n: int) -> SortedItem:
    return SortedItem(f"id-{n}", 1.7e9 + n, "battery", "hazardous", 0.9, False, 40.0, "m")


def test_counts_reads_a_ledger_without_writing_beside_it(tmp_path):
    """A stopped service's ledger (no -wal file), then a running one's (its WAL holds the last item)."""
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.record(sorted_item(0))
    ledger.close()
    assert os.listdir(tmp_path) == ["ledger.db"]
    before = (tmp_path / "ledger.db").stat().st_mtime_ns
    counts = smartbin("counts", "--json", cwd=tmp_path)
    assert counts.returncode == 0 and json.loads(counts.stdout)["counts"] == {"hazardous": 1}
    assert os.listdir(tmp_path) == ["ledger.db"] and (tmp_path / "ledger.db").stat().st_mtime_ns == before
    running = Ledger(tmp_path / "ledger.db")
    try:
        running.record(sorted_item(1))
        files = sorted(os.listdir(tmp_path))
        counts = smartbin("counts", "--json", cwd=tmp_path)
        assert counts.returncode == 0 and json.loads(counts.stdout)["counts"] == {"hazardous": 2}
        assert sorted(os.listdir(tmp_path)) == files
    finally:
        running.close()


# --- config --file: a refused key leaves no new file ---------------------------------------------------


def test_config_set_of_a_refused_key_leaves_no_new_file(tmp_path):
    result = smartbin("config", "--file", "new.yaml", "--set", "mqtt.hots=x", cwd=tmp_path)
    assert result.returncode == 2 and "new.yaml: unknown key mqtt.hots" in result.stderr
    assert ".new" not in result.stderr  # the draft's name never reaches the user
    assert os.listdir(tmp_path) == []
    result = smartbin("config", "--file", "new.yaml", "--set", "mqtt.host=broker.lan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == ["new.yaml"] and "host: broker.lan" in (tmp_path / "new.yaml").read_text()


# --- a missing optional dependency names the pip install that brings it --------------------------------


def without(tmp_path: Path, *modules: str) -> dict:
    """An environment in which ``modules`` cannot be imported, as in an install without their extra."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    )
    return {**os.environ, "PYTHONPATH": str(shim)}


def test_train_without_the_train_extra_names_the_pip_install(tmp_path):
    train = BIN / "smartbin-train"
    if not train.exists():
        pytest.skip(f"{train} is not installed (pip install -e .)")
    result = subprocess.run(
        [str(train), "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        env=without(tmp_path, "keras", "tensorflow"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "the Python module 'keras' is not installed" in result.stderr
    assert "pip install 'smartbin[train]'" in result.stderr and "scripts/setup edge,train" in result.stderr
    no_traceback(result)


def test_eval_plots_and_config_set_without_their_extras_name_the_pip_install(tmp_path):
    drawn_photo(tmp_path / "data" / "battery" / "cup.png")
    plots = ["eval", "--data", tmp_path / "data", "--plots", tmp_path / "plots"]
    result = smartbin(*plots, env=without(tmp_path, "matplotlib"))
    assert result.returncode == 2 and "pip install 'smartbin[plots]'" in result.stderr, result.stderr
    no_traceback(result)
    config = ["config", "--file", tmp_path / "c.yaml", "--set", "device_id=bin-07"]
    result = smartbin(*config, env=without(tmp_path, "ruamel", "ruamel.yaml"))
    assert result.returncode == 2 and "pip install 'smartbin[edge]'" in result.stderr, result.stderr
    no_traceback(result)


def test_every_extra_named_is_one_pyproject_defines():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)


# --- OpenCV's and LiteRT's own log lines stay out, unless --verbose ------------------------------------


def test_other_libraries_log_lines_stay_out_of_the_output_unless_verbose(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("camera: {source: /dev/video99}\n")
    photo = drawn_photo(tmp_path / "cup.jpg")
    quiet = smartbin("check", "--config", config, "--only", "model,camera")
    classify = smartbin("classify", photo)
    for result in (quiet, classify):
        output = result.stdout + result.stderr
        assert "XNNPACK" not in output and "INFO: Created" not in output, output
        assert "[ WARN" not in output and "global cap" not in output, output
    assert "FAIL  camera  camera /dev/video99 cannot be opened" in quiet.stdout
    loud = smartbin("-v", "check", "--config", config, "--only", "model,camera")
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in loud.stderr
    assert "[ WARN" in loud.stderr


# --- review: a folder without frames says why, and where frames come from -----------------------------


def test_review_of_a_folder_without_frames_says_how_frames_get_there(tmp_path):
    (tmp_path / "review").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "review", str(tmp_path / "review"), "--no-browser", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not lines or "Ctrl-C stops" not in lines[-1]:
            line = process.stdout.readline()
            assert line, f"review ended early: {''.join(lines)}"
            lines.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    out = "".join(lines)
    assert "has no frames to label" in out and "deploy/flash.sh --pull-review" in out
    assert "sorting.review_folder" in out and "0 frames in" in out
    assert "review folder" in err and "has no frames" in err  # and in the log
    missing = smartbin("review", tmp_path / "reveiw", "--no-browser")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "--pull-review" in missing.stderr


@needs_data
def test_classify_on_real_photos_and_a_renamed_text_file(tmp_path):
    photos = real_photos("battery", 2)
    fake = not_a_photo(tmp_path / "fake.jpg")
    result = smartbin("classify", *photos, fake)
    assert result.returncode == 1 and result.stdout.count("hazardous") == 2
    assert "read 2 photos, skipped 1" in result.stderr and "fake.jpg" in result.stderr
