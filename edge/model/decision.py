"""Decision: item probabilities -> a bin, with misrouting costs, a threshold and a fallback.

The item named is the most probable concept of the taxonomy (a label in no
concept is its own): its probability is the sum of its labels', so glass split
30/30/30 across three glass labels is named ``glass`` at 90%.

A bin's probability is the sum of the probabilities of the items that map to
it. Labels the taxonomy ignores (``empty``) mean "no item": when one (or a
concept of them) wins, the decision is to do nothing; otherwise their mass is left out and the bin
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

Some things on the tray are not waste. A label (or concept) under the taxonomy's ``never_tip`` that
wins is **held**, and so is one whose rule has ``hold_above: p`` and whose probability (its labels'
summed) is at least ``p`` while another item wins (then ``item`` names it): ``bin`` is None,
``held`` says why, and ``override`` whether a second press of the sort button (a person checked) may
sort it, to ``override_bin`` (the best waste bin of the other labels). With the bundle's ``ood``
rule (edge/model/ood.py), a waste item whose score is below its threshold is unknown: held
(``unknown="hold"``, a second press sends it to the fallback bin) or sent to the fallback bin at once
(``unknown="fallback"``, marked uncertain). A held decision is not ``empty``: the tray holds
something, it is just not tipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edge.model.ood import OodRule
from edge.model.taxonomy import NeverTip, Taxonomy

# From bench/accuracy.py's sweep on the shipped model's validation split (docs/benchmarks.md): the
# lowest threshold at which the items it lets through reach 99% bin accuracy; 6.7% go to the fallback.
DEFAULT_THRESHOLD = 0.65
UNKNOWN_CHOICES = ("hold", "fallback")


def unknown_reason(fallback_bin: str) -> str:
    return f"unknown item: take it back, or press sort again to send it to {fallback_bin}"


@dataclass(frozen=True)
class Decision:
    item: str  # the most probable concept (a label in no concept is its own concept)
    bin: str | None
    confidence: float
    item_confidence: float
    uncertain: bool
    bin_probs: dict[str, float] = field(default_factory=dict)
    top_items: list[tuple[str, float]] = field(default_factory=list)
    frames: int = 1
    most_probable_bin: str | None = None
    cost_rule: bool = False  # the costs chose another bin than the most probable one
    held: str | None = None  # why the item stays on the tray (never tipped, or unknown); None: not held
    override: bool = False  # a held item: whether a second press (a person checked) may sort it
    override_bin: str | None = None  # where that second press sends it
    ood_score: float | None = None  # the bundle's out-of-distribution score, where it has one

    @property
    def empty(self) -> bool:
        """Nothing on the tray (an ignored label won). A held item is not empty: it is there, untipped."""
        return self.bin is None and self.held is None


def bin_probabilities(item_probs: np.ndarray, labels: Sequence[str], taxonomy: Taxonomy) -> dict[str, float]:
    sums = dict.fromkeys(taxonomy.bin_ids, 0.0)
    for label, p in zip(labels, item_probs):
        bin_id = taxonomy.bin_of(label)
        if bin_id is not None:
            sums[bin_id] += float(p)
    total = sum(sums.values())
    return {b: (p / total if total > 0 else 0.0) for b, p in sums.items()}


def concept_probabilities(
    item_probs: np.ndarray, labels: Sequence[str], taxonomy: Taxonomy
) -> tuple[list[str], np.ndarray]:
    """The top-most concepts of ``labels`` (in the order of their first label) and the sum of their labels'
    probabilities along the last axis. Without concepts, the labels and the probabilities as they are."""
    names = list(dict.fromkeys(taxonomy.concept_of(label) for label in labels))
    if len(names) == len(labels):
        return names, np.asarray(item_probs)
    index = [names.index(taxonomy.concept_of(label)) for label in labels]
    probs = np.asarray(item_probs)
    sums = np.zeros((*probs.shape[:-1], len(names)), dtype=probs.dtype)
    for i, j in enumerate(index):
        sums[..., j] += probs[..., i]
    return names, sums


def held_above(
    item_probs: np.ndarray, labels: Sequence[str], taxonomy: Taxonomy
) -> tuple[str, float, NeverTip] | None:
    """The never-tip name whose rule has ``hold_above`` and whose probability (its labels' summed) reaches
    it, the most probable if several: ``(name, probability, rule)``; None when none does."""
    found: tuple[str, float, NeverTip] | None = None
    index = {label: i for i, label in enumerate(labels)}
    for name, rule in taxonomy.never_tip.items():
        if rule.hold_above is None:
            continue
        p = float(
            sum(float(item_probs[index[label]]) for label in taxonomy.labels_of(name) if label in index)
        )
        if p >= rule.hold_above and (found is None or p > found[1]):
            found = (name, p, rule)
    return found


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
    ood: OodRule | None = None,
    unknown: str = "hold",
) -> Decision:
    """Average the frames of one item (the multi-frame vote), then name its concept and choose its bin.

    The item and ``top_items`` are concepts, each with the summed probability of its labels; the bin
    probabilities are summed over the labels' bins. Below ``threshold`` the item is marked uncertain
    and goes to ``fallback_bin`` (default: the taxonomy's default bin), unless the costs moved it off
    the most probable bin (see the module's docstring). A never-tip item that wins is held, and one
    whose probability reaches its rule's ``hold_above`` though another item wins; a waste item that
    ``ood`` finds unknown is held or sent to the fallback bin (``unknown``: hold or fallback).
    """
    if unknown not in UNKNOWN_CHOICES:
        raise ValueError(f"unknown={unknown!r}: use one of {UNKNOWN_CHOICES}")
    probs = np.atleast_2d(np.asarray(frame_probs, dtype=np.float32))
    mean = probs.mean(axis=0)
    names, concept_mean = concept_probabilities(mean, labels, taxonomy)
    order = np.argsort(concept_mean)[::-1]
    top = [(names[i], float(concept_mean[i])) for i in order[:top_k]]
    item, item_conf = top[0]
    fallback = fallback_bin or taxonomy.default_bin
    ood_score = None if ood is None else ood.value(mean)
    bins = bin_probabilities(mean, labels, taxonomy)
    rule = taxonomy.never_tip_rule(item)
    if rule is None:  # a never-tip item that does not win is held when its rule says hold_above
        above = held_above(mean, labels, taxonomy)
        if above is not None:
            item, item_conf, rule = above
    if rule is not None:
        # the best waste bin of the other labels, for a person who checked and pressed sort again
        waste = sum(bins.values()) > 0
        override_bin = choose_bin(bins, taxonomy) if waste else fallback
        return Decision(
            item,
            None,
            item_conf,
            item_conf,
            False,
            bins if waste else {},
            top,
            len(probs),
            held=rule.reason,
            override=rule.override,
            override_bin=override_bin,
            ood_score=ood_score,
        )
    if taxonomy.bin_of(item) is None:
        return Decision(item, None, item_conf, item_conf, False, {}, top, len(probs), ood_score=ood_score)
    likeliest = max(bins, key=bins.__getitem__)
    best = choose_bin(bins, taxonomy)
    cost_rule = best != likeliest
    if ood is not None and ood_score < ood.threshold:
        # as for an uncertain item: the fallback bin, unless the costs moved it (a likely hazardous item)
        safest = best if cost_rule else fallback
        unknown_item = Decision(
            item,
            safest,
            bins[best],
            item_conf,
            True,
            bins,
            top,
            len(probs),
            likeliest,
            cost_rule,
            ood_score=ood_score,
        )
        if unknown == "fallback":
            return unknown_item
        return dataclasses.replace(
            unknown_item, bin=None, held=unknown_reason(safest), override=True, override_bin=safest
        )
    uncertain = bins[likeliest] < threshold
    chosen = fallback if uncertain and not cost_rule else best
    return Decision(
        item,
        chosen,
        bins[best],
        item_conf,
        uncertain,
        bins,
        top,
        len(probs),
        likeliest,
        cost_rule,
        ood_score=ood_score,
    )
