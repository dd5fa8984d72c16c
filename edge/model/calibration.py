"""Temperature scaling: probabilities that mean what they say, from one number fitted on val.

The bundle's model ends in a uint8-quantised softmax, so the logits are gone; scaling
``log p`` by ``1 / T`` and taking the softmax again is the same as scaling the logits
(up to the quantisation and the floor ``EPS`` for the probabilities that quantised to 0).
``T > 1`` softens an over-confident model, ``T < 1`` sharpens a timid one (label smoothing
makes one); the order of the items, hence the top item, never changes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

EPS = 1e-6  # floor for log p: a uint8 softmax gives exact zeros
T_RANGE = (0.05, 20.0)
ECE_BINS = 15


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(max(p, EPS)) / T)`` along the last axis; ``T == 1`` gives ``probs`` itself."""
    if temperature == 1:
        return probs
    p = np.asarray(probs)
    z = np.log(np.maximum(p.astype(np.float64), EPS)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out = e / e.sum(axis=-1, keepdims=True)
    return out.astype(p.dtype if p.dtype.kind == "f" else np.float32)


def _nll(log_p: np.ndarray, true_idx: np.ndarray, temperature: float) -> float:
    z = log_p / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), true_idx]))


def negative_log_likelihood(probs: np.ndarray, true_idx: Sequence[int], temperature: float = 1.0) -> float:
    """Mean ``-log`` of the true item's probability after :func:`calibrated` at ``temperature``."""
    log_p = np.log(np.maximum(np.asarray(probs, np.float64), EPS))
    return _nll(log_p, np.asarray(true_idx, dtype=int), temperature)


def fit_temperature(
    probs: np.ndarray, true_idx: Sequence[int], bounds: tuple[float, float] = T_RANGE, tol: float = 1e-5
) -> float:
    """The ``T`` in ``bounds`` of least negative log-likelihood: golden-section search over ``log T``.

    The negative log-likelihood is convex in ``1 / T``, so it has one minimum along ``log T`` and the
    search needs no starting point; it is deterministic for given inputs.
    """
    probs = np.asarray(probs, np.float64)
    true_idx = np.asarray(true_idx, dtype=int)
    if probs.ndim != 2 or len(probs) == 0 or len(probs) != len(true_idx):
        raise ValueError(
            f"need (n, labels) probabilities and n true indices, not {probs.shape} and {true_idx.shape}"
        )
    log_p = np.log(np.maximum(probs, EPS))

    def loss(log_t: float) -> float:
        return _nll(log_p, true_idx, math.exp(log_t))

    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = math.log(bounds[0]), math.log(bounds[1])
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2)


def reliability(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin of equal width (``[lo, hi)``, the last one closed), the bins that hold photos:
    ``lo``, ``hi``, ``n``, ``confidence`` (their mean confidence) and ``accuracy`` (the share right)."""
    conf = np.asarray(confidence, np.float64)
    right = np.asarray(correct, bool)
    index = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mine = index == b
        if mine.any():
            rows.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "n": int(mine.sum()),
                    "confidence": float(conf[mine].mean()),
                    "accuracy": float(right[mine].mean()),
                }
            )
    return rows


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS
) -> float:
    """The gap between confidence and accuracy, per bin of :func:`reliability`, weighted by its photos."""
    rows = reliability(confidence, correct, n_bins)
    total = sum(r["n"] for r in rows)
    return sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / total if total else 0.0


def item_confidence(probs: np.ndarray, true_idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The top item's probability per photo, and whether that item is the true one."""
    probs = np.asarray(probs)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(true_idx)


def bin_confidence(
    probs: np.ndarray, true_labels: Sequence[str], labels: Sequence[str], taxonomy: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The most probable bin's probability per photo (its items' probabilities summed, as the decision
    sums them), and whether that bin is the true label's bin. Photos of an ignored label are left out."""
    from edge.model.decision import bin_probabilities

    conf, right = [], []
    for p, label in zip(probs, true_labels):
        true_bin = taxonomy.bin_of(label)
        if true_bin is None:
            continue
        bins = bin_probabilities(p, labels, taxonomy)
        top = max(bins, key=bins.__getitem__)
        conf.append(bins[top])
        right.append(top == true_bin)
    return np.array(conf, np.float64), np.array(right, bool)


def calibration_scores(
    probs: np.ndarray,
    true_labels: Sequence[str],
    labels: Sequence[str],
    taxonomy: Any,
    n_bins: int = ECE_BINS,
) -> dict[str, dict[str, Any]]:
    """Item and bin level: the expected calibration error and the reliability table."""
    true_idx = [list(labels).index(label) for label in true_labels]
    out = {}
    for level, (conf, right) in (
        ("item", item_confidence(probs, true_idx)),
        ("bin", bin_confidence(probs, true_labels, labels, taxonomy)),
    ):
        out[level] = {
            "ece": expected_calibration_error(conf, right, n_bins),
            "reliability": reliability(conf, right, n_bins),
        }
    return out
