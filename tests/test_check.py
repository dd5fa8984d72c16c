"""`smartbin check`, `sort`, `demo`, and a bad config at `run`: the commands a technician types."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edge.camera.kinds import opencv_has_gstreamer
from edge.camera.simulation import empty_tray
from edge.service.cli import main
from edge.servo.emulator import MaestroEmulator
from tests.broker import Broker, Subscriber, free_port, mosquitto_path, wait_for
from tests.conftest import GARBAGE12, REPO, SHIPPED, real_photos

needs_broker = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it"
)


def smartbin(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture()
def frames(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for n in range(3):
        cv2.imwrite(str(folder / f"{n}.png"), empty_tray())
    return folder


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smartbin.yaml"
    path.write_text(text)
    return path


@needs_broker
def test_check_passes_every_part_when_each_is_there(tmp_path, frames, capsys):
    broker = Broker(tmp_path).start()
    emulator = MaestroEmulator()
    try:
        config = write(
            tmp_path,
            f"camera: {{source: {frames}}}\nservo: {{port: {emulator.port}}}\n"
            f"ledger: {{path: {tmp_path / 'ledger.db'}}}\nmqtt: {{host: 127.0.0.1, port: {broker.port}}}\n",
        )
        assert main(["check", "--config", str(config)]) == 0
    finally:
        emulator.stop()
        broker.stop()
    out = capsys.readouterr().out
    for part in ("config", "model", "ledger", "camera", "servo", "mqtt tcp", "mqtt acl"):
        assert f"ok    {part}" in out
    assert "640x480 frames" in out and "FAIL" not in out


def test_check_names_each_missing_part_and_its_fix(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED, bundle)
    with open(bundle / "model.tflite", "r+b") as f:
        f.seek(5000)
        f.write(b"\0" * 64)
    config = write(
        tmp_path,
        f"model: {{bundle: {bundle}}}\ncamera: {{source: /dev/video99}}\n"
        f"servo: {{port: {tmp_path / 'no-such-port'}}}\nledger: {{path: {tmp_path / 'ledger.db'}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n",
    )
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  model" in out and "sha256" in out
    assert "ok    ledger" in out
    assert "FAIL  camera  camera /dev/video99 cannot be opened" in out and "video group" in out
    assert "FAIL  servo" in out and "does not exist" in out and "/dev/serial/by-id" in out
    assert "FAIL  mqtt tcp" in out and "is the broker running" in out


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer (the pip wheel has not)")
def test_a_gstreamer_camera_on_the_pip_opencv_says_how_to_get_one(tmp_path, capsys):
    config = write(tmp_path, 'camera: {source: "videotestsrc ! videoconvert ! appsink"}\n')
    assert main(["check", "--config", str(config), "--only", "camera"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  camera" in out and "has no GStreamer" in out and "flash.sh --system-opencv" in out


def test_check_of_a_malformed_config_names_the_key(tmp_path, capsys):
    config = write(tmp_path, "trigger: {area: 3}\n")
    assert main(["check", "--config", str(config), "--only", "model"]) == 1
    assert "FAIL  config" in capsys.readouterr().out


def test_run_refuses_a_broken_config_with_the_key_and_the_fix(tmp_path):
    config = write(tmp_path, "servo: {min_us: 2500}\n")
    result = smartbin("run", "--config", str(config))
    assert result.returncode == 2
    assert "servo.min_us (2500) is not below servo.max_us" in result.stderr and "fix:" in result.stderr


def test_sort_without_a_running_daemon_says_so(tmp_path, capsys):
    config = write(tmp_path, f"ledger: {{path: {tmp_path / 'ledger.db'}}}\n")
    assert main(["sort", "--config", str(config)]) == 2
    assert "no running smartbin found" in capsys.readouterr().err
    (tmp_path / "smartbin.pid").write_text("999999\n")
    assert main(["sort", "--config", str(config)]) == 2
    assert "is not running" in capsys.readouterr().err


def test_sort_asks_the_running_daemon_to_sort_now(tmp_path, frames):
    for n in range(3, 400):
        os.link(frames / "0.png", frames / f"{n:03d}.png")  # a long, empty recording
    emulator = MaestroEmulator()
    config = write(
        tmp_path,
        f"camera: {{source: {frames}, replay_fps: 20}}\ntrigger: {{mode: manual}}\n"
        f"servo: {{port: {emulator.port}, dwell_s: 0.01}}\nledger: {{path: {tmp_path / 'ledger.db'}}}\n"
        f"mqtt: {{port: {free_port()}}}\nsorting: {{unknown: fallback}}\n",  # the bare tray: unknown
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "smartbin.pid").exists(), timeout_s=60, what="the pid file")
        moves = lambda: len([f for f in emulator.commands if f[0] == 0x84])  # noqa: E731
        wait_for(lambda: moves() == 1, what="home at start")
        assert smartbin("sort", "--config", str(config)).returncode == 0
        wait_for(lambda: moves() == 3, what="one move to a bin and back")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        emulator.stop()
    assert process.returncode == 0 and "sorted" in err


def test_demo_without_photos_or_broker_says_what_it_simulates(tmp_path):
    result = smartbin(
        "demo",
        "--synthetic",
        "2",
        "--fps",
        "0",
        "--broker",
        f"127.0.0.1:{free_port()}",
        "--state",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "simulated tray camera (2 drawn synthetic items): SYNTHETIC" in out
    assert "a Pololu Maestro emulated on /dev/pts/" in out
    assert "events wait in the ledger's outbox" in out
    assert "2 items sorted" in out and "messages wait in the outbox" in out


@needs_broker
@pytest.mark.skipif(not GARBAGE12.is_dir(), reason=f"real photos absent: {GARBAGE12}")
def test_demo_on_real_photos_publishes_to_a_broker(tmp_path):
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port, "smartbin/demo/#")
    photos = [str(p) for label in ("battery", "paper") for p in real_photos(label, 2)]
    try:
        result = smartbin("demo", "--source", *photos, "--fps", "0", "--broker", f"127.0.0.1:{broker.port}")
        assert result.returncode == 0, result.stderr[-2000:]
        wait_for(lambda: len(sub.event_ids()) == 4, what="4 events")
    finally:
        sub.close()
        broker.stop()
    assert "4 items sorted" in result.stdout and "against the photos' folder names" in result.stdout
    assert f"broker 127.0.0.1:{broker.port}" in result.stdout
