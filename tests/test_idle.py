"""An idle bin sleeps: after the tray has been empty and still for trigger.idle_after_s, frames are read
idle_fps times a second; the first change, or a command, brings back the full rate, and an item that
lands while the bin is idle is sorted as usual."""

from __future__ import annotations

import logging
import time

from edge.camera.idle import IdlePace
from edge.camera.simulation import SimulatedTray
from edge.ledger import Ledger
from edge.service.daemon import Daemon
from tests.broker import wait_for
from tests.test_daemon import Running, bin_moves, config_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_after_a_quiet_while_and_awake_at_the_first_change():
    clock = Clock()
    pace = IdlePace(after_s=30, fps=2, clock=clock)
    assert pace.update(True) is False and pace.period_s == 0.5
    clock.now = 29.9
    assert pace.update(True) is False
    clock.now = 30.0
    assert pace.update(True) is True
    assert pace.update(False) is False  # a change: awake at once
    clock.now = 50.0
    assert pace.update(True) is False  # quiet again, counted afresh
    clock.now = 80.0
    assert pace.update(True) is True
    pace.wake()  # a command
    assert pace.idle is False and pace.update(True) is False


def test_idle_after_s_zero_never_idles():
    clock = Clock()
    pace = IdlePace(after_s=0, fps=2, clock=clock)
    clock.now = 10**6
    assert pace.update(True) is False and pace.idle is False


class CountingTray(SimulatedTray):
    """The simulated camera, counting the frames the daemon reads and never ending by itself."""

    def __init__(self) -> None:
        super().__init__(synthetic=1, fps=50, lead_frames=10**9)
        self.reads = 0

    def read(self):
        self.reads += 1
        return super().read()


def test_an_idle_bin_reads_few_frames_and_sorts_an_item_dropped_meanwhile(tmp_path, emulator, caplog):
    caplog.set_level(logging.INFO)
    config = config_for(tmp_path, emulator.port)
    config.trigger.idle_after_s, config.trigger.idle_fps = 0.5, 4.0
    tray = CountingTray()
    emulator.on_move = tray.servo_moved
    seen = []
    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.started and daemon.idle.idle, what="the bin idle")
    before = tray.reads
    wait_for(lambda: tray.reads >= before + 8, what="eight idle frames")
    frames = tray.reads
    time.sleep(1.0)
    assert tray.reads - frames <= 4 + 2  # idle_fps, not the camera's 50
    tray.drop_next()
    wait_for(lambda: seen, what="the item dropped while idle sorted", timeout_s=30)
    assert running.stop() == 0
    assert "back to the full frame rate" in caplog.text
    assert len(seen) == 1 and bin_moves(emulator, config) == [seen[0].bin]
    assert Ledger(config.ledger.path).counts() == {seen[0].bin: 1}
