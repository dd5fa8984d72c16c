"""Concepts: labels that name one thing (from several photo collections) are named, counted, scored as one."""

from __future__ import annotations

import collections
import json
import uuid

import numpy as np
import pytest
import yaml

from edge.errors import SmartbinError
from edge.ledger import Ledger, SortedItem
from edge.model.decision import decide
from edge.model.evaluation import score_predictions
from edge.model.taxonomy import load_taxonomy, parse_taxonomy
from tests.conftest import REPO

SHIPPED_TAXONOMY = REPO / "config" / "taxonomy" / "cn-4bin.yaml"
BINS = {"recyclable": {}, "kitchen": {}, "hazardous": {}, "other": {}}
ITEMS = {
    "white-glass": "recyclable",
    "green-glass": "recyclable",
    "glass-bottle": "recyclable",
    "metal": "recyclable",
    "drink-can": "recyclable",
    "clothes": "recyclable",
    "dirty-clothes": "other",
    "peel": "kitchen",
    "battery": "hazardous",
}
LABELS = [*ITEMS, "empty"]


def taxonomy_data(concepts=None) -> dict:
    data = {"name": "t", "default_bin": "other", "bins": BINS, "items": ITEMS, "ignore": ["empty"]}
    return data if concepts is None else {**data, "concepts": concepts}


MERGED = parse_taxonomy(
    taxonomy_data({"glass": ["white-glass", "green-glass", "glass-bottle"], "metal": ["metal", "drink-can"]})
)


def probs(**kw) -> np.ndarray:
    return np.array([kw.get(label.replace("-", "_"), 0.0) for label in LABELS], dtype=np.float32)


def test_a_merged_taxonomy_names_the_top_concept_and_its_bin():
    assert MERGED.concept_of("green-glass") == MERGED.concept_of("glass-bottle") == "glass"
    assert MERGED.concept_of("drink-can") == "metal"
    assert MERGED.concept_of("metal") == "metal"  # the label of the concept's own name
    assert MERGED.concept_of("peel") == "peel"  # in no concept: its own
    assert MERGED.bin_of("glass") == MERGED.bin_of("metal") == "recyclable"
    assert MERGED.bin_of("white-glass") == "recyclable" and MERGED.bin_of("empty") is None
    assert sorted(MERGED.labels_of("glass")) == ["glass-bottle", "green-glass", "white-glass"]


def test_nested_concepts_name_the_top_most_one():
    tax = parse_taxonomy(
        taxonomy_data(
            {
                "recyclables": ["glass", "metal"],
                "glass": ["bottle", "white-glass"],
                "bottle": ["glass-bottle", "green-glass"],
                "metal": ["metal", "drink-can"],
            }
        )
    )
    for label in ("glass-bottle", "green-glass", "white-glass", "metal", "drink-can"):
        assert tax.concept_of(label) == "recyclables"
    assert tax.concept_of("battery") == "battery"
    assert tax.bin_of("bottle") == tax.bin_of("recyclables") == "recyclable"
    assert sorted(tax.labels_of("recyclables")) == sorted(
        ["glass-bottle", "green-glass", "white-glass", "metal", "drink-can"]
    )


def test_a_concept_of_ignored_labels_is_ignored():
    items = {k: v for k, v in ITEMS.items() if k != "peel"}
    data = {**taxonomy_data({"nothing": ["empty", "peel"]}), "items": items, "ignore": ["empty", "peel"]}
    tax = parse_taxonomy(data)
    assert tax.bin_of("nothing") is None
    d = decide(probs(empty=0.3, peel=0.3, battery=0.4), LABELS, tax)
    assert d.empty and d.item == "nothing" and d.item_confidence == pytest.approx(0.6)


@pytest.mark.parametrize(
    "concepts, problem, fix",
    [
        (
            {"glass": ["white-glass", "green-glass"], "bottles": ["green-glass", "glass-bottle"]},
            "t.yaml: 'green-glass' is listed under two concepts, concepts.glass and concepts.bottles",
            "keep 'green-glass' under one of them",
        ),
        (
            {"a": ["b", "white-glass"], "b": ["a", "green-glass"]},
            "t.yaml: concepts form a cycle: a -> b -> a",
            "a concept cannot hold itself, even through other concepts",
        ),
        (
            {"glass": ["glass", "white-glass"]},
            "t.yaml: concepts form a cycle: glass -> glass",
            "a concept cannot hold itself: remove 'glass' from its list",
        ),
        (
            {"a": ["b"], "b": ["c"], "c": ["a", "white-glass"]},
            "t.yaml: concepts form a cycle: a -> b -> c -> a",
            "remove one of these links",
        ),
        (
            {"clothing": ["clothes", "dirty-clothes"]},
            "t.yaml: concepts.clothing holds labels of different bins "
            "(clothes -> recyclable; dirty-clothes -> other)",
            "a concept names one thing, so it has one bin",
        ),
        (
            {"tray": ["empty", "peel"]},
            "t.yaml: concepts.tray holds labels of different bins (empty -> ignored; peel -> kitchen)",
            "split it into one concept per bin",
        ),
        (
            {"outer": ["inner", "battery"], "inner": ["peel"]},
            "t.yaml: concepts.outer holds labels of different bins (peel -> kitchen; battery -> hazardous)",
            "a concept names one thing",
        ),
        (
            {"glass": "white-glass"},
            "t.yaml: concepts.glass is not a list of names",
            "e.g. concepts: {glass: [glass-bottle, glassware]",
        ),
        ({"glass": []}, "t.yaml: concepts.glass is not a list of names", "list its labels or concepts"),
        ({"glass": [1, 2]}, "t.yaml: concepts.glass is not a list of names", "list its labels or concepts"),
        (
            {"Glass Things": ["white-glass"]},
            "t.yaml: concept name 'Glass Things' is not valid",
            "lowercase letters, digits and '-'",
        ),
        (["glass"], "t.yaml: 'concepts' is not a mapping", "write one line per concept"),
        (
            {"glass": ["white-glas"]},
            "t.yaml: concepts.glass lists 'white-glas', which is neither a label under 'items' or "
            "'ignore' nor a concept",
            "check its spelling",
        ),
        (
            {"metal": ["drink-can"]},
            "t.yaml: concepts.metal is named after the label 'metal' but does not hold it",
            "metal: [metal, drink-can]",
        ),
        (
            {"glass": ["white-glass", "white-glass"]},
            "t.yaml: concepts.glass lists ['white-glass'] more than once",
            "list each name once",
        ),
    ],
)
def test_a_bad_concept_is_refused_with_its_key_and_the_fix(concepts, problem, fix):
    with pytest.raises(SmartbinError) as err:
        parse_taxonomy(taxonomy_data(concepts), "t.yaml")
    assert err.value.problem == problem
    assert fix in err.value.fix


def test_a_concept_holding_the_label_of_its_own_name_is_no_cycle():
    tax = parse_taxonomy(taxonomy_data({"metals": ["metal"], "metal": ["metal", "drink-can"]}))
    assert tax.concept_of("metal") == tax.concept_of("drink-can") == "metals"


def test_a_new_item_named_after_a_concept_joins_it_if_it_goes_to_its_bin():
    taught = MERGED.with_items({"glass": "recyclable", "metal-lid": "recyclable"})
    assert taught.concepts["glass"][0] == "glass" and taught.concept_of("glass") == "glass"
    assert taught.concept_of("metal-lid") == "metal-lid"
    assert parse_taxonomy(taught.to_dict()) == taught  # what a training run writes loads again
    assert "glass" not in MERGED.with_items({"glass": "other"}).items  # one name, one bin


def test_an_old_taxonomy_loads_as_before_and_writes_no_concepts():
    old = taxonomy_data()
    tax = parse_taxonomy(old)
    assert tax.concepts == {} and tax.concept_of("white-glass") == "white-glass"
    assert "concepts" not in tax.to_dict()
    assert tax.to_dict() == parse_taxonomy(tax.to_dict()).to_dict()
    assert list(tax.to_dict()) == ["name", "description", "default_bin", "bins", "items", "ignore"]
    d = decide(probs(white_glass=0.3, green_glass=0.3, peel=0.4), LABELS, tax, threshold=0.0)
    assert d.item == "peel" and d.bin == "recyclable"  # label by label, as before


def test_concepts_round_trip_through_the_bundle_form():
    again = parse_taxonomy(json.loads(json.dumps(MERGED.to_dict())))
    assert again == MERGED and again.concept_of("drink-can") == "metal"
    assert MERGED.to_dict()["concepts"] == {
        "glass": ["white-glass", "green-glass", "glass-bottle"],
        "metal": ["metal", "drink-can"],
    }


def test_the_decision_names_the_concept_with_its_summed_probability():
    p = probs(white_glass=0.3, green_glass=0.3, glass_bottle=0.3, peel=0.1)
    d = decide(p, LABELS, MERGED, threshold=0.5, top_k=2)
    assert d.item == "glass" and d.item_confidence == pytest.approx(0.9)
    assert d.top_items[0][0] == "glass" and d.top_items[1][0] == "peel"
    assert [v for _, v in d.top_items] == pytest.approx([0.9, 0.1])
    # the bins are the labels' bins, unchanged by the concepts
    assert d.bin == "recyclable" and d.confidence == pytest.approx(0.9)
    assert d.bin_probs == pytest.approx({"recyclable": 0.9, "kitchen": 0.1, "hazardous": 0.0, "other": 0.0})


def test_a_concept_beats_a_label_that_beats_each_of_its_children():
    p = probs(white_glass=0.25, glass_bottle=0.25, battery=0.4, peel=0.1)
    d = decide(p, LABELS, MERGED, threshold=0.0)
    assert d.item == "glass" and d.item_confidence == pytest.approx(0.5)
    label_by_label = decide(p, LABELS, parse_taxonomy(taxonomy_data()), threshold=0.0)
    assert label_by_label.item == "battery" and label_by_label.bin == d.bin == "recyclable"


def sorted_item(decision) -> SortedItem:
    """What the daemon hands the ledger for a decision (edge/service/daemon.py)."""
    return SortedItem(
        uuid.uuid4().hex, 1_700_000_000.0, decision.item, decision.bin, decision.confidence, False, 1.0, "m"
    )


def test_the_ledger_counts_and_publishes_children_under_their_concept(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        for p in (probs(white_glass=0.9, peel=0.1), probs(glass_bottle=0.8, green_glass=0.2)):
            ledger.record(sorted_item(decide(p, LABELS, MERGED)))
        ledger.record(sorted_item(decide(probs(drink_can=0.7, metal=0.3), LABELS, MERGED)))
        assert collections.Counter(e.item for e in ledger.events()) == {"glass": 2, "metal": 1}
        sent = [json.loads(p.payload)["item"] for p in ledger.pending() if p.kind == "event"]
        assert sent == ["glass", "glass", "metal"]
        assert ledger.counts() == {"recyclable": 3}
    finally:
        ledger.close()


def test_scores_per_label_and_per_concept():
    rows = np.stack(
        [
            probs(white_glass=0.6, green_glass=0.4),  # right label, right concept
            probs(white_glass=0.4, green_glass=0.35, glass_bottle=0.25),  # wrong label, right concept
            probs(glass_bottle=0.3, battery=0.4, green_glass=0.3),  # wrong label; glass 60% wins the concept
            probs(drink_can=0.2, metal=0.1, battery=0.7),  # wrong label, wrong concept
            probs(peel=0.9, battery=0.1),  # right both
        ]
    )
    truth = ["white-glass", "green-glass", "glass-bottle", "metal", "peel"]
    result = score_predictions(rows, truth, LABELS, MERGED)
    assert result["item"]["accuracy"] == pytest.approx(2 / 5)
    concept = result["concept"]
    assert concept["n"] == 5 and concept["accuracy"] == pytest.approx(4 / 5)
    assert concept["labels"] == ["glass", "metal", "clothes", "dirty-clothes", "peel", "battery", "empty"]
    recall = {k: v["recall"] for k, v in concept["per_class"].items() if v["support"]}
    assert recall == {"glass": 1.0, "metal": 0.0, "peel": 1.0}
    assert concept["balanced_accuracy"] == pytest.approx(2 / 3)
    assert concept["per_class"]["glass"]["support"] == 3
    # an old taxonomy scores labels and bins exactly as before, and no concepts
    plain = score_predictions(rows, truth, LABELS, parse_taxonomy(taxonomy_data()))
    assert "concept" not in plain
    assert plain["item"] == result["item"] and plain["bin"] == result["bin"]


def test_the_shipped_concepts_each_go_to_one_bin_and_cover_the_merged_labels():
    tax = load_taxonomy(SHIPPED_TAXONOMY)
    assert set(tax.concepts) == {"glass", "metal", "plastic", "paper"}
    for concept in tax.concepts:
        assert {tax.bin_of(label) for label in tax.labels_of(concept)} == {tax.bin_of(concept)}
    merged = {
        "glass": ["brown-glass", "glass-bottle", "glassware", "green-glass", "white-glass"],
        "metal": ["drink-can", "metal", "metalware"],
        "plastic": ["plastic", "plastic-bottle"],
        "paper": ["newspaper", "paper"],
    }
    assert {c: sorted(tax.labels_of(c)) for c in tax.concepts} == merged
    # kept apart: one thing in two bins is two things
    assert tax.concept_of("clothes") == "clothes" and tax.concept_of("dirty-clothes") == "dirty-clothes"
    assert parse_taxonomy(tax.to_dict()) == tax
    assert yaml.safe_load(SHIPPED_TAXONOMY.read_text(encoding="utf-8"))["concepts"]["paper"] == [
        "paper",
        "newspaper",
    ]
