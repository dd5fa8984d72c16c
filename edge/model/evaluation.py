"""Scoring predictions: the same numbers in the training report and `smartbin eval`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def confusion_matrix(true: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    """Rows are the true class, columns the predicted class."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, dtype=int), np.asarray(pred, dtype=int)), 1)
    return cm


def scores(cm: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over present classes), per-class P/R."""
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    hits = np.diag(cm)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(len(names)), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(len(names)), where=predicted > 0)
    total = int(cm.sum())
    return {
        "n": total,
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "labels": list(names),
        "confusion": cm.tolist(),
    }


def format_scores(result: dict[str, Any], title: str) -> str:
    names = result["labels"]
    cm = np.asarray(result["confusion"])
    width = max(8, *(len(n) for n in names))
    lines = [
        f"{title}: accuracy {result['accuracy']:.2%}, balanced accuracy "
        f"{result['balanced_accuracy']:.2%} on {result['n']} photos",
        f"{'class':<{width}}  precision  recall  support",
    ]
    for name in names:
        pc = result["per_class"][name]
        lines.append(f"{name:<{width}}  {pc['precision']:9.1%}  {pc['recall']:6.1%}  {pc['support']:7d}")
    abbrev = [n[:6] for n in names]
    lines.append(
        f"confusion (rows: true, columns: predicted)\n{'':<{width}}  " + " ".join(f"{a:>6}" for a in abbrev)
    )
    for name, row in zip(names, cm):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path, title: str) -> Path:
    """A PNG of the confusion matrix, rows normalised so small classes stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = 2.5 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predicted_bins(probs: np.ndarray, labels: Sequence[str], taxonomy: Any) -> list[str]:
    """The bin the taxonomy's decision chooses for each row of item probabilities (no threshold):
    the least expected cost, which is the most probable bin when the taxonomy has no costs."""
    from edge.model.decision import bin_probabilities, choose_bin

    return [choose_bin(bin_probabilities(row, labels, taxonomy), taxonomy) for row in np.atleast_2d(probs)]


def score_predictions(
    probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], taxonomy: Any
) -> dict[str, Any]:
    """Item and bin scores for rows of item probabilities against true labels or bin ids.

    Item scores only when every truth is a model label; then, when the taxonomy
    has concepts, concept scores too (the truth label's concept against the
    concept of the most summed probability, as the decision names it). Bin
    scores leave out photos whose truth has no bin (an ``empty`` tray).
    """
    from edge.model.decision import concept_probabilities

    labels = list(labels)
    result: dict[str, Any] = {}
    if all(t in labels for t in truth):
        true_items = [labels.index(t) for t in truth]
        result["item"] = scores(confusion_matrix(true_items, probs.argmax(1), len(labels)), labels)
        if taxonomy.concepts:
            names, summed = concept_probabilities(np.atleast_2d(probs), labels, taxonomy)
            true_concepts = [names.index(taxonomy.concept_of(t)) for t in truth]
            result["concept"] = scores(confusion_matrix(true_concepts, summed.argmax(1), len(names)), names)
    bins = taxonomy.bin_ids
    true_bins = [t if t in bins and t not in labels else taxonomy.bin_of(t) for t in truth]
    keep = [i for i, b in enumerate(true_bins) if b is not None]
    true_idx = [bins.index(true_bins[i]) for i in keep]

    def bin_scores(tax: Any) -> dict[str, Any]:
        pred = predicted_bins(probs[keep], labels, tax) if keep else []
        return scores(confusion_matrix(true_idx, [bins.index(b) for b in pred], len(bins)), bins)

    result["bin"] = bin_scores(taxonomy)
    if taxonomy.costs is not None:
        # what the costs changed: the same photos by the most probable bin alone
        result["bin_most_probable"] = bin_scores(dataclasses.replace(taxonomy, costs=None))
    return result


def misrouted(bin_result: dict[str, Any], true_bin: str) -> dict[str, Any]:
    """Where the items of ``true_bin`` went: its recall and the count sent to each other bin."""
    names = bin_result["labels"]
    if true_bin not in names:
        return {}
    row = bin_result["confusion"][names.index(true_bin)]
    n = sum(row)
    return {
        "bin": true_bin,
        "n": n,
        "recall": row[names.index(true_bin)] / n if n else 0.0,
        "sent_to": {b: c for b, c in zip(names, row) if b != true_bin},
    }


def bins_right(
    probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], taxonomy: Any
) -> list[bool | None]:
    """Per photo, whether the decision's bin is its true bin (``None``: its truth has no bin, like
    ``empty``). A truth is an item label (its bin from the taxonomy) or a bin id."""
    chosen = predicted_bins(probs, labels, taxonomy)
    right: list[bool | None] = []
    for bin_id, true in zip(chosen, truth):
        true_bin = true if true in taxonomy.bin_ids and true not in labels else taxonomy.bin_of(true)
        right.append(None if true_bin is None else bin_id == true_bin)
    return right


def compare_models(
    names: tuple[str, str], truth: Sequence[str], right: tuple[Sequence[bool | None], Sequence[bool | None]]
) -> dict[str, Any]:
    """Two models' bins on the same photos: accuracy overall and per true label, the photos each gets
    right that the other misses (by index), and a verdict."""
    scored = [i for i in range(len(truth)) if right[0][i] is not None and right[1][i] is not None]
    if not scored:
        raise ValueError("no photo has a bin to score")

    def accuracy(model: int, photos: Sequence[int]) -> float:
        return sum(bool(right[model][i]) for i in photos) / len(photos)

    per_label = {
        label: [accuracy(m, [i for i in scored if truth[i] == label]) for m in (0, 1)]
        for label in dict.fromkeys(truth[i] for i in scored)
    }
    overall = [accuracy(0, scored), accuracy(1, scored)]
    only = [[i for i in scored if right[m][i] and not right[1 - m][i]] for m in (0, 1)]
    points = (overall[1] - overall[0]) * 100
    if not only[0] and not only[1]:
        verdict = f"the same: both put the same {len(scored)} photos in the right bin and miss the same"
    else:
        better = names[1] if points > 0 else names[0]
        verdict = (
            f"{better} is better by {abs(points):.1f} points of bin accuracy"
            if points
            else "neither is better: as many photos each way"
        ) + (
            f" ({overall[0]:.1%} and {overall[1]:.1%} on {len(scored)} photos; "
            f"{names[1]} gets {len(only[1])} right that {names[0]} misses, "
            f"{names[0]} gets {len(only[0])} that {names[1]} misses)"
        )
    return {
        "models": list(names),
        "n": len(scored),
        "bin_accuracy": overall,
        "per_label": per_label,
        "only_first": only[0],
        "only_second": only[1],
        "verdict": verdict,
    }


def format_comparison(result: dict[str, Any], paths: Sequence[str], show: int = 10) -> str:
    a, b = result["models"]
    width = max(12, *(len(label) for label in result["per_label"]))
    lines = [
        f"bin accuracy on {result['n']} photos: {a} {result['bin_accuracy'][0]:.1%}, "
        f"{b} {result['bin_accuracy'][1]:.1%}",
        f"{'label':<{width}}  {'first':>7}  {'second':>7}",
    ]
    for label, (x, y) in result["per_label"].items():
        mark = "  <" if y < x else "  >" if y > x else ""
        lines.append(f"{label:<{width}}  {x:7.1%}  {y:7.1%}{mark}")
    for key, who, other in (("only_second", b, a), ("only_first", a, b)):
        photos = result[key]
        if photos:
            lines.append(f"{who} right, {other} wrong ({len(photos)}):")
            lines += [f"  {paths[i]}" for i in photos[:show]]
            if len(photos) > show:
                lines.append(f"  ... and {len(photos) - show} more (--json lists them all)")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
