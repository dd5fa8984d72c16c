"""Each item that falls into a bin is counted once, and nothing else is: the daemon in-process with the
shipped model, a simulated tray, a controller emulated on a real pty and a real ledger.

The power-cut harness (test_power_cut.py) kills a real process; these tests take each guarantee alone:
a move left open, the remembered empty tray, manual sorts of an empty tray, a failed return home, a
full disk, an exception in the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

import edge.camera.supervisor
import edge.service.daemon
from edge.camera.simulation import SimulatedTray
from edge.ledger import Ledger, SortedItem
from edge.paths import tray_file
from edge.service.daemon import Daemon, resolve_move
from edge.servo.emulator import LineEmulator, MaestroEmulator
from tests.broker import Subscriber, wait_for
from tests.conftest import fill
from tests.test_daemon import Running, bin_moves, config_for, needs_broker


def open_move(config, bin_id: str = "kitchen") -> SortedItem:
    """What the ledger holds after a power cut between the write-ahead and the count."""
    record = SortedItem("a" * 32, time.time(), "banana", bin_id, 0.9, False, 0.0, "household38-mnv2")
    ledger = Ledger(config.ledger.path)
    ledger.begin_move(record)
    ledger.close()
    return record


def learn_the_empty_tray(config, emulator) -> None:
    """A first run over an empty tray: it learns the tray and keeps it in the state folder."""
    Daemon(config, opener=lambda cfg: SimulatedTray(synthetic=0, fps=0)).run()
    assert tray_file(config).exists()


@pytest.mark.parametrize(
    ("at_bin", "shows_item", "outcome"),
    [
        (True, False, "counted"),  # the controller holds the tray at the bin: it tipped
        (True, None, "counted"),
        (True, True, "counted"),  # the controller is the witness of the move; a new item may be there
        (None, False, "counted"),  # no controller answer, the item has left the tray
        (False, True, "resort"),  # never tipped: still on the tray, sorted again
        (None, True, "resort"),
        (False, False, "parked"),  # not at the bin and gone: taken off by hand? a person should look
        (False, None, "parked"),
        (None, None, "parked"),  # nothing can tell
    ],
)
def test_an_open_move_is_resolved_from_the_controller_and_the_tray(at_bin, shows_item, outcome):
    assert resolve_move(at_bin, shows_item) == outcome


@pytest.mark.parametrize("protocol", ["maestro", "line"])
def test_a_move_open_at_start_is_counted_when_the_controller_holds_the_tray_at_its_bin(
    tmp_path, protocol, caplog
):
    emulator = MaestroEmulator() if protocol == "maestro" else LineEmulator()
    config = config_for(tmp_path, emulator.port)
    config.servo.protocol = protocol
    record = open_move(config, "kitchen")
    kitchen = config.servo.bins["kitchen"]
    if protocol == "maestro":
        emulator.positions[0] = round(kitchen * 4)
    else:
        emulator.positions[0] = round(kitchen)
    Daemon(config, opener=lambda cfg: SimulatedTray(synthetic=0, fps=0)).run()
    emulator.stop()
    ledger = Ledger(config.ledger.path)
    assert ledger.counts() == {"kitchen": 1} and ledger.moving() == []
    assert [e.id for e in ledger.events()] == [record.id]
    assert "the bin's position" in caplog.text and "counted once, now" in caplog.text


def test_a_move_open_at_start_with_the_item_still_on_the_tray_is_sorted_again_once(
    tmp_path, emulator, caplog
):
    caplog.set_level(logging.INFO)
    config = config_for(tmp_path, emulator.port)
    learn_the_empty_tray(config, emulator)
    open_move(config, "kitchen")  # the power went before the servo was commanded: it is still home
    tray = SimulatedTray(synthetic=1, fps=0, lead_frames=0)  # the item is on the tray from the first frame
    emulator.on_move = tray.servo_moved
    seen = []
    Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append).run()
    assert "it will be sorted again" in caplog.text
    ledger = Ledger(config.ledger.path)
    assert len(seen) == 1 and sum(ledger.counts().values()) == 1 and ledger.parked_items() == 0
    assert bin_moves(emulator, config) == [seen[0].bin] and ledger.moving() == []


def test_a_move_open_at_start_with_the_tray_home_and_empty_is_parked_not_counted(tmp_path, emulator, caplog):
    config = config_for(tmp_path, emulator.port)
    learn_the_empty_tray(config, emulator)
    open_move(config, "hazardous")
    Daemon(config, opener=lambda cfg: SimulatedTray(synthetic=0, fps=0)).run()
    ledger = Ledger(config.ledger.path)
    assert ledger.counts() == {} and ledger.parked_items() == 1 and ledger.moving() == []
    assert "recorded as parked" in caplog.text


def test_an_item_on_the_tray_at_start_is_sorted_not_learned_as_the_tray(tmp_path, emulator, caplog):
    caplog.set_level(logging.INFO)
    config = config_for(tmp_path, emulator.port)
    learn_the_empty_tray(config, emulator)
    tray = SimulatedTray(synthetic=1, fps=0, lead_frames=0)
    emulator.on_move = tray.servo_moved
    seen = []
    Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append).run()
    assert len(seen) == 1 and "using the empty tray remembered" in caplog.text
    # without the remembered tray the item would have been learned as the tray and never sorted
    tray_file(config).unlink()
    tray = SimulatedTray(synthetic=1, fps=0, lead_frames=0)
    emulator.on_move = tray.servo_moved
    seen = []
    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.ready and daemon.trigger.state.name == "EMPTY", what="the tray learned")
    time.sleep(0.5)  # an item the trigger saw would be sorted by now
    assert running.stop() == 0 and seen == []


def test_a_remembered_tray_for_another_view_is_not_used(tmp_path, emulator, caplog):
    caplog.set_level(logging.INFO)
    config = config_for(tmp_path, emulator.port)
    learn_the_empty_tray(config, emulator)
    config.trigger.roi = [0.1, 0.1, 0.8, 0.8]
    Daemon(config, opener=lambda cfg: SimulatedTray(synthetic=0, fps=0)).run()
    assert "another frame size or ROI" in caplog.text
    assert "using the empty tray remembered" not in caplog.text


def test_a_failed_return_home_keeps_the_item_counted_and_never_tips_again(tmp_path, caplog):
    tray = SimulatedTray(synthetic=1, fps=0)

    def moved(channel, pulse_us):
        tray.servo_moved(channel, pulse_us)
        if tray.tipped:
            emulator.mode = "stuck"  # the tray tipped; it never gets back home

    emulator = MaestroEmulator(on_move=moved)
    config = config_for(tmp_path, emulator.port)
    seen = []
    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: "did not come back home" in caplog.text, what="the failed return home")
    time.sleep(1.0)  # the daemon keeps trying to bring the tray home; it must never tip again
    assert running.stop() == 0
    emulator.stop()
    ledger = Ledger(config.ledger.path)
    assert len(seen) == 1 and sum(ledger.counts().values()) == 1 and ledger.parked_items() == 0
    assert bin_moves(emulator, config) == [seen[0].bin]  # one tip, never repeated
    assert "is counted; the tray did not come back home" in caplog.text


@contextlib.contextmanager
def signals_restored():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@needs_broker
def test_every_manual_sort_of_an_empty_tray_is_refused_and_never_counted(tmp_path, broker, caplog):
    tray = SimulatedTray(synthetic=0, fps=30, lead_frames=10**9)  # an empty tray, for as long as it takes
    emulator = LineEmulator(on_move=tray.servo_moved)
    config = config_for(tmp_path, emulator.port, broker.port)
    config.servo.protocol = "line"
    daemon = Daemon(config, opener=lambda cfg: tray)
    with signals_restored():
        daemon.install_signals()
        running = Running(daemon)
        sub = Subscriber(broker.port, "smartbin/t1/#")
        wait_for(lambda: daemon.ready and daemon.trigger.shows_item is False, what="the empty tray learned")
        wait_for(lambda: daemon.telemetry.listening, what="commands subscribed")
        for n in range(5):  # a burst of commands
            sub.client.publish("smartbin/t1/cmd/sort", json.dumps({"request_id": f"r{n}"}), qos=1)
        os.kill(os.getpid(), signal.SIGUSR1)  # `smartbin sort`
        emulator.press()  # the tray button
        wait_for(lambda: len(sub.payloads("/reply")) == 5, what="5 replies")
        wait_for(lambda: "the tray button refused" in caplog.text, what="the button refused")
        time.sleep(0.5)  # a refused sort that went through anyway would have moved the servo by now
        assert running.stop() == 0
    emulator.stop()
    replies = [json.loads(p) for p in sub.payloads("/reply")]
    assert all(r["ok"] is False and r["error"] == "tray is empty" for r in replies)
    assert "SIGUSR1 (smartbin sort) refused: tray is empty" in caplog.text
    assert not any(line.startswith("MOVE 0 1") and line != "MOVE 0 1500" for line in emulator.lines)
    assert Ledger(config.ledger.path).counts() == {}
    sub.close()


def test_an_exception_in_the_loop_is_a_fault_and_sorting_goes_on(tmp_path, emulator, monkeypatch, caplog):
    real = edge.service.daemon.load_classifier
    failures = []

    def load_classifier(cfg):
        classifier = real(cfg)
        predict = classifier.predict

        def flaky(frame):
            if not failures:
                failures.append(1)
                raise RuntimeError("interpreter state corrupted")
            return predict(frame)

        classifier.predict = flaky
        return classifier

    monkeypatch.setattr(edge.service.daemon, "load_classifier", load_classifier)
    seen = []
    daemon = Daemon(
        config_for(tmp_path, emulator.port), opener=lambda cfg: emulator.tray, on_sorted=seen.append
    )
    assert daemon.run() == 0
    assert len(seen) == 3 and failures
    assert "sorting loop: unexpected RuntimeError: interpreter state corrupted" in caplog.text
    assert "Traceback" in caplog.text
    assert "RuntimeError" in daemon.faults()["loop"]


def test_a_full_disk_stops_tipping_says_so_and_sorting_resumes_when_space_returns(tmp_path, small_disk):
    tray = SimulatedTray(synthetic=4, fps=30)
    emulator = MaestroEmulator(on_move=tray.servo_moved)
    config = config_for(tmp_path, emulator.port)
    assert Path(config.ledger.path).parent == small_disk
    filled: list[Path] = []
    seen = []

    def on_sorted(item):
        seen.append(item)
        if len(seen) == 1:
            filled.append(fill(small_disk))

    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=on_sorted)
    running = Running(daemon)
    wait_for(lambda: daemon.ready and "ledger" in daemon.faults(), 30, "the ledger fault")
    fault = daemon.faults()["ledger"]
    assert "refuses writes" in fault and "free space on" in fault and str(small_disk) in fault
    assert "ledger" in daemon.status()["faults"] and "ledger: the ledger" in daemon.status_text()
    time.sleep(1.0)  # items keep coming; none may be tipped that cannot be counted
    # every item tipped is counted, or its move is on disk to be counted after a power cut
    tipped = len(bin_moves(emulator, config))
    durable = Ledger(config.ledger.path)
    assert tipped == sum(durable.counts().values()) + len(durable.moving())
    durable.close()
    assert running.thread.is_alive()
    filled[0].unlink()
    assert running.join(60) == 0
    emulator.stop()
    ledger = Ledger(config.ledger.path)
    assert len(seen) == 4 == sum(ledger.counts().values()) == len(bin_moves(emulator, config))
    assert "ledger" not in daemon.faults()


def test_frames_that_change_size_mid_run_relearn_the_tray_and_sorting_goes_on(tmp_path, emulator, caplog):
    """A camera that renegotiates its size, or a folder with a 1×1 or a huge image, ends nothing."""
    tray = emulator.tray
    odd = [np.full((1, 1, 3), 128, np.uint8), np.full((3000, 4000, 3), 128, np.uint8)]

    class Renegotiating:
        finite, description = True, "a camera that changes its frame size twice"

        def __init__(self) -> None:
            self.frames = 0

        def read(self):
            self.frames += 1
            if self.frames in (25, 26):  # an item lies on the learned tray: a 1×1 frame, then a huge one
                return odd[self.frames - 25]
            return tray.read()

        def close(self) -> None:
            pass

    seen = []
    daemon = Daemon(
        config_for(tmp_path, emulator.port), opener=lambda cfg: Renegotiating(), on_sorted=seen.append
    )
    assert Running(daemon).join(60) == 0  # the item on the tray meanwhile was sorted, not learned
    assert len(seen) == 3 and daemon.loop_fault is None
    assert caplog.text.count("camera: frames are now") == 3


def test_every_test_docs_reliability_cites_exists():
    """The guarantees page names its proofs; a renamed or deleted test must not leave a false claim."""
    root = Path(__file__).parent
    page = (root.parent / "docs" / "reliability.md").read_text()
    defined = {
        name
        for path in root.glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)
    }
    cited = set(re.findall(r"::(test_\w+)", page))
    files = set(re.findall(r"`(test_\w+\.py)", page))
    assert cited and files
    assert cited <= defined, cited - defined
    assert all((root / f).exists() for f in files), files


def test_a_part_that_fails_to_close_never_keeps_the_others_open(tmp_path, emulator, caplog):
    class Jammed(SimulatedTray):
        def close(self) -> None:
            raise RuntimeError("VIDIOC_STREAMOFF: Input/output error")

    tray = Jammed(synthetic=1, fps=0)
    emulator.on_move = tray.servo_moved
    daemon = Daemon(config_for(tmp_path, emulator.port), opener=lambda cfg: tray)
    assert daemon.run() == 0
    assert "stopping: could not close the camera" in caplog.text
    assert not daemon.telemetry._thread.is_alive()  # stopped after the camera failed to close
    with pytest.raises(sqlite3.ProgrammingError):  # and the ledger closed
        daemon.ledger.counts()


# -- a stop (SIGTERM) at each moment of an item -------------------------------------------------------


def test_a_stop_while_the_tray_is_away_from_home_sends_it_home_before_exit(tmp_path, caplog):
    """The return home failed (a servo fault, in its backoff); the stop must not wait for the backoff."""
    tray = SimulatedTray(synthetic=1, fps=0)

    def moved(channel, pulse_us):
        tray.servo_moved(channel, pulse_us)
        if tray.tipped:
            emulator.mode = "stuck"

    emulator = MaestroEmulator(on_move=moved)
    config = config_for(tmp_path, emulator.port)
    home = round(config.servo.home_us * 4)
    daemon = Daemon(config, opener=lambda cfg: tray)
    running = Running(daemon)
    wait_for(lambda: "did not come back home" in caplog.text, what="the failed return home")
    emulator.mode = "ok"  # the servo moves again; the daemon is still in its backoff
    assert running.stop() == 0
    emulator.stop()
    assert emulator.positions[0] == home
    assert sum(Ledger(config.ledger.path).counts().values()) == 1


def test_a_stop_mid_vote_leaves_the_item_on_the_tray_and_it_is_sorted_once_after_the_restart(
    tmp_path, emulator, caplog
):
    config = config_for(tmp_path, emulator.port)
    config.sorting.vote_frames = 100  # a long vote, so that the stop lands in it
    tray = SimulatedTray(synthetic=1, fps=30)
    emulator.on_move = tray.servo_moved
    daemon = Daemon(config, opener=lambda cfg: tray)
    running = Running(daemon)
    wait_for(lambda: len(daemon.votes) >= 3, 30, "a vote under way")
    assert running.stop() == 0
    assert "stopping while classifying an item" in caplog.text
    assert bin_moves(emulator, config) == [] and Ledger(config.ledger.path).counts() == {}
    assert tray.current is not None  # still on the tray
    config.sorting.vote_frames = 3
    seen = []
    Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append).run()
    assert len(seen) == 1 and sum(Ledger(config.ledger.path).counts().values()) == 1


def test_a_stop_while_a_move_is_being_retried_leaves_the_item_and_it_is_sorted_once_after_the_restart(
    tmp_path, emulator, caplog
):
    caplog.set_level(logging.INFO)
    emulator.mode = "stuck"  # the servo never reaches its target: the move is retried
    config = config_for(tmp_path, emulator.port)
    config.sorting.move_attempts = 100
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator.on_move = tray.servo_moved
    daemon = Daemon(config, opener=lambda cfg: tray)
    running = Running(daemon)
    wait_for(lambda: "attempt 1 of 100" in caplog.text, what="a failed first attempt")
    assert running.stop() == 0
    assert "still on the tray, not sorted and not counted" in caplog.text
    ledger = Ledger(config.ledger.path)
    assert ledger.counts() == {} and len(ledger.moving()) == 1
    ledger.close()
    emulator.mode = "ok"
    seen = []
    Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append).run()
    ledger = Ledger(config.ledger.path)
    assert len(seen) == 1 and sum(ledger.counts().values()) == 1
    assert ledger.moving() == [] and ledger.parked_items() == 0
    assert "it will be sorted again" in caplog.text


def test_a_sort_queued_before_the_tray_is_learned_is_refused_never_counted(tmp_path, emulator, caplog):
    """A cmd/sort queued on the broker while the bin was down arrives as it starts. With no remembered
    tray (a first install, a moved camera) nothing yet tells an item from the bare tray: refused."""
    config = config_for(tmp_path, emulator.port)
    tray = SimulatedTray(synthetic=1, fps=0, lead_frames=0)
    emulator.on_move = tray.servo_moved
    seen = []
    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
    daemon.request_sort("a queued cmd/sort")
    running = Running(daemon)
    wait_for(lambda: "the empty tray is being learned" in caplog.text, what="the sort refused")
    wait_for(lambda: daemon.trigger.state.name == "EMPTY", what="the tray learned")
    assert running.stop() == 0 and seen == [] and bin_moves(emulator, config) == []
    assert Ledger(config.ledger.path).counts() == {}


class BufferingCamera:
    """A live camera that hands out frames late, as a V4L2 device with its queue of buffers does."""

    finite, description = False, "a camera with a queue of buffered frames"

    def __init__(self, tray: SimulatedTray) -> None:
        self.tray, self.queue = tray, []

    def read(self):
        frame = self.tray.read()
        if frame is None:
            return None
        self.queue = [*self.queue, frame][-(edge.camera.supervisor.BUFFERED_FRAMES + 1) :]
        return self.queue[0]

    def close(self) -> None:
        pass


def test_a_sort_just_after_a_tip_sees_the_tray_as_it_is_now_not_buffered_frames(tmp_path, emulator):
    """The frames a camera queued before the tip still show the item: a sort command just after the tip
    must not classify them and count the item a second time."""
    config = config_for(tmp_path, emulator.port)
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator.on_move = tray.servo_moved
    seen, replies = [], []

    def sorted_then_pressed(item) -> None:
        seen.append(item)
        replies.append(daemon.request_sort("a press just after the tip"))

    daemon = Daemon(config, opener=lambda cfg: BufferingCamera(tray), on_sorted=sorted_then_pressed)
    assert Running(daemon).join(60) == 0
    assert len(seen) == 1 and bin_moves(emulator, config) == [seen[0].bin]
    assert Ledger(config.ledger.path).counts() == {seen[0].bin: 1}
