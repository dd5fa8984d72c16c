"""``smartbin demo``: the real daemon on a bench with no hardware.

What is simulated, and how:
- the camera: a simulated tray (edge.camera.simulation) on which each photo given
  with ``--source`` (or a drawn synthetic item) is placed in turn; a video
  file given with ``--source`` is replayed as the camera instead;
- the servo controller: a Pololu Maestro emulated on a pseudo-terminal,
  which the daemon drives through pyserial with the real byte protocol; the
  simulated tray drops its item when the emulated servo tips it.
What is real: the trigger, the model and its decision, the ledger (in
``--state``), and MQTT if a broker answers (else events wait in the outbox).
"""

from __future__ import annotations

import logging
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Any

from edge.camera.kinds import open_source
from edge.camera.simulation import SimulatedTray
from edge.config import Config
from edge.images import IMAGE_SUFFIXES, expand_paths
from edge.ledger import SortedItem, read_summary
from edge.model.decision import Decision
from edge.mqtt.client import broker_address
from edge.service.daemon import Daemon
from edge.servo.emulator import MaestroEmulator


def broker_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def demo_config(args: Any, state: Path, port: str) -> Config:
    config = Config()
    config.device_id = "demo"
    config.model.bundle = args.model
    config.servo.port, config.servo.protocol, config.servo.device_number = port, "maestro", None
    config.servo.dwell_s = args.dwell
    config.ledger.path = str(state / "ledger.db")
    config.sorting.review_folder = str(state / "review")
    config.sorting.review_sample = args.review_sample
    config.camera.replay_fps = args.fps
    config.sorting.ready_timeout_s = 5.0
    config.mqtt.host, config.mqtt.port = broker_address(args.broker)
    config.mqtt.reconnect_max_s = 5.0
    return config


def run_demo(args: Any) -> int:
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="smartbin-demo-"))
    sources = [Path(p) for p in args.source or []]
    video = len(sources) == 1 and sources[0].is_file() and sources[0].suffix.lower() not in IMAGE_SUFFIXES
    tray: SimulatedTray | None = None
    if video:
        camera_line = f"a recording, {sources[0]}, replayed at {args.fps:g} fps"
    else:
        photos = list(expand_paths(sources)) if sources else None
        if photos is not None and not photos:
            print(f"smartbin demo: no images in {', '.join(map(str, sources))}")
            return 2
        tray = SimulatedTray(photos, synthetic=args.synthetic, fps=args.fps)
        camera_line = tray.description + (
            ": SYNTHETIC drawings, not real waste, so expect uncertain items" if photos is None else ""
        )
    emulator = MaestroEmulator(device=12, on_move=tray.servo_moved if tray else None)
    config = demo_config(args, state, emulator.port)
    if video:
        config.camera.source = str(sources[0])
    online = broker_answers(config.mqtt.host, config.mqtt.port)
    print("smartbin demo: the real sorting daemon, with simulated hardware")
    print(f"  camera   simulated: {camera_line}")
    print(f"  servo    simulated: a Pololu Maestro emulated on {emulator.port}")
    print(f"  ledger   real: {config.ledger.path}")
    if online:
        print(f"  mqtt     real: broker {args.broker}, topics smartbin/demo/#")
    else:
        print(f"  mqtt     no broker answers on {args.broker}: events wait in the ledger's outbox")
    print("Ctrl-C stops it (finishing the current item).\n")

    sorted_items: list[tuple[SortedItem, str | None, str | None]] = []

    def show(item: SortedItem) -> None:
        name = tray.current_name if tray else ""
        label = tray.current_label if tray else None
        sorted_items.append((item, name, label))
        mark = " uncertain" if item.uncertain else ""
        if item.cost_rule:
            mark += f" (costs; most probable: {item.most_probable_bin})"
        print(
            f"{len(sorted_items):>3}  {(name or '')[:24]:<24} {item.item:<16} → {item.bin:<11}"
            f"{item.confidence:5.0%} {item.latency_ms:5.0f} ms{mark}",
            flush=True,
        )

    held_items: list[str] = []

    def held(decision: Decision) -> None:
        """The bin would not tip it: the simulated person takes it back, and the next item comes."""
        name = tray.current_name if tray else ""
        held_items.append(decision.item)
        print(f"  -  {(name or '')[:24]:<24} {decision.item:<16} held: {decision.held}; taken back")
        if tray:
            tray.take_back()

    logging.getLogger("smartbin.daemon").setLevel(logging.WARNING)  # the demo prints each item itself
    daemon = Daemon(
        config,
        opener=(lambda cfg: tray) if tray else open_source,
        on_sorted=show,
        on_held=held,
    )
    daemon.install_signals()
    try:
        code = daemon.run()
    finally:
        emulator.stop()
    summarise(daemon, sorted_items, online, state)
    if held_items:
        print(f"{len(held_items)} items held on the tray and taken back: {', '.join(held_items)}")
    return code


def summarise(daemon: Daemon, sorted_items: list, online: bool, state: Path) -> None:
    found = read_summary(daemon.config.ledger)
    counts, waiting = found.counts, found.waiting
    print(f"\n{len(sorted_items)} items sorted: " + ", ".join(f"{b} {n}" for b, n in counts.items()))
    if sorted_items:
        latencies = [item.latency_ms for item, _, _ in sorted_items]
        print(f"trigger to confirmed move: median {statistics.median(latencies):.0f} ms")
    taxonomy = daemon.classifier.bundle.taxonomy
    scored = [(item, label) for item, _, label in sorted_items if label and taxonomy.bin_of(label)]
    if scored:
        right_bin = sum(item.bin == taxonomy.bin_of(label) for item, label in scored)
        # the item is a concept (glass for a photo in white-glass/): compare it with the folder's concept
        right_item = sum(item.item == taxonomy.concept_of(label) for item, label in scored)
        print(
            f"against the photos' folder names: item right {right_item}/{len(scored)}, "
            f"bin right {right_bin}/{len(scored)} (uncertain items go to the fallback bin, and items "
            "that may be hazardous to hazardous)"
        )
    if waiting:
        print(f"{waiting} messages wait in the outbox for a broker" + ("" if online else " (none answered)"))
    print(f"ledger, and the review folder of uncertain items: {state}")
