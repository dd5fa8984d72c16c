"""Accuracy of the shipped bundle on its exported test split, float against int8, the threshold
curve, and the misrouting-cost sweep.

  .venv/bin/python bench/accuracy.py             # every held-out val and test photo
  .venv/bin/python bench/accuracy.py --quick     # 24 photos of each

int8 is measured here, now, through the edge's own classifier. The float
figures are the training run's own measurement of the float model on the same
photos (models/household34-mnv2/report.json): the bundle ships only the int8
model, so the float one cannot be re-run from a clean clone.

The sweep runs the bin decision (edge.model.decision.decide) at each confidence
threshold: the share of items sent to the fallback bin, the bin accuracy of
the rest, and the accuracy over all items when the fallback bin counts as
right only for items that belong in it. It writes the curve as a PNG.

The cost sweep scales what a hazardous item put in any other bin costs (the
taxonomy's ``costs``, every other mistake 1) and measures, per data folder,
hazardous recall against four-bin accuracy. The factor is chosen on the
validation split (the smallest that reaches the hazardous-recall target in
every folder) and then shown on the test split, so the test photos never
choose it. It writes that curve as a PNG too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import BUNDLE, SHARED, parser, print_table, write_result

THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.96, 0.05)]
TARGET_REST_ACCURACY = 0.99
HAZARD = "hazardous"
FACTORS = [1, 1.5, 2, 3, 5, 8, 12, 20, 30, 50]
TARGET_HAZARD_RECALL = 0.97


def with_hazard_factor(taxonomy, factor: float):
    """The taxonomy with a hazardous item in any other bin costing ``factor``, every other mistake 1."""
    import dataclasses

    bins = taxonomy.bin_ids
    costs = {t: {c: 0.0 if t == c else (factor if t == HAZARD else 1.0) for c in bins} for t in bins}
    return dataclasses.replace(taxonomy, costs=costs)


def bin_metrics(pred: list[str], truth: list[str], bins: list[str]) -> dict:
    from edge.model.evaluation import confusion_matrix, misrouted, scores

    r = scores(
        confusion_matrix([bins.index(t) for t in truth], [bins.index(p) for p in pred], len(bins)), bins
    )
    hazard = misrouted(r, HAZARD)
    wrong = sum(hazard.get("sent_to", {}).get(b, 0) for b in ("recyclable", "kitchen"))
    return {
        "n": r["n"],
        "bin_accuracy": r["accuracy"],
        "bin_balanced_accuracy": r["balanced_accuracy"],
        "hazardous_n": hazard.get("n", 0),
        "hazardous_recall": hazard.get("recall", float("nan")) if hazard.get("n") else float("nan"),
        "hazardous_to_recyclable_or_kitchen": wrong,
    }


def cost_sweep(probs: np.ndarray, truth_bins: list[str], folders: list[str], labels, taxonomy) -> list[dict]:
    """Per factor: the four-bin figures over all photos and per data folder."""
    from edge.model.evaluation import predicted_bins

    rows = []
    for factor in FACTORS:
        pred = predicted_bins(probs, labels, with_hazard_factor(taxonomy, factor))
        row = {"factor": factor, "all": bin_metrics(pred, truth_bins, taxonomy.bin_ids)}
        for folder in sorted(set(folders)):
            mine = [i for i, f in enumerate(folders) if f == folder]
            row[folder] = bin_metrics(
                [pred[i] for i in mine], [truth_bins[i] for i in mine], taxonomy.bin_ids
            )
        rows.append(row)
    return rows


def pick_factor(rows: list[dict]) -> dict:
    """The smallest factor reaching the hazardous-recall target in every folder with hazardous items."""

    def meets(row: dict) -> bool:
        recalls = [m["hazardous_recall"] for k, m in row.items() if k != "factor" and m["hazardous_n"]]
        return all(r >= TARGET_HAZARD_RECALL for r in recalls)

    meeting = [r for r in rows if meets(r)]
    return meeting[0] if meeting else max(rows, key=lambda r: r["all"]["hazardous_recall"])


def plot_costs(val: list[dict], test: list[dict], chosen: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series = [(val, "all", "o-", "val, all folders"), (test, "all", "s-", "test, all folders")]
    series += [(test, k, "^--", f"test, {k}") for k in test[0] if k not in ("factor", "all")]
    for rows, key, style, label in series:
        if not rows[0][key]["hazardous_n"]:
            continue
        xs = [100 * r[key]["hazardous_recall"] for r in rows]
        ys = [100 * r[key]["bin_accuracy"] for r in rows]
        ax.plot(xs, ys, style, label=label, ms=4)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['factor']:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.axvline(100 * TARGET_HAZARD_RECALL, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("hazardous recall (%)")
    ax.set_ylabel("four-bin accuracy (%)")
    ax.set_title(
        f"cost of a hazardous item in another bin (labels: factor; chosen on val: {chosen:g})", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep(probs: np.ndarray, truth_bins: list[str], labels: list[str], taxonomy) -> list[dict]:
    from edge.model.decision import decide

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
    p.add_argument("--model", default=str(BUNDLE), help=f"the bundle to score (default {BUNDLE.name})")
    args = p.parse_args()
    bundle = Path(args.model)
    from tqdm import tqdm

    from edge.config import ModelConfig
    from edge.images import read_image
    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier
    from edge.model.evaluation import score_predictions

    splits = {name: json.loads((bundle / f"{name}_split.json").read_text()) for name in ("test", "val")}
    if not (SHARED / "garbage12").is_dir():
        raise SystemExit(f"the test photos are in {SHARED}/garbage12, which is absent")
    if args.quick:
        splits = {k: v[:: max(1, len(v) // 24)][:24] for k, v in splits.items()}
    classifier = Classifier(load_bundle(bundle), threads=args.threads)
    labels, taxonomy = classifier.labels, classifier.bundle.taxonomy
    all_probs = {
        name: np.stack(
            [
                classifier.predict(read_image(SHARED / s["source"] / s["path"]))
                for s in tqdm(photos, desc=f"int8, {name}", unit="photo")
            ]
        )
        for name, photos in splits.items()
    }
    split, probs = splits["test"], all_probs["test"]
    truth = [s["label"] for s in split]
    int8 = score_predictions(probs, truth, labels, taxonomy)
    report = json.loads((bundle / "report.json").read_text())["result"]
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
    val_rows = sweep(all_probs["val"], [taxonomy.bin_of(s["label"]) for s in splits["val"]], labels, taxonomy)
    default = ModelConfig().threshold
    chosen = pick(val_rows)
    print("\nconfidence threshold sweep (int8, measured now, test split):\n")
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
        f"{TARGET_REST_ACCURACY:.0%} bin accuracy on the validation split: {chosen['threshold']:.2f} "
        f"({100 * chosen['fallback_share']:.1f}% of val to the fallback bin)"
    )
    sweeps = {
        name: cost_sweep(
            all_probs[name],
            [taxonomy.bin_of(s["label"]) for s in photos],
            [s["source"] for s in photos],
            labels,
            taxonomy,
        )
        for name, photos in splits.items()
    }
    picked = pick_factor(sweeps["val"])["factor"]
    shipped = taxonomy.cost(HAZARD, "recyclable") if HAZARD in taxonomy.bins else None
    print(
        "\ncost sweep (int8, measured now): a hazardous item in another bin costs FACTOR, "
        "every other mistake 1; chosen on val, shown on test\n"
    )
    folders = [k for k in sweeps["test"][0] if k != "factor"]
    print_table(
        ["factor", *[f"{f}: bin acc % / hazard recall % / to rec+kit" for f in folders]],
        [
            [
                f"{r['factor']:g}"
                + (" *" if r["factor"] == shipped else "")
                + (" <" if r["factor"] == picked else ""),
                *[
                    f"{100 * r[f]['bin_accuracy']:.2f} / {100 * r[f]['hazardous_recall']:.1f} / "
                    f"{r[f]['hazardous_to_recyclable_or_kitchen']}"
                    for f in folders
                ],
            ]
            for r in sweeps["test"]
        ],
    )
    print(
        f"\n* the shipped taxonomy's factor; < the smallest factor whose val hazardous recall reaches "
        f"{TARGET_HAZARD_RECALL:.0%} in every folder: {picked:g}"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, default, out / "threshold.png")
    plot_costs(sweeps["val"], sweeps["test"], picked, out / "costs.png")
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
            "sweep_val": val_rows,
            "default_threshold": default,
            "lowest_threshold_meeting_target_on_val": chosen["threshold"],
            "target_rest_bin_accuracy": TARGET_REST_ACCURACY,
            "cost_sweep": sweeps,
            "hazard_factor_chosen_on_val": picked,
            "hazard_factor_shipped": shipped,
            "target_hazardous_recall": TARGET_HAZARD_RECALL,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
