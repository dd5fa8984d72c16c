"""Never tip what is not waste: the taxonomy's never_tip, the out-of-distribution score, the bundle's
ood block, and the decision that holds an item (hand-made probabilities, the shipped bundle's files)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.config import parse_config
from edge.errors import SmartbinError
from edge.model import ood
from edge.model.bundle import load_bundle
from edge.model.decision import decide, unknown_reason
from edge.model.taxonomy import NeverTip, load_taxonomy, parse_taxonomy
from edge.paths import DEFAULT_BUNDLE
from tests.conftest import REPO, shipped_bundle_with

SHIPPED_TAXONOMY = REPO / "config" / "taxonomy" / "cn-4bin.yaml"
HAND = {"reason": "a hand is on the tray", "override": False}


def small(**extra) -> dict:
    return {
        "name": "small",
        "default_bin": "other",
        "bins": {"recyclable": {}, "other": {}, "hazardous": {}},
        "items": {"paper": "recyclable", "can": "recyclable", "battery": "hazardous", "cup": "other"},
        "ignore": ["empty"],
        **extra,
    }


LABELS = ["paper", "can", "battery", "cup", "empty", "hand", "phone"]


def probs(**given: float) -> np.ndarray:
    """Hand-made probabilities over LABELS: the named ones, the rest shared evenly."""
    rest = (1 - sum(given.values())) / (len(LABELS) - len(given))
    return np.array([given.get(label, rest) for label in LABELS], np.float32)


TAX = parse_taxonomy(small(never_tip={"hand": HAND, "phone": {"reason": "phone on the tray: take it back"}}))


# -- the taxonomy ------------------------------------------------------------------------------


def test_never_tip_as_a_mapping_and_as_a_list():
    assert TAX.never_tip == {
        "hand": NeverTip("a hand is on the tray", False),
        "phone": NeverTip("phone on the tray: take it back", True),
    }
    listed = parse_taxonomy(small(never_tip=["earbuds", "glasses"]))
    assert listed.never_tip["earbuds"] == NeverTip("earbuds on the tray: take it back", True)
    empty_spec = parse_taxonomy(small(never_tip={"glasses": None}))
    assert empty_spec.never_tip["glasses"] == NeverTip("glasses on the tray: take it back", True)
    # not waste, not an empty tray: in neither items nor ignore, no bin, but covered
    assert TAX.bin_of("hand") is None and "hand" not in TAX.items and "hand" not in TAX.ignore
    assert TAX.uncovered(LABELS) == [] and TAX.never_tip_labels == {"hand", "phone"}


def test_never_tip_round_trips_and_an_old_taxonomy_is_written_unchanged():
    assert parse_taxonomy(TAX.to_dict()) == TAX
    old = parse_taxonomy(small())
    assert "never_tip" not in old.to_dict() and parse_taxonomy(old.to_dict()) == old
    assert TAX.to_dict()["never_tip"]["hand"] == HAND


def test_a_concept_of_never_tip_labels_is_held_with_the_strictest_rule():
    tax = parse_taxonomy(
        small(
            never_tip={"hand": HAND, "finger": {"reason": "a finger"}},
            concepts={"person": ["hand", "finger"], "device": ["phone", "tablet"]},
        )
        | {"never_tip": {"hand": HAND, "finger": {"reason": "a finger"}, "device": {"reason": "a device"}}}
    )
    assert tax.never_tip_rule("person") == NeverTip("a hand is on the tray", False)
    # a concept under never_tip covers its labels, which need no other line
    assert tax.never_tip_rule("phone") == NeverTip("a device", True) and tax.bin_of("tablet") is None
    assert tax.never_tip_labels == {"hand", "finger", "phone", "tablet"}
    assert tax.never_tip_rule("paper") is None and tax.never_tip_rule("empty") is None


@pytest.mark.parametrize(
    "extra, problem, fix",
    [
        ({"never_tip": {"paper": {}}}, "['paper'] are never tipped (never_tip) and mapped", "keep it in one"),
        ({"never_tip": ["empty"]}, "never tipped (never_tip) and listed under 'ignore'", "empty tray"),
        ({"never_tip": "hand"}, "'never_tip' is neither a list nor a mapping", "never_tip: {hand:"),
        ({"never_tip": {"Hand!": {}}}, "never_tip name 'Hand!' is not valid", "lowercase"),
        ({"never_tip": {"hand": {"reason": ""}}}, "never_tip.hand.reason = ''", "reason:"),
        ({"never_tip": {"hand": {"override": "no"}}}, "never_tip.hand.override = 'no'", "true:"),
        ({"never_tip": {"hand": {"why": "x"}}}, "never_tip.hand has unknown keys ['why']", "override"),
        ({"never_tip": {"hand": "x"}}, "never_tip.hand is not a mapping", "reason"),
        ({"never_tip": {"hand": {"hold_above": 0}}}, "never_tip.hand.hold_above = 0 is not", "0.2"),
        ({"never_tip": {"hand": {"hold_above": 1.5}}}, "never_tip.hand.hold_above = 1.5", "validation"),
        ({"never_tip": {"hand": {"hold_above": -0.1}}}, "never_tip.hand.hold_above = -0.1", "hold_above"),
        ({"never_tip": {"hand": {"hold_above": math.nan}}}, "never_tip.hand.hold_above = nan", "hold_above"),
        ({"never_tip": {"hand": {"hold_above": True}}}, "never_tip.hand.hold_above = True", "hold_above"),
        ({"never_tip": {"hand": {"hold_above": "0.2"}}}, "never_tip.hand.hold_above = '0.2'", "hold_above"),
        (
            {"never_tip": {"hand": HAND}, "concepts": {"thing": ["hand", "paper"]}},
            "concepts.thing holds labels of different bins",
            "one bin",
        ),
        (
            {"never_tip": {"thing": {}}, "concepts": {"thing": ["hand", "paper"]}},
            "['paper'] are never tipped",
            "one place",
        ),
    ],
)
def test_never_tip_refusals_name_the_key_and_the_fix(extra, problem, fix):
    with pytest.raises(SmartbinError) as err:
        parse_taxonomy(small(**extra))
    assert problem in err.value.problem and fix in err.value.fix


def test_the_shipped_taxonomy_holds_what_the_shipped_model_knows():
    shipped = load_taxonomy(SHIPPED_TAXONOMY)
    assert shipped.never_tip_labels == {"hand", "phone", "earbuds", "glasses"}
    assert shipped.never_tip["hand"] == NeverTip("a hand is on the tray", False, 0.05)
    assert "hold_above: p (0 < p <= 1)" in SHIPPED_TAXONOMY.read_text(encoding="utf-8")
    assert load_bundle(DEFAULT_BUNDLE, shipped).taxonomy.never_tip == shipped.never_tip


def test_a_never_tip_label_the_model_lacks_is_refused_with_the_fix(tmp_path):
    """A taxonomy that asks to hold a key ring, with a model that has never seen one, would never hold
    it: refused at load, not a silent promise."""
    data = load_taxonomy(SHIPPED_TAXONOMY).to_dict()
    data["never_tip"] = {**data["never_tip"], "keys": {}}
    with pytest.raises(SmartbinError) as err:
        load_bundle(DEFAULT_BUNDLE, parse_taxonomy(data))
    assert "never tips ['keys'], but the model has no such label" in str(err.value.problem)
    assert "remove them from 'never_tip:'" in err.value.fix


def test_a_never_tip_label_the_model_has_loads():
    data = load_taxonomy(SHIPPED_TAXONOMY).to_dict()
    del data["items"]["lighter"]
    data["never_tip"] = {
        **data["never_tip"],
        "lighter": {"reason": "a lighter: take it back", "override": False},
    }
    bundle = load_bundle(DEFAULT_BUNDLE, parse_taxonomy(data))
    assert bundle.taxonomy.never_tip_rule("lighter").override is False


def test_training_without_photos_of_a_never_tip_label_drops_its_rule_with_a_warning(caplog):
    """Training your own model with the shipped taxonomy and no not-waste photos: the model cannot hold
    a hand, and its bundle says so instead of being refused at the end of the run."""
    shipped = load_taxonomy(SHIPPED_TAXONOMY)
    kept = shipped.holding_only(["paper", "hand"])
    assert set(kept.never_tip) == {"hand"} and shipped.holding_only(shipped.never_tip_labels) is shipped


# -- the out-of-distribution score -----------------------------------------------------------


def test_scores_are_higher_for_a_sure_row():
    sure, spread = np.array([0.97, 0.01, 0.01, 0.01]), np.full(4, 0.25)
    for name in ood.SCORES:
        assert ood.score(name, sure) > ood.score(name, spread), name
    assert ood.score("certainty", spread) == pytest.approx(0.0)
    assert ood.score("max_probability", sure) == pytest.approx(0.97)
    assert ood.score("margin", np.array([[0.6, 0.3, 0.1]])) == pytest.approx([0.3])
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood.score("energy", sure)


def test_the_threshold_holds_at_most_two_percent_in_every_folder_not_pooled():
    rng = np.random.default_rng(0)
    easy = rng.uniform(0.8, 1.0, 5000)  # a big folder the model finds easy
    hard = rng.uniform(0.3, 1.0, 100)  # a small one it finds hard
    t = ood.fit_threshold({"easy": easy, "hard": hard})
    assert ood.held_share(hard, t) <= 0.02 and ood.held_share(easy, t) <= 0.02
    assert ood.held_share(hard, np.nextafter(t, 1)) > 0.02  # the highest such threshold
    pooled = ood.fit_threshold({"all": np.concatenate([easy, hard])})
    assert pooled > t and ood.held_share(hard, pooled) > 0.02  # pooling would hold too many hard ones
    assert ood.fit_threshold({"a": [0.5, 0.6]}) == 0.5  # 2% of 2 photos: none held
    with pytest.raises(ValueError):
        ood.fit_threshold({"a": []})


def test_the_tradeoff_curve():
    curve = ood.tradeoff([0.9, 0.8, 0.7, 0.6], [0.2, 0.65, 0.95])
    by = {round(row["threshold"], 2): row for row in curve}
    assert by[0.2] == {"threshold": 0.2, "waste_held": 0.0, "not_waste_tipped": 1.0}
    assert by[0.7]["waste_held"] == 0.25 and by[0.7]["not_waste_tipped"] == pytest.approx(1 / 3)
    assert curve[-1]["waste_held"] == 1.0 and curve[-1]["not_waste_tipped"] == 0.0
    held = [row["waste_held"] for row in curve]
    assert held == sorted(held)


def test_a_bundle_ood_block_loads_and_none_means_no_hold(tmp_path):
    assert load_bundle(DEFAULT_BUNDLE).ood == ood.OodRule("certainty", pytest.approx(0.4898, abs=1e-4))
    without = shipped_bundle_with(tmp_path / "none")
    meta = json.loads((without / "model.json").read_text())
    del meta["ood"]
    (without / "model.json").write_text(json.dumps(meta))
    assert load_bundle(without).ood is None
    bundle = load_bundle(
        shipped_bundle_with(tmp_path, ood={"score": "certainty", "threshold": 0.4, "fitted_on": "val"})
    )
    assert bundle.ood == ood.OodRule("certainty", 0.4)


@pytest.mark.parametrize(
    "block, key",
    [
        ({"threshold": 0.4}, "ood.score is missing"),
        ({"score": "energy", "threshold": 0.4}, "ood.score is 'energy'"),
        ({"score": "certainty"}, "ood.threshold is missing"),
        ({"score": "certainty", "threshold": math.nan}, "ood.threshold is nan"),
        ({"score": "certainty", "threshold": math.inf}, "ood.threshold is inf"),
        ({"score": "certainty", "threshold": "0.4"}, "ood.threshold is '0.4'"),
        ({"score": "certainty", "threshold": True}, "ood.threshold is True"),
        (0.4, "ood is not an object"),
    ],
)
def test_a_bad_ood_block_is_refused_with_the_key_and_the_fix(tmp_path, block, key):
    with pytest.raises(SmartbinError) as err:
        load_bundle(shipped_bundle_with(tmp_path, ood=block))
    assert f"model.json {key}" in err.value.problem
    assert "export the bundle again with smartbin-train" in err.value.fix


# -- the decision ------------------------------------------------------------------------------


def test_a_hand_that_wins_is_held_and_never_overridable():
    d = decide(probs(hand=0.7, paper=0.2), LABELS, TAX)
    assert d.bin is None and not d.empty
    assert d.held == "a hand is on the tray" and d.override is False
    assert d.override_bin == "recyclable"  # the best waste bin of the other labels (unused for a hand)


def test_a_phone_is_held_and_a_second_press_would_sort_it_to_the_best_waste_bin():
    d = decide(probs(phone=0.6, battery=0.3), LABELS, TAX)
    assert d.held == "phone on the tray: take it back" and d.override and d.bin is None
    assert d.override_bin == "hazardous"


def test_a_never_tip_that_does_not_win_is_not_held_and_empty_is_still_empty():
    d = decide(probs(paper=0.8, hand=0.1), LABELS, TAX)
    assert d.bin == "recyclable" and d.held is None and not d.empty
    e = decide(probs(empty=0.9), LABELS, TAX)
    assert e.empty and e.held is None and e.bin is None


def test_hold_above_holds_a_hand_that_does_not_win():
    careful = parse_taxonomy(small(never_tip={"hand": {**HAND, "hold_above": 0.2}, "phone": {}}))
    assert careful.never_tip["hand"].hold_above == 0.2 and careful.never_tip["phone"].hold_above is None
    assert parse_taxonomy(careful.to_dict()) == careful
    # a hand at 40% beside paper at 45%: tipped by default, held with hold_above 0.2
    beside = probs(paper=0.45, hand=0.4)
    assert decide(beside, LABELS, TAX).bin == "recyclable"
    d = decide(beside, LABELS, careful)
    assert d.bin is None and not d.empty and d.held == "a hand is on the tray" and d.override is False
    assert d.item == "hand" and d.item_confidence == pytest.approx(0.4)
    assert d.top_items[0] == ("paper", pytest.approx(0.45)) and d.override_bin == "recyclable"
    # at the threshold it holds, below it the winner decides; the empty tray too gives way to a hand
    assert decide(probs(paper=0.5, hand=0.2), LABELS, careful).held == "a hand is on the tray"
    assert decide(probs(paper=0.7, hand=0.19), LABELS, careful).bin == "recyclable"
    assert decide(probs(empty=0.7, hand=0.25), LABELS, careful).held == "a hand is on the tray"
    assert decide(probs(empty=0.9, hand=0.05), LABELS, careful).empty
    # a phone without hold_above is held only when it wins, as before
    assert decide(probs(paper=0.45, phone=0.4), LABELS, careful).bin == "recyclable"
    # an OOD-unknown waste item with a hand above its hold_above is held for the hand (never overridable)
    rule = ood.OodRule("max_probability", 0.5)
    assert decide(probs(paper=0.3, hand=0.25), LABELS, careful, ood=rule).override is False


def test_hold_above_on_a_concept_sums_its_labels():
    tax = parse_taxonomy(
        small(never_tip={"person": {**HAND, "hold_above": 0.3}}, concepts={"person": ["hand", "phone"]})
    )
    d = decide(probs(paper=0.4, hand=0.2, phone=0.15), LABELS, tax)  # person 35%
    assert (
        d.held == "a hand is on the tray" and d.item == "person" and d.item_confidence == pytest.approx(0.35)
    )
    assert decide(probs(paper=0.6, hand=0.1, phone=0.1), LABELS, tax).bin == "recyclable"


def test_an_unknown_item_is_held_or_sent_to_the_fallback_bin():
    rule = ood.OodRule("max_probability", 0.5)
    spread = probs(paper=0.3, can=0.25)  # recyclable 55%: below the OOD threshold on the top label
    held = decide(spread, LABELS, TAX, threshold=0.5, ood=rule)
    assert held.bin is None and not held.empty and held.override and held.override_bin == "other"
    assert (
        held.held
        == unknown_reason("other")
        == ("unknown item: take it back, or press sort again to send it to other")
    )
    assert held.ood_score == pytest.approx(0.3)
    sent = decide(spread, LABELS, TAX, threshold=0.5, fallback_bin="recyclable", ood=rule, unknown="fallback")
    assert sent.bin == "recyclable" and sent.uncertain and sent.held is None
    sure = decide(probs(paper=0.9), LABELS, TAX, ood=rule)
    assert sure.bin == "recyclable" and sure.held is None
    # without an ood rule nothing is unknown
    assert decide(spread, LABELS, TAX, threshold=0.5).held is None
    # a never tip item is held with its own reason, whatever the score
    assert decide(probs(hand=0.3, paper=0.2), LABELS, TAX, ood=rule).held == "a hand is on the tray"
    with pytest.raises(ValueError):
        decide(spread, LABELS, TAX, unknown="tip")


def test_sorting_unknown_is_validated():
    assert parse_config({"sorting": {"unknown": "fallback"}}).sorting.unknown == "fallback"
    assert parse_config({}).sorting.unknown == "hold"
    with pytest.raises(SmartbinError) as err:
        parse_config({"sorting": {"unknown": "tip"}})
    assert "hold or fallback" in str(err.value)


def test_an_unknown_item_the_costs_moved_goes_where_the_costs_put_it():
    """A likely-hazardous unknown item: held for, or sent to, the bin the costs chose, never the fallback."""
    data = TAX.to_dict()
    bins = list(data["bins"])
    data["costs"] = {t: {c: 0 if t == c else 5 if t == "hazardous" else 1 for c in bins} for t in bins}
    priced = parse_taxonomy(data)
    rule = ood.OodRule("max_probability", 0.5)
    battery = probs(paper=0.4, battery=0.35)  # unknown (top 40%), and hazardous at 35% x 5 wins the costs
    held = decide(battery, LABELS, priced, ood=rule)
    assert held.cost_rule and held.override_bin == "hazardous" and held.held == unknown_reason("hazardous")
    sent = decide(battery, LABELS, priced, ood=rule, unknown="fallback")
    assert sent.bin == "hazardous" and sent.cost_rule
