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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from edge.camera.kinds import open_source
from edge.camera.simulation import SimulatedTray
from edge.config import Config
from edge.errors import SmartbinError
from edge.images import IMAGE_SUFFIXES, PHOTO_FIX, PhotoTally, photo_paths, readable_photos
from edge.ledger import SortedItem, read_summary
from edge.model.decision import Decision
from edge.model.taxonomy import Taxonomy
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


@dataclass
class Feed:
    """What the simulated camera shows: a tray of photos or drawings, or a recording replayed."""

    camera_line: str
    tray: SimulatedTray | None = None
    video: Path | None = None
    tally: PhotoTally | None = None  # the photos read and skipped, for a tray of photos
    drawn: bool = False  # drawn shapes, which a model holds as unknown: sent to the fallback bin instead


def is_video(sources: list[str]) -> bool:
    path = Path(sources[0])
    return len(sources) == 1 and path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


def check_video(path: Path) -> None:
    capture = cv2.VideoCapture(str(path))
    try:
        ok = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    if not ok:
        raise SmartbinError(
            f"--source {path} is neither a photo ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a video "
            "OpenCV can read",
            "give photos or folders of photos, or one video file (.mp4, .avi, ...)",
        )


def demo_feed(sources: list[str], args: Any) -> Feed:
    """Check ``--source`` before anything starts: every path exists and some photo can be read."""
    if not sources:
        tray = SimulatedTray(None, synthetic=args.synthetic, fps=args.fps)
        drawn = (
            ": SYNTHETIC drawings, not real waste, so expect uncertain items; items the model does not "
            "know go to the fallback bin instead of being held (sorting.unknown: fallback)"
        )
        return Feed(tray.description + drawn, tray, drawn=True)
    if is_video(sources):
        video = Path(sources[0])
        check_video(video)
        return Feed(f"a recording, {video}, replayed at {args.fps:g} fps", video=video)
    try:
        photos, tally = readable_photos(photo_paths(sources))
    except SmartbinError as exc:
        raise SmartbinError(f"--source: {exc.problem}", exc.fix) from None
    if not photos:
        raise SmartbinError(
            f"--source: no photo could be read ({tally.summary()})",
            f"{PHOTO_FIX}; or give one video file to replay as the camera",
        )
    tray = SimulatedTray(photos, fps=args.fps)
    return Feed(f"{tray.description}; {tally.summary()}", tray, tally=tally)


def truth(label: str | None, taxonomy: Taxonomy) -> tuple[str, str] | None:
    """A photo's folder label and its bin per the taxonomy, when the folder names an item it knows."""
    bin_id = taxonomy.bin_of(label) if label else None
    return (label, bin_id) if label and bin_id else None


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def columns(n: str, name: str, label: str, label_bin: str, item: str) -> str:
    """The columns every row starts with: which photo, what its folder says, what the bin made of it."""
    return f"{n:>3}  {cut(name, 20):<20} {cut(label, 18):<18} {label_bin:<11} → {cut(item, 16):<16} "


HEADER = columns("#", "photo", "its label", "its bin", "sorted as") + f"{'bin':<11}conf     time"


def item_row(n: int, name: str, known: tuple[str, str] | None, item: SortedItem) -> str:
    label, label_bin = known or ("-", "")
    marks = []
    if known and item.bin != label_bin:
        marks.append("WRONG BIN")
    if item.uncertain:
        marks.append("uncertain")
    if item.cost_rule:
        marks.append(f"costs; most probable: {item.most_probable_bin}")
    row = columns(str(n), name, label, label_bin, item.item)
    row += f"{item.bin:<11}{item.confidence:4.0%} {item.latency_ms:5.0f} ms"
    return row + (f"  {', '.join(marks)}" if marks else "")


def held_row(name: str, known: tuple[str, str] | None, decision: Decision) -> str:
    label, label_bin = known or ("-", "")
    return columns("-", name, label, label_bin, decision.item) + f"held: {decision.held}; taken back"


def print_banner(feed: Feed, emulator: MaestroEmulator, config: Config, broker: str, online: bool) -> None:
    print("smartbin demo: the real sorting daemon, with simulated hardware")
    print(f"  camera   simulated: {feed.camera_line}")
    print(f"  servo    simulated: a Pololu Maestro emulated on {emulator.port}")
    print(f"  ledger   real: {config.ledger.path}")
    if online:
        print(f"  mqtt     real: broker {broker}, topics smartbin/demo/#")
    else:
        print(f"  mqtt     no broker answers on {broker}: events wait in the ledger's outbox")
    print("Ctrl-C stops it (finishing the current item).\n")
    print(HEADER, flush=True)


def run_demo(args: Any) -> int:
    feed = demo_feed(args.source or [], args)
    tray = feed.tray
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="smartbin-demo-"))
    emulator = MaestroEmulator(device=12, on_move=tray.servo_moved if tray else None)
    config = demo_config(args, state, emulator.port)
    if feed.drawn:
        config.sorting.unknown = "fallback"
    if feed.video:
        config.camera.source = str(feed.video)
    online = broker_answers(config.mqtt.host, config.mqtt.port)
    print_banner(feed, emulator, config, args.broker, online)
    sorted_items: list[tuple[SortedItem, str | None, str | None]] = []
    held_items: list[str] = []

    def on_tray() -> tuple[str, tuple[str, str] | None]:
        label = tray.current_label if tray else None
        return (tray.current_name or "") if tray else "", truth(label, daemon.classifier.bundle.taxonomy)

    def show(item: SortedItem) -> None:
        name, known = on_tray()
        sorted_items.append((item, name, known[0] if known else None))
        print(item_row(len(sorted_items), name, known, item), flush=True)

    def held(decision: Decision) -> None:
        """The bin would not tip it: the simulated person takes it back, and the next item comes."""
        name, known = on_tray()
        held_items.append(decision.item)
        print(held_row(name, known, decision), flush=True)
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
    return code or photos_skipped(feed)


def photos_skipped(feed: Feed) -> int:
    """Exit status 1 when photos were skipped (at the start, or unreadable by the time they were laid)."""
    if feed.tally is None or feed.tray is None:
        return 0
    skipped = len(feed.tally.skipped) + len(feed.tray.skipped)
    if skipped:
        print(f"{skipped} photo{'' if skipped == 1 else 's'} skipped (unreadable, named above)")
    return 1 if skipped else 0


def summarise(daemon: Daemon, sorted_items: list, online: bool, state: Path) -> None:
    found = read_summary(daemon.config.ledger)
    counts, waiting = found.counts, found.waiting
    per_bin = ", ".join(f"{b} {n}" for b, n in counts.items())
    print(f"\n{len(sorted_items)} items sorted" + (f": {per_bin}" if per_bin else ""))
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
