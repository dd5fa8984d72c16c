"""Decision: item probabilities -> a bin, with a threshold and a fallback.

A bin's probability is the sum of the probabilities of the items that map to
it. Labels the taxonomy ignores (``empty``) mean "no item": when one wins, the
decision is to do nothing; otherwise their mass is left out and the bin
probabilities are renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edge.config import DEFAULT_THRESHOLD
from edge.taxonomy import Taxonomy


@dataclass(frozen=True)
class Decision:
    item: str
    bin: str | None
    confidence: float
    item_confidence: float
    uncertain: bool
    bin_probs: dict[str, float] = field(default_factory=dict)
    top_items: list[tuple[str, float]] = field(default_factory=list)
    frames: int = 1

    @property
    def empty(self) -> bool:
        return self.bin is None


def bin_probabilities(item_probs: np.ndarray, labels: Sequence[str], taxonomy: Taxonomy) -> dict[str, float]:
    sums = dict.fromkeys(taxonomy.bin_ids, 0.0)
    for label, p in zip(labels, item_probs):
        bin_id = taxonomy.bin_of(label)
        if bin_id is not None:
            sums[bin_id] += float(p)
    total = sum(sums.values())
    return {b: (p / total if total > 0 else 0.0) for b, p in sums.items()}


def decide(
    frame_probs: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[str],
    taxonomy: Taxonomy,
    threshold: float = DEFAULT_THRESHOLD,
    fallback_bin: str | None = None,
    top_k: int = 3,
) -> Decision:
    """Average the frames of one item (the multi-frame vote), then choose its bin.

    Below ``threshold`` the item goes to ``fallback_bin`` (default: the
    taxonomy's default bin) and is marked uncertain.
    """
    probs = np.atleast_2d(np.asarray(frame_probs, dtype=np.float32))
    mean = probs.mean(axis=0)
    order = np.argsort(mean)[::-1]
    top = [(labels[i], float(mean[i])) for i in order[:top_k]]
    item, item_conf = top[0]
    if taxonomy.bin_of(item) is None:
        return Decision(item, None, item_conf, item_conf, False, {}, top, len(probs))
    bins = bin_probabilities(mean, labels, taxonomy)
    best = max(bins, key=bins.__getitem__)
    confidence = bins[best]
    uncertain = confidence < threshold
    chosen = (fallback_bin or taxonomy.default_bin) if uncertain else best
    return Decision(item, chosen, confidence, item_conf, uncertain, bins, top, len(probs))
