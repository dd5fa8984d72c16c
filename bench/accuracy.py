"""Accuracy of the shipped bundle on its exported test split, float against int8, the threshold
curve, and the misrouting-cost sweep.

  .venv/bin/python bench/accuracy.py             # every held-out val and test photo
  .venv/bin/python bench/accuracy.py --quick     # 24 photos of each

int8 is measured here, now, through the edge's own classifier. The float
figures are the training run's own measurement of the float model on the same
photos (models/household38-mnv2/report.json): the bundle ships only the int8
model, so the float one cannot be re-run from a clean clone.

The sweep runs the bin decision (edge.model.decision.decide) at each confidence
threshold: the share of items sent to the fallback bin, the bin accuracy of
the rest, and the accuracy over all items when the fallback bin counts as
right only for items that belong in it. It writes the curve as a PNG.

The cost sweep prices both harms: ``a`` is what a hazardous item put in any other
bin costs, ``b`` what a non-hazardous item put in the hazardous bin costs (every
other mistake 1), each pair with every threshold of the threshold sweep. Every
candidate runs the bin decision (decide's own rule, vectorised and checked
against decide photo by photo for the candidates shown) on the validation
split, scored per data folder, never pooled: hazardous recall, hazardous items
sent to recyclable or kitchen, non-hazardous items sent to hazardous, four-bin
accuracy and balanced accuracy. It chooses on validation: among the candidates
that reach the limits (MIN_HAZARD_RECALL, MAX_HAZARD_TO_REC_KIT, MAX_TO_HAZARD)
in every folder (the hazardous ones vacuous where a folder has no hazardous
photo), the best worst-folder four-bin balanced accuracy; if none reaches them
all, the smallest worst violation, and it says by how much that misses. The
choice and the costs the model was trained with are then shown on the test
split, per folder, so the test photos never choose. It writes b's curve at the
chosen a and threshold as a PNG.

  .venv/bin/python bench/accuracy.py --cache /tmp/smartbin-int8.npz   # keep the int8 outputs for reruns
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from common import BUNDLE, SHARED, parser, print_table, write_result

THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.96, 0.05)]
TARGET_REST_ACCURACY = 0.99
HAZARD = "hazardous"
MISROUTED_TO = ("recyclable", "kitchen")  # where a hazardous item does the harm the costs exist to prevent
# The cost grid, each pair with every threshold of THRESHOLDS: A is what a hazardous item put in any other
# bin costs, B what a non-hazardous item put in the hazardous bin costs; every other mistake costs 1.
COST_A = [1, 1.5, 2, 3, 4, 5, 6, 8, 12, 20]
COST_B = [1, 1.25, 1.5, 2, 3, 4, 6]
# What a candidate must reach on the validation split in every data folder: the first two where the
# folder has hazardous photos, the third in every folder.
MIN_HAZARD_RECALL = 0.97
MAX_HAZARD_TO_REC_KIT = 0.01
MAX_TO_HAZARD = 0.01


def priced(bins: list[str], a: float, b: float) -> dict[str, dict[str, float]]:
    """The cost matrix (true bin -> chosen bin): a hazardous item in another bin costs ``a``, another
    item in the hazardous bin ``b``, every other mistake 1."""
    return {
        t: {c: 0.0 if t == c else float(a) if t == HAZARD else float(b) if c == HAZARD else 1.0 for c in bins}
        for t in bins
    }


def hazard_prices(costs: dict | None) -> tuple[float, float] | None:
    """(a, b) when ``costs`` has the shape :func:`priced` writes, else None."""
    if costs is None:
        return None
    a, b = costs[HAZARD][MISROUTED_TO[0]], costs[MISROUTED_TO[0]][HAZARD]
    return (a, b) if costs == priced(list(costs), a, b) else None


def bin_matrix(probs: np.ndarray, labels: list[str], taxonomy) -> np.ndarray:
    """Per photo, each bin's probability, as edge.model.decision.bin_probabilities computes it: the same
    float64 operations in the same order, so the same values and the same ties."""
    bins = taxonomy.bin_ids
    sums = np.zeros((len(probs), len(bins)))
    for j, label in enumerate(labels):
        bin_id = taxonomy.bin_of(label)
        if bin_id is not None:
            sums[:, bins.index(bin_id)] += probs[:, j].astype(np.float64)
    total = np.zeros(len(probs))
    for k in range(len(bins)):
        total = total + sums[:, k]
    return np.where(total[:, None] > 0, sums / np.where(total > 0, total, 1.0)[:, None], 0.0)


class Decider:
    """edge.model.decision.decide for many photos and many costs and thresholds at once.

    Per photo the least-expected-cost bin (the first of equals, as ``min`` over the bins takes it), the
    most probable bin, and below the threshold the fallback bin unless the costs moved the item. Checked
    against decide itself, photo by photo, for every candidate the script shows (:meth:`check`).
    """

    def __init__(self, probs: np.ndarray, labels: list[str], taxonomy) -> None:
        from edge.model.decision import decide

        self.probs, self.labels, self.taxonomy = probs, labels, taxonomy
        self.bins = taxonomy.bin_ids
        self.p = bin_matrix(probs, labels, taxonomy)
        self.likeliest = self.p.argmax(axis=1)
        self.top = self.p[np.arange(len(self.p)), self.likeliest]
        self.fallback = self.bins.index(taxonomy.default_bin)
        # a photo whose top item is a label meaning "no item" gets no bin (none among the shipped labels)
        self.empty = np.zeros(len(probs), dtype=bool)
        if any(taxonomy.bin_of(label) is None for label in labels):
            self.empty = np.array([decide(row, labels, taxonomy, threshold=0.0).bin is None for row in probs])

    def least_cost(self, costs: dict | None) -> np.ndarray:
        if costs is None:
            return self.likeliest
        expected = np.zeros_like(self.p)
        for c, chosen in enumerate(self.bins):
            acc = np.zeros(len(self.p))
            for t, true in enumerate(self.bins):
                acc = acc + self.p[:, t] * costs[true][chosen]
            expected[:, c] = acc
        return expected.argmin(axis=1)

    def bins_at(self, best: np.ndarray, threshold: float) -> np.ndarray:
        """The chosen bin's index per photo (-1: no item)."""
        chosen = np.where((self.top < threshold) & (best == self.likeliest), self.fallback, best)
        return np.where(self.empty, -1, chosen)

    def check(self, costs: dict | None, threshold: float) -> np.ndarray:
        """The bins of :meth:`bins_at`, after checking them against decide() on every photo."""
        import dataclasses

        from edge.model.decision import decide

        chosen = self.bins_at(self.least_cost(costs), threshold)
        tax = dataclasses.replace(self.taxonomy, costs=costs)
        for i, row in enumerate(self.probs):
            d = decide(row, self.labels, tax, threshold=threshold)
            expected = -1 if d.bin is None else self.bins.index(d.bin)
            if expected != chosen[i]:
                raise AssertionError(f"photo {i}: decide() says {d.bin}, the cost sweep says {chosen[i]}")
        return chosen


def folder_figures(pred: np.ndarray, truth: np.ndarray, bins: list[str]) -> dict:
    """The five figures of one data folder (and their counts): truth and pred are bin indices."""
    h = bins.index(HAZARD)
    hazardous = truth == h
    n_h, n_other = int(hazardous.sum()), int((~hazardous).sum())
    to_rk = int(np.isin(pred[hazardous], [bins.index(b) for b in MISROUTED_TO]).sum())
    to_h = int((pred[~hazardous] == h).sum())
    recalls = [float(np.mean(pred[truth == k] == k)) for k in range(len(bins)) if (truth == k).any()]
    return {
        "n": int(len(truth)),
        "hazardous_n": n_h,
        "hazardous_to_hazardous": int((pred[hazardous] == h).sum()),
        "hazardous_recall": float(np.mean(pred[hazardous] == h)) if n_h else None,
        "hazardous_to_recyclable_or_kitchen": to_rk,
        "hazardous_to_recyclable_or_kitchen_share": to_rk / n_h if n_h else None,
        "non_hazardous_n": n_other,
        "non_hazardous_to_hazardous": to_h,
        "non_hazardous_to_hazardous_share": to_h / n_other if n_other else None,
        "bin_accuracy": float(np.mean(pred == truth)),
        "bin_balanced_accuracy": float(np.mean(recalls)),
    }


def violations(folders: dict[str, dict]) -> dict[str, float]:
    """How far each figure misses its limit (0 where it meets it), as a share; vacuous ones left out."""
    out = {}
    for name, m in folders.items():
        if m["hazardous_n"]:
            out[f"{name}: hazardous recall"] = max(0.0, MIN_HAZARD_RECALL - m["hazardous_recall"])
            out[f"{name}: hazardous to rec/kit"] = max(
                0.0, m["hazardous_to_recyclable_or_kitchen_share"] - MAX_HAZARD_TO_REC_KIT
            )
        if m["non_hazardous_n"]:
            out[f"{name}: non-hazardous to hazardous"] = max(
                0.0, m["non_hazardous_to_hazardous_share"] - MAX_TO_HAZARD
            )
    return out


class Split:
    """One split's photos, ready to be scored per data folder under any costs and threshold."""

    def __init__(self, probs: np.ndarray, photos: list[dict], labels: list[str], taxonomy) -> None:
        self.decider = Decider(probs, labels, taxonomy)
        bins = taxonomy.bin_ids
        self.truth = np.array([bins.index(taxonomy.bin_of(s["label"])) for s in photos])
        sources = np.array([s["source"] for s in photos])
        self.folders = {f: sources == f for f in sorted(set(sources.tolist()))}

    def figures(self, pred: np.ndarray) -> dict[str, dict]:
        bins = self.decider.bins
        return {f: folder_figures(pred[m], self.truth[m], bins) for f, m in self.folders.items()}

    def score(self, costs: dict | None, threshold: float, check: bool = False) -> dict[str, dict]:
        d = self.decider
        return self.figures(d.check(costs, threshold) if check else d.bins_at(d.least_cost(costs), threshold))


def cost_grid(val: Split) -> list[dict]:
    """Every candidate (a, b, threshold) on the validation split, per data folder, ranked best first:
    those meeting every limit in every folder by their worst folder's four-bin balanced accuracy; then
    the rest by their worst violation (ties: the smaller sum of violations, then as above). Remaining
    ties go to the smaller a, then b, then the threshold nearest the default."""
    from edge.model.decision import DEFAULT_THRESHOLD

    bins = val.decider.bins
    rows = []
    for a in COST_A:
        for b in COST_B:
            best = val.decider.least_cost(priced(bins, a, b))
            for t in THRESHOLDS:
                folders = val.figures(val.decider.bins_at(best, t))
                missed = violations(folders)
                rows.append(
                    {
                        "a": a,
                        "b": b,
                        "threshold": t,
                        "worst_balanced_accuracy": min(m["bin_balanced_accuracy"] for m in folders.values()),
                        "worst_violation": max(missed.values(), default=0.0),
                        "worst_violation_of": max(missed, key=missed.__getitem__)
                        if any(missed.values())
                        else None,
                        "violations_sum": sum(missed.values()),
                        "folders": folders,
                    }
                )
    rows.sort(
        key=lambda r: (
            r["worst_violation"],
            r["violations_sum"],
            -r["worst_balanced_accuracy"],
            r["a"],
            r["b"],
            abs(r["threshold"] - DEFAULT_THRESHOLD),
        )
    )
    return rows


def pct(x: float | None, places: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{places}f}"


def figure_cells(m: dict) -> list[str]:
    """The five figures of a folder as the tables print them."""
    if m["hazardous_n"]:
        n_h = m["hazardous_n"]
        recall = f"{pct(m['hazardous_recall'], 1)} ({m['hazardous_to_hazardous']}/{n_h})"
        share, count = m["hazardous_to_recyclable_or_kitchen_share"], m["hazardous_to_recyclable_or_kitchen"]
        to_rk = f"{pct(share)} ({count})"
    else:
        recall = to_rk = "- (no hazardous)"
    return [
        recall,
        to_rk,
        f"{pct(m['non_hazardous_to_hazardous_share'])} "
        f"({m['non_hazardous_to_hazardous']}/{m['non_hazardous_n']})",
        pct(m["bin_accuracy"]),
        pct(m["bin_balanced_accuracy"]),
    ]


FIGURE_HEADERS = [
    "hazardous recall %",
    "hazardous to rec/kit %",
    "non-hazardous to hazardous %",
    "four-bin acc %",
    "four-bin bal acc %",
]


def print_candidates(title: str, shown: dict[str, dict]) -> None:
    """Per data folder, one row per candidate."""
    print(title)
    rows = []
    folders = next(iter(shown.values())).keys()
    for folder in folders:
        for name, figures in shown.items():
            rows.append([f"{folder}: {name}", *figure_cells(figures[folder])])
    print_table(["folder: costs, threshold", *FIGURE_HEADERS], rows)


def plot_costs(curves: dict[str, dict[float, dict]], a: float, threshold: float, path) -> None:
    """Per data folder, hazardous recall and the share of other items sent to hazardous against b,
    at the chosen a and threshold, on val (chosen there) and test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    colours = {}
    for split, style in (("val", "o-"), ("test", "s--")):
        by_b = curves[split]
        for folder in next(iter(by_b.values())):
            colour = colours.setdefault(folder, f"C{len(colours)}")
            xs = list(by_b)
            if by_b[xs[0]][folder]["hazardous_n"]:
                ys = [100 * by_b[b][folder]["hazardous_recall"] for b in xs]
                left.plot(xs, ys, style, color=colour, ms=4, label=f"{split}, {folder}")
            ys = [100 * by_b[b][folder]["non_hazardous_to_hazardous_share"] for b in xs]
            right.plot(xs, ys, style, color=colour, ms=4, label=f"{split}, {folder}")
    left.axhline(100 * MIN_HAZARD_RECALL, color="grey", lw=0.8, ls=":")
    right.axhline(100 * MAX_TO_HAZARD, color="grey", lw=0.8, ls=":")
    left.set_ylabel("hazardous recall (%)")
    right.set_ylabel("non-hazardous items sent to hazardous (%)")
    for ax in (left, right):
        ax.set_xlabel("b: cost of a non-hazardous item in the hazardous bin")
        ax.legend(fontsize=6)
    fig.suptitle(
        f"per data folder, a = {a:g} (a hazardous item in another bin), threshold {threshold:.2f}; "
        "dotted: the limits",
        fontsize=9,
    )
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


def cache_key(bundle: Path, runtime: str, splits: dict) -> str:
    """What the int8 outputs depend on: the bundle's model.json (the model's sha256 and its calibration),
    the runtime and the photos."""
    digest = hashlib.sha256((bundle / "model.json").read_bytes())
    digest.update(json.dumps([runtime, splits], sort_keys=True).encode())
    return digest.hexdigest()


def cached(path: str | None, key: str, compute) -> dict[str, np.ndarray]:
    """``compute()``, or what it gave last time with the same key, kept in ``path`` (.npz)."""
    if path and Path(path).is_file():
        with np.load(path) as kept:
            if str(kept["key"]) == key:
                print(f"int8 outputs from {path} (same bundle, runtime and photos)")
                return {k: kept[k] for k in kept.files if k != "key"}
    result = compute()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, key=np.array(key), **result)
    return result


def int8_outputs(
    classifier, bundle: Path, splits: dict[str, list[dict]], cache: str | None
) -> dict[str, np.ndarray]:
    """The classifier's output for every photo of each split, kept in ``cache`` (see :func:`cached`)."""
    from tqdm import tqdm

    from edge.images import read_image

    def predict_all() -> dict[str, np.ndarray]:
        return {
            name: np.stack(
                [
                    classifier.predict(read_image(SHARED / s["source"] / s["path"]))
                    for s in tqdm(photos, desc=f"int8, {name}", unit="photo")
                ]
            )
            for name, photos in splits.items()
        }

    return cached(cache, cache_key(bundle, classifier.runtime, splits), predict_all)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument("--model", default=str(BUNDLE), help=f"the bundle to score (default {BUNDLE.name})")
    p.add_argument(
        "--cache",
        metavar="FILE",
        help="keep the int8 outputs in FILE (.npz); reused while the bundle and the photos are the same",
    )
    args = p.parse_args()
    bundle = Path(args.model)

    from edge.config import ModelConfig
    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier
    from edge.model.evaluation import score_predictions
    from edge.model.taxonomy import load_taxonomy
    from edge.paths import TAXONOMIES

    splits = {name: json.loads((bundle / f"{name}_split.json").read_text()) for name in ("test", "val")}
    if not (SHARED / "garbage12").is_dir():
        raise SystemExit(f"the test photos are in {SHARED}/garbage12, which is absent")
    if args.quick:
        splits = {k: v[:: max(1, len(v) // 24)][:24] for k, v in splits.items()}
    classifier = Classifier(load_bundle(bundle), threads=args.threads)
    labels, taxonomy = classifier.labels, classifier.bundle.taxonomy

    all_probs = int8_outputs(classifier, bundle, splits, args.cache)
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
    # the shipped taxonomy names one thing once (concepts); this bundle's own taxonomy has none
    named = score_predictions(probs, truth, labels, load_taxonomy(TAXONOMIES / "cn-4bin.yaml"))
    by_concept = {m: named["concept"][m] for m in ("accuracy", "balanced_accuracy", "n")}
    print(
        f"\nitem accuracy by concept (config/taxonomy/cn-4bin.yaml), int8 measured now: "
        f"{by_concept['accuracy']:.2%} (balanced {by_concept['balanced_accuracy']:.2%}), against "
        f"{int8['item']['accuracy']:.2%} ({int8['item']['balanced_accuracy']:.2%}) by label"
    )
    # the bin figures below are over waste photos: a never-tip photo (a hand) has no right bin
    waste = {
        name: [i for i, s in enumerate(photos) if taxonomy.bin_of(s["label"]) is not None]
        for name, photos in splits.items()
    }
    waste_probs = {name: all_probs[name][keep] for name, keep in waste.items()}
    waste_photos = {name: [splits[name][i] for i in keep] for name, keep in waste.items()}
    rows = sweep(
        waste_probs["test"], [taxonomy.bin_of(s["label"]) for s in waste_photos["test"]], labels, taxonomy
    )
    val_rows = sweep(
        waste_probs["val"], [taxonomy.bin_of(s["label"]) for s in waste_photos["val"]], labels, taxonomy
    )
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
    scored = {
        name: Split(waste_probs[name], photos, labels, taxonomy) for name, photos in waste_photos.items()
    }
    bins = taxonomy.bin_ids
    grid = cost_grid(scored["val"])
    best = grid[0]
    a, b, t = best["a"], best["b"], best["threshold"]
    new_costs = priced(bins, a, b)
    trained = hazard_prices(taxonomy.costs)  # what model.json carries: the costs the model was trained with
    shipped_costs = load_taxonomy(TAXONOMIES / "cn-4bin.yaml").costs
    shipped = hazard_prices(shipped_costs)

    def name(costs: dict | None, threshold: float) -> str:
        ab = hazard_prices(costs)
        what = "no costs" if costs is None else f"a={ab[0]:g}, b={ab[1]:g}" if ab else "model.json costs"
        return f"{what}, t={threshold:.2f}"

    shown = {
        f"today: {name(taxonomy.costs, default)}": (taxonomy.costs, default),
        f"chosen: {name(new_costs, t)}": (new_costs, t),
        f"today's costs at t={t:.2f}": (taxonomy.costs, t),
    }
    met = [r for r in grid if r["worst_violation"] == 0]
    print(
        f"\ncost grid on the validation split, per data folder (int8, measured now): a = what a hazardous "
        f"item in another bin costs ({', '.join(f'{x:g}' for x in COST_A)}), b = what a non-hazardous item "
        f"in the hazardous bin costs ({', '.join(f'{x:g}' for x in COST_B)}), every other mistake 1, "
        f"thresholds {THRESHOLDS[0]:.2f}-{THRESHOLDS[-1]:.2f}: {len(grid)} candidates. Limits in every "
        f"folder: hazardous recall >= {MIN_HAZARD_RECALL:.0%}, hazardous to rec/kit <= "
        f"{MAX_HAZARD_TO_REC_KIT:.0%}, non-hazardous to hazardous <= {MAX_TO_HAZARD:.0%}. "
        f"{len(met)} meet them all. The ten best:\n"
    )
    print_table(
        ["a", "b", "threshold", "worst violation (points)", "of", "sum of violations", "worst bal acc %"],
        [
            [
                f"{r['a']:g}",
                f"{r['b']:g}",
                f"{r['threshold']:.2f}",
                pct(r["worst_violation"]),
                r["worst_violation_of"] or "-",
                pct(r["violations_sum"]),
                pct(r["worst_balanced_accuracy"]),
            ]
            for r in grid[:10]
        ],
    )
    if met:
        verdict = (
            f"chosen: a={a:g}, b={b:g}, threshold {t:.2f}: meets every limit in every folder, worst-folder "
            f"four-bin balanced accuracy {pct(best['worst_balanced_accuracy'])}%"
        )
    else:
        verdict = (
            f"no candidate meets every limit on val; chosen, the smallest worst violation: a={a:g}, b={b:g}, "
            f"threshold {t:.2f}, which misses by {pct(best['worst_violation'])} points "
            f"({best['worst_violation_of']})"
        )
    print(f"\n{verdict}")
    two_bin = f"{b / (a + b):.1%}"
    print(
        f"its two-bin break-even: an item goes to hazardous when p(hazardous) * {a:g} > "
        f"(1 - p(hazardous)) * {b:g}, p(hazardous) > {two_bin}"
    )
    print(
        f"the shipped taxonomy file (config/taxonomy/cn-4bin.yaml): {name(shipped_costs, t).split(', t=')[0]}"
        + (" (the chosen costs)" if shipped_costs == new_costs else " (NOT the chosen costs)")
        + f"; the model (model.json) was trained with {name(taxonomy.costs, t).split(', t=')[0]}; "
        f"the default threshold is {default}" + ("" if t == default else f" (chosen: {t:.2f})")
    )
    results = {}
    for split_name in ("val", "test"):
        results[split_name] = {
            label: scored[split_name].score(costs, threshold, check=True)
            for label, (costs, threshold) in shown.items()
        }
        print_candidates(
            f"\n{split_name} split, per data folder "
            + ("(chosen here)" if split_name == "val" else "(shown, never chosen on)")
            + ": hazardous recall, hazardous sent to recyclable or kitchen, non-hazardous sent to "
            "hazardous, four-bin accuracy and balanced accuracy; checked against decide() photo by photo\n",
            results[split_name],
        )
    curves = {
        split_name: {x: scored[split_name].score(priced(bins, a, x), t) for x in sorted({*COST_B, b})}
        for split_name in ("val", "test")
    }
    print(
        f"\nb at a={a:g}, threshold {t:.2f}, per data folder: hazardous recall % / "
        "non-hazardous to hazardous %\n"
    )
    folder_names = list(next(iter(curves["val"].values())))
    print_table(
        ["b", *[f"{s}: {f}" for s in ("val", "test") for f in folder_names]],
        [
            [
                f"{x:g}" + (" <" if x == b else ""),
                *[
                    f"{pct(curves[s][x][f]['hazardous_recall'], 1)} / "
                    f"{pct(curves[s][x][f]['non_hazardous_to_hazardous_share'])}"
                    for s in ("val", "test")
                    for f in folder_names
                ],
            ]
            for x in curves["val"]
        ],
    )
    # a at the chosen b and threshold, per folder (the curve the one-factor sweep drew)
    sweeps = {
        split_name: [
            {"factor": x, "b": b, "threshold": t, **scored[split_name].score(priced(bins, x, b), t)}
            for x in COST_A
        ]
        for split_name in ("val", "test")
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, default, out / "threshold.png")
    plot_costs(curves, a, t, out / "costs.png")
    write_result(
        "accuracy",
        args.out,
        {
            "photos": len(split),
            "int8_measured": {
                k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "n")} for k, v in int8.items()
            },
            "int8_measured_by_concept_of_cn_4bin_yaml": by_concept,
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
            "cost_limits": {
                "min_hazardous_recall": MIN_HAZARD_RECALL,
                "max_hazardous_to_recyclable_or_kitchen": MAX_HAZARD_TO_REC_KIT,
                "max_non_hazardous_to_hazardous": MAX_TO_HAZARD,
            },
            "cost_grid": {"a": COST_A, "b": COST_B, "thresholds": THRESHOLDS, "candidates": len(grid)},
            "cost_grid_val_best": grid[:10],
            "cost_choice": {
                "a": a,
                "b": b,
                "threshold": t,
                "meets_every_limit": bool(met),
                "worst_violation": best["worst_violation"],
                "worst_violation_of": best["worst_violation_of"],
                "two_bin_break_even": b / (a + b),
                "costs": new_costs,
            },
            "costs_trained_with": taxonomy.costs,
            "costs_shipped": shipped_costs,
            "costs_shown": {k: {"costs": c, "threshold": th} for k, (c, th) in shown.items()},
            "cost_results": results,
            "cost_curve_b": {s: [{"b": x, **v} for x, v in c.items()] for s, c in curves.items()},
            "cost_sweep": sweeps,
            "hazard_factor_chosen_on_val": a,
            "hazard_factor_shipped": shipped[0] if shipped else None,
            "hazard_factor_trained_with": trained[0] if trained else None,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
