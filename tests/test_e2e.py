"""End to end: `smartbin run` as a process, on a recorded tray session made of real photos, with a
Maestro emulated on a real pty, a real Mosquitto, and a real systemd notify socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config
from edge.ledger import Ledger
from edge.servo.emulator import MaestroEmulator
from tests.broker import Subscriber, mosquitto_path, wait_for
from tests.conftest import GARBAGE12, REPO
from tests.test_daemon import NotifySocket, bin_moves
from tests.tray import choose_sure_photos, folder_bin, record_session, write_config

pytestmark = [
    pytest.mark.skipif(not GARBAGE12.is_dir(), reason=f"real photos absent: {GARBAGE12}"),
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it"),
]


def start(config: Path, notify: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if notify:
        env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="500000")
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def sure_photos() -> list[Path]:
    return choose_sure_photos()


@pytest.fixture()
def session(tmp_path, sure_photos):
    return sure_photos, record_session(tmp_path / "frames", sure_photos)


def test_each_photo_is_one_move_to_its_folder_labels_bin_and_one_event(tmp_path, broker, session):
    photos, _ = session
    emulator = MaestroEmulator()
    config = write_config(tmp_path, tmp_path / "frames", emulator.port, broker, replay_fps=0)
    sub = Subscriber(broker.port, "smartbin/e2e/#")
    listener = NotifySocket(tmp_path / "notify.sock")
    process = start(config, tmp_path / "notify.sock")
    _, err = process.communicate(timeout=240)
    emulator.stop()
    assert process.returncode == 0, err[-3000:]
    assert bin_moves(emulator, Config()) == [folder_bin(p) for p in photos]
    ledger = Ledger(tmp_path / "state" / "ledger.db")
    counts = ledger.counts()
    assert sum(counts.values()) == len(photos)
    wait_for(lambda: len(sub.event_ids()) == len(photos), what="one event per photo")
    assert len(set(sub.event_ids())) == len(photos)
    assert {b: int(sub.latest(f"/count/{b}")) for b in counts} == counts
    assert [e.id for e in ledger.events(100)][::-1] == sub.event_ids()
    fields = listener.fields()
    listener.close()
    assert fields.count("READY=1") == 1 and "WATCHDOG=1" in fields and "STOPPING=1" in fields
    assert sub.latest("/availability") == b"offline"
    sub.close()


def test_sigterm_mid_run_exits_cleanly_with_the_servo_home_and_offline_published(tmp_path, broker, session):
    photos, _ = session
    emulator = MaestroEmulator()
    config = write_config(tmp_path, tmp_path / "frames", emulator.port, broker, replay_fps=25)
    sub = Subscriber(broker.port, "smartbin/e2e/#")
    process = start(config)
    wait_for(lambda: len(sub.event_ids()) >= 3, timeout_s=120, what="a few items sorted")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    emulator.stop()
    assert process.returncode == 0, err[-3000:]
    targets = [f[2] | f[3] << 7 for f in emulator.commands if f[0] == 0x84]
    assert targets[-1] == 1500 * 4
    ledger = Ledger(tmp_path / "state" / "ledger.db")
    total = sum(ledger.counts().values())
    assert 3 <= total < len(photos)
    assert ledger.pending() == []  # flushed to the broker before exit
    wait_for(lambda: len(sub.event_ids()) == total, what="every counted item published")
    assert sub.latest("/availability") == b"offline"
    assert "stopped:" in err
    sub.close()


def test_sighup_reloads_and_refuses_a_broken_config(tmp_path, broker, session):
    emulator = MaestroEmulator()
    config = write_config(tmp_path, tmp_path / "frames", emulator.port, broker, replay_fps=10)
    process = start(config)
    sub = Subscriber(broker.port, "smartbin/e2e/#")
    wait_for(lambda: sub.latest("/availability") == b"online", timeout_s=60, what="online")
    good = config.read_text()
    config.write_text(good + "model: {threshold: 2}\n")
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(sub.event_ids()) >= 1, timeout_s=60, what="still sorting after a refused reload")
    config.write_text(good + "model: {threshold: 0.7}\n")
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(sub.event_ids()) >= 3, timeout_s=60, what="sorting after a reload")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    emulator.stop()
    sub.close()
    assert process.returncode == 0
    assert "reload refused, the running config is kept" in err and "model.threshold = 2" in err
    assert "threshold 0.70" in err
