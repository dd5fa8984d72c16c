"""Footprint of the edge daemon: memory once ready and after 10,000 frames, cold start to READY,
and proof that TensorFlow is never imported.

  .venv/bin/python bench/footprint.py            # 10,000 frames, 3 cold starts
  .venv/bin/python bench/footprint.py --quick

Memory: the real Daemon runs in this process (which imports nothing but
edge) on the simulated tray with drawn items, a Maestro emulated on a pty and
a real ledger; the resident set size is read from /proc after start, then
every 1,000 frames. Cold start: `python -m edge run` as a new process, from
exec to the READY=1 it sends on a notify socket, as systemd would see it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, parser, print_table, summary, write_result


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def memory(frames: int, tmp: Path) -> dict:
    from edge.camera.simulation import SimulatedTray
    from edge.config import Config
    from edge.service.daemon import Daemon
    from edge.servo.emulator import MaestroEmulator

    tray = SimulatedTray(synthetic=frames // 10 + 10, fps=0)
    emulator = MaestroEmulator(on_move=tray.servo_moved)
    config = Config()
    config.servo.port, config.servo.device_number, config.servo.dwell_s = emulator.port, None, 0.0
    config.ledger.path = str(tmp / "ledger.db")
    config.sorting.review_folder = str(tmp / "review")
    config.mqtt.port = 1  # no broker: events stay in the outbox, as on a bin whose broker is down
    # an item the model holds (unknown, or not waste) is taken back by hand, as the demo's person does
    daemon = Daemon(config, opener=lambda cfg: tray, on_held=lambda decision: tray.take_back())
    daemon.start()
    while not daemon.ready:
        daemon.step()
        daemon.heartbeat()
    samples = [(0, rss_mib())]
    for n in range(1, frames + 1):
        daemon.step()
        daemon.heartbeat()
        if n % 1000 == 0 or n == frames:
            samples.append((n, rss_mib()))
    sorted_items = daemon.sorted_this_run
    daemon.shutdown()
    emulator.stop()
    return {
        "samples": samples,
        "items_sorted": sorted_items,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def cold_start(tmp: Path, runs: int) -> list[float]:
    import cv2

    from edge.camera.simulation import empty_tray
    from edge.servo.emulator import MaestroEmulator

    frames = tmp / "frames"
    frames.mkdir()
    for n in range(200):
        cv2.imwrite(str(frames / f"{n:04d}.png"), empty_tray())
    emulator = MaestroEmulator()
    config = tmp / "smartbin.yaml"
    config.write_text(
        f"camera: {{source: {frames}, replay_fps: 20}}\nservo: {{port: {emulator.port}}}\n"
        f"ledger: {{path: {tmp / 'cold.db'}}}\nmqtt: {{port: 1}}\n"
    )
    times = []
    for n in range(runs):
        path = tmp / f"notify{n}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(path))
        listener.settimeout(60)
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "NOTIFY_SOCKET": str(path)},
            stderr=subprocess.DEVNULL,
        )
        while b"READY=1" not in listener.recv(4096):
            pass
        times.append((time.perf_counter() - start) * 1000)
        process.terminate()
        process.wait(timeout=30)
        listener.close()
    emulator.stop()
    return times


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=10_000, help="frames through the loop (default 10,000)")
    p.add_argument("--starts", type=int, default=3, help="cold starts timed (default 3)")
    args = p.parse_args()
    if args.quick:
        args.frames, args.starts = 200, 1
    with tempfile.TemporaryDirectory() as tmp:
        mem = memory(args.frames, Path(tmp))
        starts = cold_start(Path(tmp), args.starts)
    ready, last = mem["samples"][0][1], mem["samples"][-1][1]
    print(f"edge daemon, {args.frames} frames, {mem['items_sorted']} items sorted\n")
    print_table(["after frames", "RSS MiB"], [[n, round(r, 1)] for n, r in mem["samples"]])
    start = summary(starts)
    warm = next((r for n, r in mem["samples"] if n >= 1000), last)
    print(
        f"\nresident once ready {ready:.1f} MiB, after {args.frames} frames {last:.1f} MiB "
        f"({last - ready:+.1f} MiB; {last - warm:+.1f} MiB after the first 1,000 frames)"
    )
    print(f"cold start to READY=1: median {start['median_ms'] / 1000:.2f} s over {len(starts)} starts")
    print(f"TensorFlow imported by the edge daemon: {'YES' if mem['tensorflow_imported'] else 'no'}")
    write_result(
        "footprint",
        args.out,
        {
            "frames": args.frames,
            "items_sorted": mem["items_sorted"],
            "rss_mib": mem["samples"],
            "rss_ready_mib": round(ready, 1),
            "rss_last_mib": round(last, 1),
            "growth_mib": round(last - ready, 1),
            "growth_after_1000_frames_mib": round(last - warm, 1),
            "cold_start_to_ready": start,
            "tensorflow_imported": mem["tensorflow_imported"],
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
