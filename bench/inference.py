"""Inference speed: the same frames through each runtime in one run, as ratios to LiteRT int8.

  .venv/bin/python bench/inference.py            # 100 held-out test photos, threads 1, 2, 4
  .venv/bin/python bench/inference.py --quick    # a handful of frames: does it run?

Runtimes: Keras `model.predict` (float, what the seed scripts ran), a direct
call of the Keras model, LiteRT float32, LiteRT int8 (the shipped bundle) and
tflite-runtime int8 (run in .venv-legacy, where scripts/test installs it).
The float models are the same MobileNetV2 graph with the ImageNet weights
(../shared/weights) and an untrained head: the head's weights do not change
the speed, and the shipped bundle carries only the int8 model. Each thread
count of the float rows runs in its own process, TensorFlow's pools set to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import BUNDLE, REPO, parser, print_table, summary, test_photos, time_calls, write_result

LEGACY_PYTHON = REPO / ".venv-legacy" / "bin" / "python"
SKIPPED = 3  # a worker's exit status when it cannot measure; its last line says why


def frames(n: int) -> tuple[np.ndarray, str]:
    from edge.images import read_image
    from edge.model.bundle import load_bundle
    from edge.model.preprocess import prepare

    spec = load_bundle(BUNDLE).input_spec
    photos = test_photos(n)
    if photos:
        return np.stack([prepare(read_image(p), spec) for p in photos]), f"{len(photos)} held-out test photos"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, spec.height, spec.width, 3), dtype=np.uint8), f"{n} random frames"


def time_int8(pixels: np.ndarray, threads: int, repeat: int) -> tuple[dict, str]:
    """The shipped bundle through whichever interpreter this environment has (edge.model.classifier)."""
    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier

    classifier = Classifier(load_bundle(BUNDLE), threads=threads)
    tensors = [classifier.tensor_from_pixels(p) for p in pixels]
    it = iter(range(10**9))
    ms = time_calls(lambda: classifier.predict_tensor(tensors[next(it) % len(tensors)]), repeat)
    return summary(ms), classifier.runtime


def run_worker(python: Path | str, mode: str, pixels: Path, threads: list[int], repeat: int) -> dict | str:
    """This script again in another process: another venv, or TensorFlow with its threads set at start."""
    result = subprocess.run(
        [
            str(python),
            __file__,
            "--worker",
            mode,
            "--pixels",
            str(pixels),
            "--repeat",
            str(repeat),
            "--threads",
            *map(str, threads),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    last = (result.stdout.strip().splitlines() or [""])[-1]
    if result.returncode == SKIPPED:
        return last  # why the worker could not measure (no TensorFlow, no weights)
    if result.returncode or not last:
        return f"{mode} worker failed: {result.stderr.strip().splitlines()[-1:]}"
    return json.loads(last)


def legacy_int8(pixels: Path, threads: list[int], repeat: int) -> dict[int, dict] | str:
    """tflite-runtime int8, timed by this same script in the legacy venv."""
    if not LEGACY_PYTHON.exists():
        return f"{LEGACY_PYTHON} absent (scripts/test makes it)"
    data = run_worker(LEGACY_PYTHON, "int8", pixels, threads, repeat)
    if isinstance(data, str):
        return data
    if data["runtime"] != "tflite-runtime":
        return f"the legacy venv runs {data['runtime']}, not tflite-runtime"
    return {int(t): s for t, s in data["times"].items()}


def float_times(pixels: np.ndarray, threads: int, repeat: int) -> dict[str, dict] | str:
    """Keras predict, a Keras call and LiteRT float32, with TensorFlow limited to ``threads``."""
    try:
        import tensorflow as tf

        from host_training.model import build_classifier, resolve_weights
    except ImportError as exc:
        return f"TensorFlow is not installed ({exc}); pip install 'smartbin[bench]'"
    from edge.errors import SmartbinError
    from edge.model.classifier import open_interpreter
    from host_training.quantize import convert

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    try:
        weights = resolve_weights(None)
    except SmartbinError as exc:
        return exc.problem
    model = build_classifier(12, weights)
    batch = [p[np.newaxis].astype(np.float32) for p in pixels]
    it = iter(range(10**9))
    results = {
        "keras predict (float)": summary(
            time_calls(lambda: model.predict(batch[next(it) % len(batch)], verbose=0), repeat)
        ),
        "keras call (float)": summary(
            time_calls(lambda: model(batch[next(it) % len(batch)], training=False), repeat)
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float32.tflite"
        path.write_bytes(convert(model, None, kind="float32"))
        interpreter, _ = open_interpreter(path, threads)
        index = interpreter.get_input_details()[0]["index"]

        def invoke() -> None:
            interpreter.set_tensor(index, batch[next(it) % len(batch)])
            interpreter.invoke()

        results["litert float32"] = summary(time_calls(invoke, repeat))
    return results


def worker(args) -> int:
    pixels = np.load(args.pixels)
    if args.worker == "float":
        result = float_times(pixels, args.threads[0], args.repeat)
        print(result if isinstance(result, str) else json.dumps(result))
        return SKIPPED if isinstance(result, str) else 0
    times, runtime = {}, None
    for t in args.threads:
        times[t], runtime = time_int8(pixels, t, args.repeat)
    print(json.dumps({"runtime": runtime, "times": times}))
    return 0


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=100, help="test photos to cycle through (default 100)")
    p.add_argument("--repeat", type=int, default=200, help="timed calls per runtime (default 200)")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default 1, 2, 4 up to the cores)")
    p.add_argument("--worker", choices=("int8", "float"), help=argparse.SUPPRESS)  # a child process's part
    p.add_argument("--pixels", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.frames, args.repeat = 4, 5
    args.threads = args.threads or [t for t in (1, 2, 4) if t <= (os.cpu_count() or 1)]
    if args.worker:
        return worker(args)
    threads = args.threads
    pixels, what = frames(args.frames)
    print(f"inference on {what}, {args.repeat} timed calls each, threads {threads}\n")
    int8, runtime = {}, None
    for t in threads:
        int8[t], runtime = time_int8(pixels, t, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "pixels.npy"
        np.save(saved, pixels)
        legacy = legacy_int8(saved, threads, args.repeat)
        floats = {t: run_worker(sys.executable, "float", saved, [t], args.repeat) for t in threads}
    rows, table = [], []
    for t in threads:
        ref = int8[t]["median_ms"]
        entries = list(floats[t].items()) if isinstance(floats[t], dict) else []
        entries.append((f"{runtime} int8", int8[t]))
        if isinstance(legacy, dict):
            entries.append(("tflite-runtime int8", legacy[t]))
        for name, s in entries:
            ratio = round(s["median_ms"] / ref, 3)
            table.append([name, t, s["median_ms"], s["p90_ms"], round(ratio, 2)])
            rows.append({"runtime": name, "threads": t, **s, "ratio_to_litert_int8": ratio})
    print_table(["runtime", "threads", "median ms", "p90 ms", "× litert int8"], table)
    skipped = {"tflite-runtime": legacy} if isinstance(legacy, str) else {}
    skipped.update({f"float @{t}": v for t, v in floats.items() if isinstance(v, str)})
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    write_result(
        "inference",
        args.out,
        {
            "frames": what,
            "repeat": args.repeat,
            "bundle": BUNDLE.name,
            "results": rows,
            "skipped": skipped,
            "quick": args.quick,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
