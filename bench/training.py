"""Training throughput on this machine: images per second for feature caching and for training.

  .venv/bin/python bench/training.py             # 512 photos
  .venv/bin/python bench/training.py --quick     # 64 photos

What `smartbin-train`'s cached mode does, timed phase by phase on real photos:
the frozen front of MobileNetV2 (up to the last 2 blocks, the default) run
once per photo; one epoch of fine-tuning the last 2 blocks and the head on
those activations; one epoch of the head alone on pooled features. Needs
TensorFlow (smartbin[train]) and the ImageNet weights in ../shared/weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BUNDLE, parser, print_table, test_photos, write_result


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--photos", type=int, default=512, help="photos (default 512)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64, as smartbin-train)")
    p.add_argument(
        "--tail-blocks", type=int, default=2, help="blocks fine-tuned (default 2, as smartbin-train)"
    )
    args = p.parse_args()
    if args.quick:
        args.photos = 64
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from edge.model.preprocess import InputSpec
    from host_training.features import cached_activations
    from host_training.model import build_classifier, cut_layer_name, resolve_weights, split_model

    files = test_photos(args.photos)
    if not files:
        raise SystemExit("the training benchmark needs real photos: ../shared/datasets/garbage12 is absent")
    model = build_classifier(12, resolve_weights(None))
    front, tail = split_model(model, args.tail_blocks)
    labels = np.random.default_rng(0).integers(0, 12, len(files))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        acts = cached_activations(
            front, files, InputSpec(224, 224), Path(tmp), views=[1] * len(files), batch_size=args.batch_size
        )
        cache_s = time.perf_counter() - t0
        rows.append(["feature cache (frozen front, incl. decode)", len(files), cache_s])
        x = np.asarray(acts)
        tail.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        tail.fit(x[: args.batch_size], labels[: args.batch_size], epochs=1, verbose=0)  # build and trace
        t0 = time.perf_counter()
        tail.fit(x, labels, batch_size=args.batch_size, epochs=1, verbose=0)
        rows.append(
            [f"fine-tune epoch (last {args.tail_blocks} blocks + head)", len(files), time.perf_counter() - t0]
        )
        pool = model.get_layer("pool").output
        head = keras.Model(pool, model.output)
        cut = model.get_layer(cut_layer_name(model, args.tail_blocks)).output
        pooled = keras.Model(cut, pool).predict(x, batch_size=256, verbose=0)
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        head.fit(pooled[: args.batch_size], labels[: args.batch_size], epochs=1, verbose=0)
        t0 = time.perf_counter()
        head.fit(pooled, labels, batch_size=args.batch_size, epochs=1, verbose=0)
        rows.append(["head epoch (pooled features)", len(files), time.perf_counter() - t0])
    table = [[name, n, round(s, 2), round(n / s, 1)] for name, n, s in rows]
    print(f"\ntraining throughput, {len(files)} photos, batch {args.batch_size}\n")
    print_table(["phase", "photos", "seconds", "photos/s"], table)
    timing = json.loads((BUNDLE / "report.json").read_text())["timing"]
    run_rate = timing["feature_cache_photos"] / timing["feature_cache_s"]
    print(
        f"\nthe shipped model's own training run (its report.json): feature cache {run_rate:.0f} photos/s "
        f"({timing['feature_cache_photos']} photo views in {timing['feature_cache_s']:.0f} s); "
        f"the whole run {timing['total_s']:.0f} s"
    )
    write_result(
        "training",
        args.out,
        {
            "photos": len(files),
            "batch_size": args.batch_size,
            "tail_blocks": args.tail_blocks,
            "phases": [
                {
                    "phase": r[0],
                    "photos": r[1],
                    "seconds": round(r[2], 3),
                    "photos_per_s": round(r[1] / r[2], 1),
                }
                for r in rows
            ],
            "shipped_run_timing": timing,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
