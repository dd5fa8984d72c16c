"""Accuracy of the shipped bundle on its exported test split, float against int8, and the threshold curve.

  .venv/bin/python bench/accuracy.py             # all 2,281 held-out test photos
  .venv/bin/python bench/accuracy.py --quick     # 24 photos

int8 is measured here, now, through the edge's own classifier. The float
figures are the training run's own measurement of the float model on the same
photos (models/garbage12-mnv2/report.json): the bundle ships only the int8
model, so the float one cannot be re-run from a clean clone.

The sweep runs the bin decision (edge.decision.decide) at each confidence
threshold: the share of items sent to the fallback bin, the bin accuracy of
the rest, and the accuracy over all items when the fallback bin counts as
right only for items that belong in it. It writes the curve as a PNG.
"""

from __future__ import annotations

import json

import numpy as np
from common import BUNDLE, SHARED, parser, print_table, write_result

THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.96, 0.05)]
TARGET_REST_ACCURACY = 0.99


def sweep(probs: np.ndarray, truth_bins: list[str], labels: list[str], taxonomy) -> list[dict]:
    from edge.decision import decide

    rows = []
    for t in THRESHOLDS:
        decisions = [decide(p, labels, taxonomy, threshold=t) for p in probs]
        certain = [i for i, d in enumerate(decisions) if not d.uncertain]
        right = [d.bin == b for d, b in zip(decisions, truth_bins)]
        rows.append(
            {
                "threshold": t,
                "fallback_share": 1 - len(certain) / len(decisions),
                "rest_bin_accuracy": float(np.mean([right[i] for i in certain])) if certain else float("nan"),
                "overall_bin_accuracy": float(np.mean(right)),
            }
        )
    return rows


def pick(rows: list[dict]) -> dict:
    """The lowest threshold whose certain items reach the target: the fewest items sent to the fallback."""
    meeting = [r for r in rows if r["rest_bin_accuracy"] >= TARGET_REST_ACCURACY]
    return meeting[0] if meeting else max(rows, key=lambda r: r["overall_bin_accuracy"])


def plot(rows: list[dict], default: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    share = [100 * r["fallback_share"] for r in rows]
    ax.plot(share, [100 * r["rest_bin_accuracy"] for r in rows], "o-", label="bin accuracy of the rest")
    ax.plot(share, [100 * r["overall_bin_accuracy"] for r in rows], "s--", label="bin accuracy of all items")
    for r, x in zip(rows, share):
        ax.annotate(
            f"{r['threshold']:.2f}",
            (x, 100 * r["rest_bin_accuracy"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 4),
        )
    ax.axhline(100 * TARGET_REST_ACCURACY, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("items sent to the fallback bin (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"confidence threshold sweep (labels: threshold; default {default:.2f})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    args = p.parse_args()
    from tqdm import tqdm

    from edge.bundle import load_bundle
    from edge.classifier import Classifier
    from edge.config import ModelConfig
    from edge.evaluation import score_predictions
    from edge.images import read_image

    split = json.loads((BUNDLE / "test_split.json").read_text())
    if not (SHARED / "garbage12").is_dir():
        raise SystemExit(f"the test photos are in {SHARED}/garbage12, which is absent")
    if args.quick:
        split = split[:: max(1, len(split) // 24)][:24]
    classifier = Classifier(load_bundle(BUNDLE), threads=args.threads)
    labels, taxonomy = classifier.labels, classifier.bundle.taxonomy
    probs = np.stack(
        [
            classifier.predict(read_image(SHARED / s["source"] / s["path"]))
            for s in tqdm(split, desc="int8", unit="photo")
        ]
    )
    truth = [s["label"] for s in split]
    int8 = score_predictions(probs, truth, labels, taxonomy)
    report = json.loads((BUNDLE / "report.json").read_text())["result"]
    table = []
    for level in ("item", "bin"):
        table.append(
            [
                f"{level} accuracy",
                100 * report["float"][level]["accuracy"],
                100 * report["int8"][level]["accuracy"],
                100 * int8[level]["accuracy"],
            ]
        )
        table.append(
            [
                f"{level} balanced accuracy",
                100 * report["float"][level]["balanced_accuracy"],
                100 * report["int8"][level]["balanced_accuracy"],
                100 * int8[level]["balanced_accuracy"],
            ]
        )
    print(f"test split: {len(split)} photos ({report['n']} in the training run's report)\n")
    print_table(["%", "float (training run)", "int8 (training run)", "int8 (measured now)"], table)
    rows = sweep(probs, [taxonomy.bin_of(t) for t in truth], labels, taxonomy)
    default = ModelConfig().threshold
    chosen = pick(rows)
    print("\nconfidence threshold sweep (int8, measured now):\n")
    print_table(
        ["threshold", "to fallback %", "rest: bin acc %", "all: bin acc %"],
        [
            [
                f"{r['threshold']:.2f}" + (" *" if r["threshold"] == default else ""),
                100 * r["fallback_share"],
                100 * r["rest_bin_accuracy"],
                100 * r["overall_bin_accuracy"],
            ]
            for r in rows
        ],
    )
    print(
        f"\n* the default, model.threshold = {default}. The lowest threshold whose certain items reach "
        f"{TARGET_REST_ACCURACY:.0%} bin accuracy: {chosen['threshold']:.2f} "
        f"({100 * chosen['fallback_share']:.1f}% to the fallback bin)"
    )
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, default, out / "threshold.png")
    write_result(
        "accuracy",
        args.out,
        {
            "photos": len(split),
            "int8_measured": {
                k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "n")} for k, v in int8.items()
            },
            "float_training_run": {
                k: {m: v[m] for m in ("accuracy", "balanced_accuracy")} for k, v in report["float"].items()
            },
            "int8_training_run": {
                k: {m: v[m] for m in ("accuracy", "balanced_accuracy")} for k, v in report["int8"].items()
            },
            "sweep": rows,
            "default_threshold": default,
            "lowest_threshold_meeting_target": chosen["threshold"],
            "target_rest_bin_accuracy": TARGET_REST_ACCURACY,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
