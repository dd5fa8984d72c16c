"""How many of MobileNetV2's blocks can adapt within a training budget on this CPU (cached mode).

  .venv/bin/python bench/finetune_depth.py                      # 64 photos, 2,4,6,9,12,16 tail blocks
  .venv/bin/python bench/finetune_depth.py --depths 2,9 --photos 32
  .venv/bin/python bench/finetune_depth.py --quick              # 16 photos, 2 depths: checks that it runs

For each number of tail blocks, on real photos at 224 px with the default settings:
the frozen front's cost per cached view (the photo, its mirror image and, for a
small label's photo, six augmented copies, in the default run's proportion,
with decoding, augmentation and the write to the memory-mapped float32 cache),
the cache's size, the tail's training cost per sample (forward, backward and
Adam through the tail blocks and the head, batch 64, after a warm-up batch), the
tail's inference cost per view (the pooled features of the head phase and the
validation pass of every fine-tuning epoch), and the head's cost per sample on
pooled features. From those, the whole default run (the shipped model's data:
its photo, split and small-folder counts from models/household34-mnv2) is
projected: split, quantisation and evaluation as the shipped run measured them,
head_epochs 25 (no early stop), finetune_epochs 6.

The machine is shared: run it when it is quiet. Figures measured under load are
upper bounds; the load average is printed with them. Depth 2 is the shipped
setting, so its projection is checked against the shipped run's own timing: a
whole run on a machine of this kind has gone slower than short measurements
(another machine, other work, a long run's pace), and the projection scaled by
that ratio ("at shipped pace") is the one the budget is judged by.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BUNDLE, parser, print_table, test_photos, write_result

HOURS = (2, 3)


def default_run() -> dict:
    """The counts of the shipped model's training run: photos, views, what one epoch shows."""
    report = json.loads((BUNDLE / "report.json").read_text())
    s, split = report["settings"], report["split"]
    train_share = s["fractions"][0]
    # A folder whose labels have fewer training photos than small_label_photos is small there (per label
    # on average: garbage26cn's ~48 and trashnet-trash's 50 are, garbage12's ~890 are not).
    small = {
        name: f["photos"]
        for name, f in split["folders"].items()
        if f["photos"] / f["labels"] * train_share < s["small_label_photos"]
    }
    photos, n_small = split["photos"], sum(small.values())
    held_out = sum(
        1
        for part in ("val", "test")
        for p in json.loads((BUNDLE / f"{part}_split.json").read_text())
        if p["source"] in small
    )
    small_train = n_small - held_out
    counts = {part: sum(c.values()) for part, c in split["counts"].items()}
    big_train = counts["train"] - small_train
    views, small_views = s["views"], s["small_label_views"]
    run = {
        "photos": photos,
        "small_photos": n_small,
        "small_folders": sorted(small),
        "train_photos": counts["train"],
        "small_train_photos": small_train,
        "val_photos": counts["val"],
        "views": views,
        "small_label_views": small_views,
        "cached_views": views * (photos - n_small) + small_views * n_small,
        "augmented_views": max(views - 2, 0) * (photos - n_small) + max(small_views - 2, 0) * n_small,
        "head_samples_per_epoch": views * big_train + small_views * small_train,
        "finetune_samples_per_epoch": big_train + math.ceil(small_views / views) * small_train,
        "head_epochs": s["head_epochs"],
        "finetune_epochs": s["finetune_epochs"],
        "batch_size": s["batch_size"],
        "timing": report["timing"],
    }
    if run["cached_views"] != report["timing"]["feature_cache_photos"]:
        print(
            f"note: {run['cached_views']} views projected, the shipped run cached "
            f"{report['timing']['feature_cache_photos']}"
        )
    return run


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def hm(s: float) -> str:
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--photos", type=int, default=64, help="photos measured (default 64)")
    p.add_argument("--depths", default="2,4,6,9,12,16", help="tail blocks to measure (default 2,4,6,9,12,16)")
    p.add_argument("--batches", type=int, default=3, help="timed training batches per depth (default 3)")
    args = p.parse_args()
    if args.quick:
        args.photos, args.batches, args.depths = 16, 1, "2,6"
    depths = [int(d) for d in args.depths.split(",")]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    load_before = os.getloadavg()

    import keras
    import tensorflow as tf

    from edge.model.preprocess import InputSpec
    from host_training.augment import augmentation
    from host_training.features import cached_activations, pooled_features
    from host_training.model import (
        build_classifier,
        cut_layer_name,
        resolve_weights,
        set_trainable,
        split_model,
    )
    from host_training.train import compile_for

    run = default_run()
    files = test_photos(args.photos)
    if not files:
        raise SystemExit("the depth benchmark needs real photos: ../shared/datasets/garbage12 is absent")
    n = len(files)
    n_classes = len(json.loads((BUNDLE / "model.json").read_text())["labels"])
    batch = run["batch_size"]
    rng = np.random.default_rng(0)

    # The cache as smartbin-train writes it (cached_activations: decoding one batch ahead, the mirror image,
    # augmented copies of a whole batch, the memory-mapped float32 file), timed on a folder of big labels
    # (views copies a photo) and one of small labels (small_label_views copies); a folder's photos are
    # consecutive in a run, so its batches are all of one kind. A first call on one photo measures what
    # every call costs once (tracing the front), which the projection leaves out.
    spec = InputSpec(224, 224)
    n_small = max(2, n // 4)
    big_views, small_views = [run["views"]] * n, [run["small_label_views"]] * n_small
    augment = augmentation(0)
    augment(tf.zeros((1, 224, 224, 3)), training=True)  # build

    model = build_classifier(n_classes, resolve_weights(None))
    results, pooled = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for depth in depths:
            cut = cut_layer_name(model, depth)
            front, tail = split_model(model, depth)

            def cache(name, photos, views, front=front):
                folder = Path(tmp) / name
                t0 = time.perf_counter()
                acts = cached_activations(front, photos, spec, folder, views, batch, augment)
                spent = time.perf_counter() - t0
                acts = np.array(acts)
                shutil.rmtree(folder)
                return spent, acts

            once_s, _ = cache("once", files[:1], [run["views"]])
            big_s, big = cache("big", files, big_views)
            small_s, small = cache("small", files[:n_small], small_views)
            big_photo_s = max(big_s - once_s, 0) / n
            small_photo_s = max(small_s - once_s, 0) / n_small
            acts = np.concatenate([big, small])
            del big, small
            n_views = len(acts)
            cache_s = (run["photos"] - run["small_photos"]) * big_photo_s + run[
                "small_photos"
            ] * small_photo_s
            cache_view_s = cache_s / run["cached_views"]
            view_bytes = int(np.prod(acts.shape[1:])) * 4

            # The tail's inference: pooled features for the head phase, the validation pass per epoch.
            to_pool = keras.Model(model.get_layer(cut).output, model.get_layer("pool").output)
            run_tail = tf.function(
                lambda x, to_pool=to_pool: to_pool(x, training=False), reduce_retracing=True
            )

            def tail_pass(run_tail=run_tail, acts=acts):
                step = 256  # as pooled_features runs it
                return np.concatenate(
                    [run_tail(acts[i : i + step]).numpy() for i in range(0, len(acts), step)]
                )

            tail_pass()  # traces
            infer_s = seconds(tail_pass) / n_views
            if pooled is None:
                pooled = pooled_features(model, cut, acts)

            # The tail's training step, as the fine-tuning phase runs it (compile_for: Adam, label smoothing).
            set_trainable(model, depth)
            compile_for(tail, 1e-4, 0.1)
            trainable = sum(int(np.prod(w.shape)) for w in tail.trainable_weights)
            labels = rng.integers(0, n_classes, n_views)
            weights = np.ones(n_views, np.float32)
            picks = [
                np.sort(rng.choice(n_views, batch, replace=n_views < batch)) for _ in range(args.batches + 1)
            ]
            tail.train_on_batch(acts[picks[0]], labels[picks[0]], sample_weight=weights[picks[0]])  # warm-up

            t0 = time.perf_counter()
            for pick in picks[1:]:
                tail.train_on_batch(acts[pick], labels[pick], sample_weight=weights[pick])
            train_s = (time.perf_counter() - t0) / (args.batches * batch)
            results.append(
                {
                    "tail_blocks": depth,
                    "cut": cut,
                    "cut_shape": list(acts.shape[1:]),
                    "trainable_weights": trainable,
                    "view_bytes": view_bytes,
                    "cache_s_per_photo": {"big": big_photo_s, "small": small_photo_s, "first_call": once_s},
                    "cache_s_per_view": cache_view_s,
                    "tail_infer_s_per_view": infer_s,
                    "tail_train_s_per_sample": train_s,
                }
            )
            print(
                f"tail {depth:2d}: cut {cut} {tuple(acts.shape[1:])}, "
                f"cache {1000 * cache_view_s:.1f} ms/view, "
                f"tail train {1000 * train_s:.1f} ms/sample, tail inference {1000 * infer_s:.1f} ms/view",
                flush=True,
            )
            del acts

        # The head on pooled features (the same for every depth), with its validation pass.
        set_trainable(model, 0)
        head = keras.Model(model.get_layer("pool").output, model.output)
        compile_for(head, 1e-3, 0.1)
        x = pooled[rng.integers(0, n_views, 64 * batch)]
        y = rng.integers(0, n_classes, len(x))
        val = (x[: run["val_photos"]], y[: run["val_photos"]])
        head.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0, validation_data=val)
        head_s = seconds(lambda: head.fit(x, y, batch_size=batch, epochs=1, verbose=0)) / len(x)
        head_val_s = seconds(lambda: head.evaluate(*val, batch_size=batch, verbose=0))

    t = run["timing"]
    fixed = t["split_s"] + t["quantise_s"] + t["evaluate_s"]
    for r in results:
        cache_s = r["cache_s_per_view"] * run["cached_views"]
        # the head phase as train_cached runs it: every cached view pooled, then the epochs on them
        head_phase = r["tail_infer_s_per_view"] * run["cached_views"] + run["head_epochs"] * (
            run["head_samples_per_epoch"] * head_s + head_val_s
        )
        epoch = (
            r["tail_train_s_per_sample"] * run["finetune_samples_per_epoch"]
            + r["tail_infer_s_per_view"] * run["val_photos"]
        )
        r["cache_gb"] = round(r["view_bytes"] * run["cached_views"] / 1e9, 2)
        r["projected"] = {
            "cache_s": cache_s,
            "head_phase_s": head_phase,
            "finetune_epoch_s": epoch,
            "measured_s": cache_s + head_phase + run["finetune_epochs"] * epoch,
        }
    # The shipped run (tail 2, the same code) against its projection now: how much slower a whole run went
    # than these short measurements (another machine of this kind, load, a long run's pace).
    ref = next((r["projected"] for r in results if r["tail_blocks"] == 2), None)
    pace = None
    if ref:
        pace = (t["feature_cache_s"] + t["finetune_s"]) / (
            ref["cache_s"] + run["finetune_epochs"] * ref["finetune_epoch_s"]
        )
    table = []
    for r in results:
        pr = r["projected"]
        pr["total_s"] = fixed + pr["measured_s"]
        pr["total_at_shipped_pace_s"] = fixed + (pace or 1) * pr["measured_s"]
        worst = pr["total_at_shipped_pace_s"]
        r["fits_hours"] = [h for h in HOURS if worst <= 3600 * h]
        table.append(
            [
                r["tail_blocks"],
                f"{r['trainable_weights']:,}",
                "x".join(map(str, r["cut_shape"])),
                f"{r['cache_gb']:.1f}",
                hm(pr["cache_s"]),
                hm(pr["head_phase_s"]),
                hm(pr["finetune_epoch_s"]),
                hm(pr["total_s"]),
                hm(worst) if pace else "-",
                ", ".join(f"{h} h" for h in r["fits_hours"]) or "no",
            ]
        )
    load_after = os.getloadavg()
    print(
        f"\nfine-tuning depth on this CPU ({os.cpu_count()} cores), {n} photos as {n_views} cached views at "
        f"224 px, batch {batch}, {args.batches} timed batches per depth; projected for the default run: "
        f"{run['photos']:,} photos, {run['cached_views']:,} cached views, {run['head_epochs']} head epochs "
        f"of {run['head_samples_per_epoch']:,} samples, {run['finetune_epochs']} fine-tuning epochs of "
        f"{run['finetune_samples_per_epoch']:,} samples (+ {run['val_photos']:,} val views each)\n"
    )
    print_table(
        [
            "tail_blocks",
            "trainable weights",
            "cut shape",
            "cache GB (f32)",
            "cache time",
            "head phase",
            "per epoch",
            "projected total",
            "at shipped pace",
            "fits",
        ],
        table,
    )
    print(
        f"\nhead {1e6 * head_s:.0f} us/sample + {head_val_s:.1f} s of validation per epoch; split, "
        f"quantisation and evaluation {fixed:.0f} s as the shipped run measured them; the head phase pools "
        "every cached view (as train_cached does now); 'per epoch' is the cost of each fine-tuning epoch"
    )
    if pace:
        print(
            f"the shipped run (tail 2) took {t['feature_cache_s']:.0f} s to cache and "
            f"{t['finetune_s'] / run['finetune_epochs']:.0f} s per fine-tuning epoch; projected now "
            f"{ref['cache_s']:.0f} s and {ref['finetune_epoch_s']:.0f} s: a whole run went {pace:.2f}x "
            "slower than these measurements, so 'at shipped pace' scales them by that, and 'fits' uses it"
        )
    print(
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine is shared, so "
        "figures measured under load are upper bounds"
    )
    write_result(
        "finetune_depth",
        args.out,
        {
            "photos": n,
            "views": n_views,
            "batches": args.batches,
            "load_average": {"before": load_before, "after": load_after},
            "head_s_per_sample": head_s,
            "head_val_s_per_epoch": head_val_s,
            "fixed_s": fixed,
            "shipped_pace": pace,
            "default_run": run,
            "depths": results,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
