"""What an idle bin costs, and how much later it sorts an item dropped while it is idle.

  .venv/bin/python bench/idle.py            # 30 s of empty tray and 5 drops per mode
  .venv/bin/python bench/idle.py --quick

The real Daemon runs in this process on the simulated tray camera at 10 frames a second (a Pi camera's
usual rate here), with a Maestro emulated on a pty, a real ledger and the shipped model, twice: never
idle (trigger.idle_after_s: 0) and with the default idle settings. CPU: the process's CPU seconds
(every thread) over a stretch of empty tray once the bin is idle, as a share of one core. Latency: an
item (a held-out test photo of waste, or a drawn one without ../shared) is dropped onto the tray at a
random moment of an idle period, and the time from the drop to the controller's confirmed move is
taken (waking up, settling, classifying and the move itself). The emulated controller's own thread
is left out of the CPU figure: on a bin it is a board of its own.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import parser, print_table, test_photos, write_result

CAMERA_FPS = 10.0


def run_mode(tmp: Path, idle_after_s: float, seconds: float, drops: int) -> dict:
    from edge.camera.simulation import SimulatedTray
    from edge.config import Config
    from edge.service.daemon import Daemon
    from edge.servo.emulator import MaestroEmulator

    photos = [p for p in test_photos(4 * drops) if "not-waste" not in p.parts][:drops]
    tray = SimulatedTray(
        items=photos or None, synthetic=drops, fps=CAMERA_FPS, lead_frames=10**9, gap_frames=10**9
    )
    emulator = MaestroEmulator(on_move=tray.servo_moved)
    config = Config()
    config.servo.port, config.servo.device_number = emulator.port, None
    config.ledger.path = str(tmp / f"mode-{idle_after_s:g}" / "ledger.db")  # its own state folder
    config.sorting.review_folder = str(tmp / "review")
    config.mqtt.port = 1  # no broker: events stay in the outbox, as on a bin whose broker is down
    config.trigger.idle_after_s = idle_after_s
    handled: list[tuple[float, bool]] = []  # (when, sorted): a held item is taken back, not timed

    def held(decision) -> None:
        handled.append((time.monotonic(), False))
        tray.take_back()

    daemon = Daemon(
        config,
        opener=lambda cfg: tray,
        on_sorted=lambda item: handled.append((time.monotonic(), True)),
        on_held=held,
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait(lambda: daemon.started and daemon.trigger.state.name == "EMPTY", 60)
        if idle_after_s > 0:
            wait(lambda: daemon.idle.idle, idle_after_s + 30)
        else:
            time.sleep(2.0)
        emulator_thread = emulator._thread.native_id
        cpu0, wall0 = daemon_cpu_s(emulator_thread), time.monotonic()
        time.sleep(seconds)
        cpu_share = (daemon_cpu_s(emulator_thread) - cpu0) / (time.monotonic() - wall0)
        latencies = []
        rng = random.Random(0)
        for n in range(drops):
            if idle_after_s > 0:
                wait(lambda: daemon.idle.idle, idle_after_s + 60)
            else:
                time.sleep(2.0)
            time.sleep(rng.uniform(0, 1 / config.trigger.idle_fps))
            dropped = time.monotonic()
            tray.drop_next()
            wait(lambda n=n: len(handled) > n, 60)
            if handled[n][1]:
                latencies.append(handled[n][0] - dropped)
    finally:
        daemon.request_stop()
        thread.join(30)
        emulator.stop()
    return {
        "idle_after_s": idle_after_s,
        "idle_fps": config.trigger.idle_fps,
        "cpu_share_of_a_core": cpu_share,
        "drop_to_move_s": [round(x, 3) for x in latencies],
        "held_instead": sum(not was_sorted for _, was_sorted in handled),
        "drop_to_move_median_s": statistics.median(latencies) if latencies else None,
    }


def daemon_cpu_s(emulator_thread: int | None) -> float:
    """CPU seconds of every thread of this process but the emulated controller's (on a bin the
    controller is a board of its own), from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == emulator_thread:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def wait(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("bench/idle.py: the daemon did not get there in time (see its log)")
        time.sleep(0.01)


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    from edge.config import TriggerConfig

    seconds, drops = (3.0, 3) if args.quick else (30.0, 5)
    default_after = TriggerConfig().idle_after_s
    with tempfile.TemporaryDirectory() as tmp:
        awake = run_mode(Path(tmp), 0.0, seconds, drops)
        idle = run_mode(Path(tmp), min(default_after, 5.0), seconds, drops)
    rows = [
        [
            name,
            f"{100 * m['cpu_share_of_a_core']:.2f}",
            "-" if not m["drop_to_move_s"] else f"{m['drop_to_move_median_s']:.2f}",
            "-" if not m["drop_to_move_s"] else f"{max(m['drop_to_move_s']):.2f}",
            m["held_instead"],
        ]
        for name, m in (("never idle", awake), (f"idle ({idle['idle_fps']:g} frames/s)", idle))
    ]
    print(f"\nempty tray for {seconds:.0f} s at {CAMERA_FPS:g} camera frames/s, then {drops} drops:\n")
    print_table(["mode", "CPU % of a core", "drop to move, median s", "max s", "held, not timed"], rows)
    ratio = idle["cpu_share_of_a_core"] / awake["cpu_share_of_a_core"]
    print(f"\nidle CPU is {ratio:.2f} of never-idle CPU")
    write_result(
        "idle",
        args.out,
        {"camera_fps": CAMERA_FPS, "seconds": seconds, "never_idle": awake, "idle": idle, "cpu_ratio": ratio},
    )


if __name__ == "__main__":
    main()
