"""Out of distribution: how familiar the model finds what lies on the tray, from its probabilities alone.

The bundle's model ends in a calibrated softmax; its logits are gone. Each score here reads one row of
item probabilities (the model's labels, averaged over the frames of the vote) and says how much it looks
like the photos the model was trained on: **higher is more familiar**. Something the model never saw
(a phone, a mug, a hand on a model without those labels) tends to spread its probability: a low top
probability, a small margin, a high entropy.

A bundle's ``model.json`` may carry an ``ood`` block fitted on held-out photos of real waste
(:func:`fit_threshold`): ``{"score": "max_probability", "threshold": 0.41, "fitted_on": "val", ...}``.
An item whose score is below the threshold is unknown (``sorting.unknown``: held on the tray, or sent to
the fallback bin). No block: no item is unknown.

This is a statistical filter, not a safety device: a model can be sure of something it never saw.
numpy only, so the bin and the trainer share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

EPS = 1e-12
MAX_HELD = 0.02  # the share of real waste photos a threshold may hold, in every data folder


def max_probability(probs: np.ndarray) -> np.ndarray:
    """The top item's probability (the classic baseline of Hendrycks & Gimpel)."""
    return np.asarray(probs, np.float64).max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """The top item's probability minus the second's."""
    p = np.sort(np.asarray(probs, np.float64), axis=-1)
    return p[..., -1] - p[..., -2] if p.shape[-1] > 1 else p[..., -1]


def certainty(probs: np.ndarray) -> np.ndarray:
    """One minus the entropy over its largest value ``log K``: 1 for one sure item, 0 for a uniform row."""
    p = np.asarray(probs, np.float64)
    k = p.shape[-1]
    if k < 2:
        return np.ones(p.shape[:-1])
    entropy = -(p * np.log(np.maximum(p, EPS))).sum(axis=-1)
    return 1.0 - entropy / math.log(k)


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_probability": max_probability,
    "margin": margin,
    "certainty": certainty,  # entropy-based
}


def score(name: str, probs: np.ndarray) -> np.ndarray | float:
    """The score ``name`` of one row (a float) or of each row of ``probs``."""
    if name not in SCORES:
        raise ValueError(f"unknown OOD score {name!r}; known: {sorted(SCORES)}")
    out = SCORES[name](np.asarray(probs))
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class OodRule:
    """The bundle's ``ood`` block: an item whose ``score`` is below ``threshold`` is unknown."""

    score: str
    threshold: float

    def value(self, probs: np.ndarray) -> float:
        return float(score(self.score, np.asarray(probs).reshape(-1)))

    def unknown(self, probs: np.ndarray) -> bool:
        return self.value(probs) < self.threshold


def fit_threshold(scores_by_folder: Mapping[str, Sequence[float]], max_held: float = MAX_HELD) -> float:
    """The highest threshold that holds at most ``max_held`` of the real waste photos of EVERY folder.

    Per folder, not pooled: a big folder of easy photos must not hide a small one the model finds hard.
    An item is held when its score is strictly below the threshold, so each folder's threshold is its
    ``floor(max_held * n)``-th lowest score (0-based): that many photos at most lie below it. The
    result is the lowest of the folders' thresholds.
    """
    if not 0 <= max_held < 1:
        raise ValueError(f"max_held must be in [0, 1), not {max_held}")
    chosen = math.inf
    for folder, values in scores_by_folder.items():
        s = np.sort(np.asarray(values, np.float64))
        if s.size == 0:
            raise ValueError(f"folder {folder!r} has no scores")
        if not np.isfinite(s).all():
            raise ValueError(f"folder {folder!r} has scores that are not finite")
        chosen = min(chosen, float(s[int(math.floor(max_held * s.size))]))
    if chosen == math.inf:
        raise ValueError("no folders to fit a threshold on")
    return chosen


def held_share(values: Sequence[float], threshold: float) -> float:
    """The share of ``values`` strictly below ``threshold`` (held)."""
    v = np.asarray(values, np.float64)
    return float((v < threshold).mean()) if v.size else 0.0


def tradeoff(
    waste_scores: Sequence[float],
    not_waste_scores: Sequence[float],
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, float]]:
    """Per threshold (by default every distinct score, and one above them all): the share of waste held
    (``waste_held``, the cost) and the share of not-waste tipped (``not_waste_tipped``, the danger)."""
    waste = np.asarray(waste_scores, np.float64)
    other = np.asarray(not_waste_scores, np.float64)
    if thresholds is None:
        both = np.unique(np.concatenate([waste, other]))
        top = both[-1] + 1e-9 if both.size else 1.0
        thresholds = [*both.tolist(), float(top)]
    return [
        {
            "threshold": float(t),
            "waste_held": held_share(waste, t),
            "not_waste_tipped": 1.0 - held_share(other, t) if other.size else 0.0,
        }
        for t in thresholds
    ]
