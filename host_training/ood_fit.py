"""Fitting the bundle's ``ood`` block on the validation split, and what it holds (for the report).

Each score of edge/model/ood.py gets the highest threshold that holds at most ``max_held`` of the real
waste of EVERY data folder (:func:`edge.model.ood.fit_threshold`). Waste: the photos whose label maps to
a bin; never-tip labels (a hand, a phone) are not waste, ignored labels (``empty``) neither. The score
shipped is chosen by measurement:

- with never-tip (not-waste) photos in val: the score that, at its threshold, holds the most of them
  (by the whole decision: a never-tip label that wins, or the OOD score; ties: the better separation of
  waste from not-waste, then of the model's right from its wrong waste photos);
- without any: the score that best separates the waste photos the model gets right from those it gets
  wrong (AUROC): holding what the model does not know is what it is for, and its own errors are the
  only unfamiliar photos measured.

numpy and the edge's decision only (no TensorFlow), so it is tested on hand-made probabilities.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edge.model import ood
from edge.model.decision import decide
from edge.model.taxonomy import Taxonomy

CURVE_POINTS = 101  # thresholds kept in report.json per trade-off curve


def auroc(high: Sequence[float], low: Sequence[float]) -> float | None:
    """The probability that a value of ``high`` is above one of ``low`` (ties count half); None if
    either is empty."""
    a, b = np.asarray(high, np.float64), np.asarray(low, np.float64)
    if not a.size or not b.size:
        return None
    both = np.concatenate([a, b])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (starts + (counts + 1) / 2)[inverse]  # average ranks, 1-based
    return float((ranks[: a.size].sum() - a.size * (a.size + 1) / 2) / (a.size * b.size))


def kinds(truth: Sequence[str], taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: whether it is waste (its label has a bin) and whether it is not waste (never tipped)."""
    waste = np.array([taxonomy.bin_of(t) is not None for t in truth], bool)
    not_waste = np.array([t in taxonomy.never_tip_labels for t in truth], bool)
    return waste, not_waste


def held_by(
    probs: np.ndarray, labels: Sequence[str], taxonomy: Taxonomy, rule: ood.OodRule | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per photo, deciding as the bin does: held by its never-tip rule, and held at all (never tip or
    the OOD ``rule``)."""
    never = np.array([decide(p, labels, taxonomy).held is not None for p in probs], bool)
    if rule is None:
        return never, never.copy()
    anyway = np.array([decide(p, labels, taxonomy, ood=rule).held is not None for p in probs], bool)
    return never, anyway


def _share(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 5) if mask.size else 0.0


def held_summary(
    probs: np.ndarray,
    truth: Sequence[str],
    folders: Sequence[str],
    labels: Sequence[str],
    taxonomy: Taxonomy,
    rule: ood.OodRule | None,
) -> dict[str, Any]:
    """What the bin holds (leaves on the tray) of these photos: per data folder the share of its waste
    held (by anything, and by the OOD score alone), and per never-tip label how many are held (by the
    never-tip rule, by the OOD score) and how many tipped."""
    probs = np.asarray(probs, np.float32)  # as decide() reads them, so the shares are the bin's
    folders = np.asarray(folders)
    truth_arr = np.asarray(truth)
    waste, not_waste = kinds(truth, taxonomy)
    never, held = held_by(probs, labels, taxonomy, rule)
    below = np.asarray(ood.score(rule.score, probs)) < rule.threshold if rule else np.zeros(len(probs), bool)
    out: dict[str, Any] = {
        "ood": None if rule is None else {"score": rule.score, "threshold": rule.threshold},
        "waste": {"n": int(waste.sum()), "held": _share(held[waste]), "held_by_ood": _share(below[waste])},
        "folders": {},
        "not_waste": {},
    }
    for folder in dict.fromkeys(folders[waste].tolist()):
        mine = waste & (folders == folder)
        out["folders"][folder] = {
            "n": int(mine.sum()),
            "held": _share(held[mine]),
            "held_by_ood": _share(below[mine]),
        }
    for label in sorted(set(truth_arr[not_waste].tolist())):
        mine = truth_arr == label
        out["not_waste"][label] = {
            "n": int(mine.sum()),
            "held_by_never_tip": int(never[mine].sum()),
            "held_by_ood": int((held & ~never)[mine].sum()),
            "tipped": int((~held)[mine].sum()),
        }
    return out


def tradeoff_curve(
    probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], taxonomy: Taxonomy, score: str
) -> list[dict[str, float]]:
    """:func:`edge.model.ood.tradeoff` of ``score`` over up to ``CURVE_POINTS`` thresholds: the share of
    waste held against the share of not-waste tipped. A not-waste photo its never-tip rule holds is held
    at every threshold (the bin holds it whatever the score)."""
    probs = np.asarray(probs, np.float32)
    waste, not_waste = kinds(truth, taxonomy)
    values = np.asarray(ood.score(score, probs), np.float64).reshape(-1)
    never, _ = held_by(probs[not_waste], labels, taxonomy, None)
    other = np.where(never, -np.inf, values[not_waste])
    finite = np.unique(values[waste | not_waste])
    if finite.size > CURVE_POINTS - 1:
        finite = np.unique(np.quantile(finite, np.linspace(0, 1, CURVE_POINTS - 1)))
    top = float(finite[-1]) + 1e-9 if finite.size else 1.0
    return ood.tradeoff(values[waste], other, [*finite.tolist(), top])


def fit_ood(
    probs: np.ndarray,
    truth: Sequence[str],
    folders: Sequence[str],
    labels: Sequence[str],
    taxonomy: Taxonomy,
    max_held: float = ood.MAX_HELD,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """model.json's ``ood`` block and the report's account of the choice, from the val probabilities
    (calibrated, as the bin computes them); None when val has no waste photo to fit on."""
    probs = np.asarray(probs, np.float32)  # as decide() reads them: the threshold is one of these scores
    folders = np.asarray(folders)
    waste, not_waste = kinds(truth, taxonomy)
    if not waste.any():
        return None
    true_idx = np.array([labels.index(t) if t in labels else -1 for t in truth])
    right = probs.argmax(axis=1) == true_idx
    never, _ = held_by(probs[not_waste], labels, taxonomy, None)
    candidates: dict[str, dict[str, Any]] = {}
    for name in ood.SCORES:
        values = np.asarray(ood.score(name, probs), np.float64).reshape(-1)
        by_folder = {f: values[waste & (folders == f)] for f in dict.fromkeys(folders[waste].tolist())}
        threshold = ood.fit_threshold(by_folder, max_held)
        _, held = held_by(probs[not_waste], labels, taxonomy, ood.OodRule(name, threshold))
        candidates[name] = {
            "threshold": threshold,
            "not_waste_held": int(held.sum()),
            "not_waste_held_by_ood": int((held & ~never).sum()),
            "auroc_waste_vs_not_waste": auroc(values[waste], values[not_waste]),
            "auroc_right_vs_wrong": auroc(values[waste & right], values[waste & ~right]),
        }

    def order(name: str) -> tuple:
        c = candidates[name]
        keys = [c["auroc_right_vs_wrong"] or 0.0]
        if not_waste.any():
            keys = [c["not_waste_held"], c["auroc_waste_vs_not_waste"] or 0.0, *keys]
        return (*keys, name == "max_probability")  # last tie: the classic baseline

    chosen = max(candidates, key=order)
    c = candidates[chosen]
    if not_waste.any():
        chosen_by = (
            f"the score that holds the most of the {int(not_waste.sum())} never-tip (not-waste) val photos "
            f"at its threshold: {c['not_waste_held']} held ({c['not_waste_held_by_ood']} by the score, the "
            "rest by their never-tip label)"
        )
    else:
        chosen_by = (
            "no never-tip (not-waste) photos in val: the score that best separates the waste photos the "
            "model gets right from those it gets wrong (AUROC "
            + (
                f"{c['auroc_right_vs_wrong']:.3f}"
                if c["auroc_right_vs_wrong"] is not None
                else "unmeasured: no wrong photo; the baseline max_probability"
            )
            + ")"
        )
    rule = ood.OodRule(chosen, c["threshold"])
    values = np.asarray(ood.score(chosen, probs), np.float64).reshape(-1)
    val_held = {
        f: _share(values[waste & (folders == f)] < c["threshold"])
        for f in dict.fromkeys(folders[waste].tolist())
    }
    block = {
        "score": chosen,
        "threshold": c["threshold"],
        "fitted_on": "val",
        "max_held": max_held,
        "photos": int(waste.sum()),
        "not_waste_photos": int(not_waste.sum()),
        "val_held": val_held,
        "chosen_by": chosen_by,
    }
    account = {
        **{k: v for k, v in block.items() if k != "val_held"},
        "candidates": candidates,
        "val": held_summary(probs, truth, folders, labels, taxonomy, rule),
        "tradeoff": {"val": tradeoff_curve(probs, truth, labels, taxonomy, chosen)},
    }
    return block, account
