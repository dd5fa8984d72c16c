"""Decision: item probabilities -> a bin, with misrouting costs, a threshold and a fallback.

A bin's probability is the sum of the probabilities of the items that map to
it. Labels the taxonomy ignores (``empty``) mean "no item": when one wins, the
decision is to do nothing; otherwise their mass is left out and the bin
probabilities are renormalised.

The bin chosen is the one with the least expected cost under the taxonomy's
``costs`` (true bin -> chosen bin). Without costs every mistake costs 1, and
that is the most probable bin. With them, a battery that is 40% likely goes to
hazardous: a battery among recyclables is far worse than a can among
hazardous waste.

Below ``threshold`` (on the most probable bin's probability) the item is
uncertain and goes to the fallback bin, unless the costs chose another bin
than the most probable one: then the costs have already said where an
uncertain item is safest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edge.model.taxonomy import Taxonomy

# From bench/accuracy.py's sweep on the shipped model's validation split (docs/benchmarks.md): the
# lowest threshold at which the items it lets through reach 99% bin accuracy; 6.7% go to the fallback.
DEFAULT_THRESHOLD = 0.65


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
    most_probable_bin: str | None = None
    cost_rule: bool = False  # the costs chose another bin than the most probable one

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


def expected_costs(bin_probs: dict[str, float], taxonomy: Taxonomy) -> dict[str, float]:
    """For each bin, what choosing it costs on average over the bin probabilities."""
    return {
        chosen: sum(p * taxonomy.cost(true, chosen) for true, p in bin_probs.items()) for chosen in bin_probs
    }


def choose_bin(bin_probs: dict[str, float], taxonomy: Taxonomy) -> str:
    """The bin with the least expected cost (the most probable bin when the taxonomy has no costs)."""
    if taxonomy.costs is None:
        return max(bin_probs, key=bin_probs.__getitem__)
    costs = expected_costs(bin_probs, taxonomy)
    return min(costs, key=costs.__getitem__)


def decide(
    frame_probs: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[str],
    taxonomy: Taxonomy,
    threshold: float = DEFAULT_THRESHOLD,
    fallback_bin: str | None = None,
    top_k: int = 3,
) -> Decision:
    """Average the frames of one item (the multi-frame vote), then choose its bin.

    Below ``threshold`` the item is marked uncertain and goes to
    ``fallback_bin`` (default: the taxonomy's default bin), unless the costs
    moved it off the most probable bin (see the module's docstring).
    """
    probs = np.atleast_2d(np.asarray(frame_probs, dtype=np.float32))
    mean = probs.mean(axis=0)
    order = np.argsort(mean)[::-1]
    top = [(labels[i], float(mean[i])) for i in order[:top_k]]
    item, item_conf = top[0]
    if taxonomy.bin_of(item) is None:
        return Decision(item, None, item_conf, item_conf, False, {}, top, len(probs))
    bins = bin_probabilities(mean, labels, taxonomy)
    likeliest = max(bins, key=bins.__getitem__)
    best = choose_bin(bins, taxonomy)
    cost_rule = best != likeliest
    uncertain = bins[likeliest] < threshold
    chosen = (fallback_bin or taxonomy.default_bin) if uncertain and not cost_rule else best
    return Decision(
        item, chosen, bins[best], item_conf, uncertain, bins, top, len(probs), likeliest, cost_rule
    )
