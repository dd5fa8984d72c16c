"""The pipeline around the model: every stage the daemon runs per item, timed, as multiples of invoke.

  .venv/bin/python bench/pipeline.py                # 60 items, 3 frames each (sorting.vote_frames)
  .venv/bin/python bench/pipeline.py --profile      # and a pyinstrument profile of the loop

Real photos, each laid on the simulated tray as a 640x480 camera frame and
saved as JPEG (what a USB camera sends), are replayed from a folder
(edge.camera.sources.FolderSource) and go through the functions the daemon calls, in
its order: capture (reading and decoding the JPEG frame), the trigger's frame analysis, preprocessing, invoke,
the decision, the servo move to the bin and back (a Maestro emulated on a
pty: serial writes and the read-back that confirms each move; no dwell), the
ledger commit (SQLite, synchronous=FULL), and the MQTT publish to a real
Mosquitto up to its PUBACK (this last runs on the telemetry thread, off the
sorting loop, so it is reported beside the total, not in it).

Overhead = (loop time per item - K x invoke) / (K x invoke); it is also given
without the capture, for cameras that hand over raw frames.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from common import BUNDLE, REPO, parser, print_table, summary, test_photos, write_result

STAGES = ("capture", "trigger", "preprocess", "invoke", "decide", "move", "ledger")


def run(
    photos: list[Path], vote_frames: int, threads: int, tmp: Path, profile: bool, size: tuple[int, int]
) -> dict:
    import cv2

    from edge.camera.simulation import empty_tray, place_item
    from edge.camera.sources import FolderSource
    from edge.camera.trigger import PresenceTrigger
    from edge.config import MqttConfig, ServoConfig, TriggerConfig
    from edge.images import read_image
    from edge.ledger import Ledger, SortedItem
    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier
    from edge.model.decision import decide
    from edge.mqtt.telemetry import Telemetry
    from edge.servo.emulator import MaestroEmulator
    from edge.servo.protocols import open_controller
    from edge.servo.supervisor import Calibration, ServoSupervisor
    from tests.broker import Broker, mosquitto_path, wait_for

    folder = tmp / "frames"
    folder.mkdir()
    tray = empty_tray(size[1], size[0])
    cv2.imwrite(str(folder / "00000-empty.jpg"), tray)
    for n, photo in enumerate(photos, 1):
        frame = folder / f"{n:05d}-0.jpg"  # a camera frame, JPEG as a USB camera's MJPEG
        cv2.imwrite(str(frame), place_item(tray, read_image(photo)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        for k in range(1, vote_frames):  # the K frames of one settled item
            (folder / f"{n:05d}-{k}.jpg").symlink_to(frame)
    source = FolderSource(folder)
    classifier = Classifier(load_bundle(BUNDLE), threads=threads)
    taxonomy = classifier.bundle.taxonomy
    trigger = PresenceTrigger(TriggerConfig(learn_frames=1))
    trigger.update(source.read())  # the empty tray, learned; every frame below is an item
    emulator = MaestroEmulator()
    servo_cfg = ServoConfig(port=emulator.port, device_number=None, dwell_s=0.0)
    servo = ServoSupervisor(lambda: open_controller(servo_cfg), Calibration.from_config(servo_cfg))
    servo.home()
    ledger = Ledger(tmp / "ledger.db")
    broker = telemetry = None
    if mosquitto_path():
        (tmp / "mqtt").mkdir()
        broker = Broker(tmp / "mqtt").start()
        telemetry = Telemetry(
            MqttConfig(host="127.0.0.1", port=broker.port), "bench", ledger, bins=taxonomy.bin_ids
        )
        telemetry.start()
        wait_for(lambda: telemetry.connected, what="the broker")
    try:  # a failure must not leave mosquitto holding the caller's output pipe open
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        per_item, publish, bare_invoke = [], [], []
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        clock = time.perf_counter
        for _ in photos:
            item_start = clock()
            probs = []
            for _ in range(vote_frames):
                t0 = clock()
                frame = source.read()
                t1 = clock()
                trigger.update(frame)
                t2 = clock()
                tensor = classifier.input_tensor(frame)
                t3 = clock()
                probs.append(classifier.predict_tensor(tensor))
                t4 = clock()
                for stage, took in zip(STAGES[:4], (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[stage].append(took * 1000)
            t5 = clock()
            decision = decide(probs, classifier.labels, taxonomy)
            t6 = clock()
            servo.tip(decision.bin)
            servo.return_home()
            t7 = clock()
            ledger.record(
                SortedItem(
                    uuid.uuid4().hex,
                    time.time(),
                    decision.item,
                    decision.bin,
                    decision.confidence,
                    decision.uncertain,
                    (t7 - item_start) * 1000,
                    classifier.bundle.model_id,
                )
            )
            t8 = clock()
            for stage, took in zip(STAGES[4:], (t6 - t5, t7 - t6, t8 - t7)):
                times[stage].append(took * 1000)
            per_item.append((t8 - item_start) * 1000)
            if telemetry:
                telemetry.notify()
                wait_for(lambda: not ledger.pending(), what="PUBACK")
                publish.append((clock() - t8) * 1000)
        if profiler:
            profiler.stop()
            (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
            profiler.write_html(str(REPO / "bench" / "results" / "pipeline-profile.html"))
            print(profiler.output_text(unicode=True, color=False, show_all=False)[:6000])
        for _ in range(len(photos) * vote_frames):  # the model alone, on one of the same tensors
            t0 = clock()
            classifier.predict_tensor(tensor)
            bare_invoke.append((clock() - t0) * 1000)
    finally:
        if telemetry:
            telemetry.stop()
            broker.stop()
        emulator.stop()
        ledger.close()
    return {"times": times, "per_item": per_item, "publish": publish, "bare_invoke": bare_invoke}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--items", type=int, default=60, help="photos, one item each (default 60)")
    p.add_argument("--vote-frames", type=int, default=3, help="frames per item (default 3, as the daemon)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2, as the daemon)")
    p.add_argument("--profile", action="store_true", help="profile the loop with pyinstrument")
    p.add_argument("--size", help="camera frame WIDTHxHEIGHT (default: camera.width x camera.height)")
    args = p.parse_args()
    from edge.config import CameraConfig

    camera = CameraConfig()
    size = tuple(map(int, args.size.split("x"))) if args.size else (camera.width, camera.height)
    if args.quick:
        args.items = 4
    photos = test_photos(args.items)
    if not photos:
        raise SystemExit("the pipeline benchmark replays real photos: ../shared/datasets/garbage12 is absent")
    tmp = Path(tempfile.mkdtemp(prefix="smartbin-bench-"))
    try:
        r = run(photos, args.vote_frames, args.threads, tmp, args.profile, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    k = args.vote_frames
    invoke = statistics.median(r["bare_invoke"])
    item = statistics.median(r["per_item"])
    decode = statistics.median(r["times"]["capture"])
    rows, stages = [], {}
    for stage in STAGES:
        s = summary(r["times"][stage])
        per = k if stage in STAGES[:4] else 1
        stages[stage] = {**s, "per_item": per}
        rows.append(
            [
                f"{stage} (x{per})" if per > 1 else stage,
                s["median_ms"],
                s["p90_ms"],
                round(per * s["median_ms"] / invoke, 2),
            ]
        )
    rows.append([f"total per item ({k} frames)", round(item, 3), "", round(item / invoke, 2)])
    if r["publish"]:
        pub = summary(r["publish"])
        stages["mqtt publish to PUBACK"] = pub
        rows.append(
            [
                "mqtt publish to PUBACK (async)",
                pub["median_ms"],
                pub["p90_ms"],
                round(pub["median_ms"] / invoke, 2),
            ]
        )
    print(
        f"\npipeline, {len(photos)} items of {k} frames of {size[0]}x{size[1]}, {args.threads} threads; "
        f"bare invoke {invoke:.2f} ms\n"
    )
    print_table(["stage", "median ms", "p90 ms", "× invoke"], rows)
    overhead = (item - k * invoke) / (k * invoke)
    without_decode = (item - k * decode - k * invoke) / (k * invoke)
    print(
        f"\noverhead over {k} invokes: {overhead:.0%} with the capture, {without_decode:.0%} without "
        "(a camera that hands over raw frames); target 25%"
    )
    write_result(
        "pipeline",
        args.out,
        {
            "items": len(photos),
            "vote_frames": k,
            "frame_size": list(size),
            "threads": args.threads,
            "bare_invoke": summary(r["bare_invoke"]),
            "stages": stages,
            "per_item": summary(r["per_item"]),
            "overhead": round(overhead, 3),
            "overhead_without_decode": round(without_decode, 3),
            "target_overhead": 0.25,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
