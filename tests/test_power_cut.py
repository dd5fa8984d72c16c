"""Power cuts at random moments of the move cycle: every item that falls into a bin is counted once.

A harness (this test) owns what outlives the daemon on a real bin: the servo controller (a Maestro
emulated on a real pty) and the tray (a file the daemon's camera draws). The daemon runs as its own
process (``tests/power_cut.py``: the real ``Daemon`` with signals, a real ledger and a real Mosquitto)
and is SIGKILLed again and again, in three phases of the move cycle: before the tip (trigger, vote,
model), the instant the controller receives the move (before the daemon has its confirmation), and
after the tip (the count, the dwell, the way home). After each kill it is started again with whatever
is on the tray. At the end the items that fell, the counts in the ledger and the events the dashboard
received (QoS 1: duplicates allowed, deduplicated on id) must be the same items.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from edge.config import Config
from edge.ledger import Ledger
from edge.servo.emulator import MaestroEmulator
from tests.broker import Subscriber, wait_for
from tests.test_daemon import needs_broker

ROOT = Path(__file__).resolve().parents[1]
KILLS = 24
PHASES = ("before the tip", "as the servo moves", "after the tip")
BINS = Config().servo.bins
HOME_US = Config().servo.home_us


class Harness:
    """The tray and the controller; each bin move that finds an item on the tray makes it fall."""

    def __init__(self, folder: Path, mqtt_port: int) -> None:
        self.folder = folder
        self.tray_file = folder / "tray.json"
        self.lock = threading.Lock()
        self.item: int | None = None
        self.placed = 0
        self.tipped: list[tuple[int, str]] = []  # (item, bin) for each item that fell
        self.phantom_moves = 0  # bin moves of an empty tray
        self.homes = 0
        self.starts = 0
        self.kill_on_move = False
        self.write()
        self.emulator = MaestroEmulator(on_move=self.moved)
        self.by_target = {round(us): b for b, us in BINS.items()}
        self.config = folder / "smartbin.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device_id": "cut",
                    "servo": {
                        "port": self.emulator.port,
                        "device_number": None,
                        "dwell_s": 0.2,
                        "move_timeout_s": 0.5,
                    },
                    "ledger": {"path": str(folder / "state" / "ledger.db")},
                    "sorting": {
                        "review_folder": str(folder / "review"),
                        "ready_timeout_s": 0.5,
                        "unknown": "fallback",
                    },
                    "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_max_s": 1.0},
                }
            )
        )
        self.log = open(folder / "daemon.log", "ab")  # noqa: SIM115 (the children's stdout, for the whole test)
        self.child: subprocess.Popen | None = None

    def write(self) -> None:
        partial = self.tray_file.with_suffix(".partial")
        partial.write_text(json.dumps({"item": self.item}))
        os.replace(partial, self.tray_file)

    def moved(self, channel: int, pulse_us: float) -> None:
        with self.lock:
            if round(pulse_us) == round(HOME_US):
                self.homes += 1
                return
            if round(pulse_us) not in self.by_target:
                return
            if self.item is None:
                self.phantom_moves += 1
                return
            self.tipped.append((self.item, self.by_target[round(pulse_us)]))
            self.item = None
            self.write()
            if self.kill_on_move:  # the power goes the instant the servo starts: no confirmation read
                self.kill_on_move = False
                self.child.send_signal(signal.SIGKILL)

    def place(self) -> None:
        with self.lock:
            self.item = self.placed
            self.placed += 1
            self.write()

    def start(self) -> None:
        with self.lock:  # see kill()
            self._start()

    def _start(self) -> None:
        self.starts += 1
        self.child = subprocess.Popen(
            # faulthandler: a daemon stuck when a wait fails is sent SIGABRT and prints where it is
            [
                sys.executable,
                "-X",
                "faulthandler",
                "-m",
                "tests.power_cut",
                str(self.config),
                str(self.tray_file),
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """Under the lock that moved() holds while it records a tip and, for a cut as the servo moves,
        kills the daemon that moved it: without it, a restart could slip in between the tip the test
        sees and that kill, which then hit the new daemon before it could say a word."""
        with self.lock:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait()

    def ready(self) -> bool:
        return self.daemon_log().count(" ready: ") >= self.starts

    def daemon_log(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        """``wait_for``, with the end of the daemon's log as it is when the wait fails."""
        try:
            wait_for(predicate, timeout_s, what)
        except AssertionError as exc:
            state = f"daemon pid {self.child.pid}, start {self.starts}, exit status {self.child.poll()}"
            if self.child.poll() is None:
                self.child.send_signal(signal.SIGABRT)  # its threads' stacks into the log
                self.child.wait(10)
            raise AssertionError(
                f"{exc} ({state})\n--- the daemon's log ---\n{self.daemon_log()[-12000:]}"
            ) from None


@needs_broker
def test_sigkill_anywhere_in_the_move_cycle_counts_each_fallen_item_once(tmp_path, broker):
    harness = Harness(tmp_path, broker.port)
    sub = Subscriber(broker.port, "smartbin/cut/#", client_id="power-cut-dashboard")
    rng = random.Random(12)
    harness.start()
    wait_for(
        lambda: (tmp_path / "state" / "empty-tray.npz").exists(), 60, "the daemon to learn the empty tray"
    )
    kills: collections.Counter[str] = collections.Counter()
    plan = [PHASES[n % 3] for n in range(KILLS)] + [None] * 3
    try:
        for phase in plan:
            harness.wait_for(lambda: harness.item is None, 90, "the item on the tray to be sorted")
            harness.wait_for(harness.ready, 60, "the daemon to be ready")
            time.sleep(0.5)  # the tray comes home, the empty tray re-arms the trigger
            tipped = len(harness.tipped)
            harness.kill_on_move = phase == "as the servo moves"
            harness.place()
            if phase == "before the tip":
                time.sleep(rng.uniform(0.0, 0.3))  # the trigger settles, the vote, the model
            else:
                harness.wait_for(lambda n=tipped: len(harness.tipped) > n, 90, "the tip")
                if phase == "after the tip":
                    time.sleep(rng.uniform(0.0, 0.45))  # the count, the dwell (0.2 s), the return home
            if phase is not None:
                kills[phase] += 1
                harness.kill()
                harness.start()
        harness.wait_for(lambda: harness.item is None, 90, "the last item to be sorted")
        harness.child.send_signal(signal.SIGTERM)
        assert harness.child.wait(30) == 0
    finally:
        if harness.child.poll() is None:
            harness.kill()
        harness.emulator.stop()
    log = harness.daemon_log()
    assert harness.phantom_moves == 0, "the servo tipped an empty tray"

    ledger = Ledger(tmp_path / "state" / "ledger.db")
    tipped_per_bin = collections.Counter(bin_id for _, bin_id in harness.tipped)
    assert ledger.counts() == dict(tipped_per_bin), log
    assert {b: items for b, (items, _) in ledger.fill().items()} == dict(tipped_per_bin)  # fill: the same
    assert len(harness.tipped) == harness.placed
    assert ledger.moving() == [] and ledger.parked_items() == 0
    counted = {e.id for e in ledger.events(limit=1000)}
    assert len(counted) == len(harness.tipped)
    wait_for(lambda: set(sub.event_ids()) == counted, 30, "every counted event on the dashboard")
    assert {b: int(sub.latest(f"/count/{b}")) for b in tipped_per_bin} == dict(tipped_per_bin)
    sub.close()
    # each kill as the servo moved left a move open, resolved from the controller's position
    assert log.count("was moving when smartbin stopped") >= kills["as the servo moves"]
    assert log.count("holds the tray at") >= kills["as the servo moves"]
    assert sum(kills.values()) == KILLS and min(kills.values()) == KILLS // 3, kills
