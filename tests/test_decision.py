import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.model.decision import bin_probabilities, decide
from edge.model.taxonomy import load_taxonomy, parse_taxonomy
from edge.paths import TAXONOMIES

TAX = parse_taxonomy(
    {
        "name": "t",
        "default_bin": "other",
        "bins": {"recyclable": {}, "kitchen": {}, "hazardous": {}, "other": {}},
        "items": {
            "paper": "recyclable",
            "metal": "recyclable",
            "peel": "kitchen",
            "battery": "hazardous",
            "trash": "other",
        },
        "ignore": ["empty"],
    }
)
LABELS = ["paper", "metal", "peel", "battery", "trash", "empty"]


def probs(**kw):
    return np.array([kw.get(label, 0.0) for label in LABELS], dtype=np.float32)


def test_bin_probability_is_the_sum_of_its_items():
    bins = bin_probabilities(probs(paper=0.3, metal=0.3, peel=0.4), LABELS, TAX)
    assert bins["recyclable"] == pytest.approx(0.6)
    assert bins["kitchen"] == pytest.approx(0.4)
    assert bins["hazardous"] == 0


def test_items_split_across_one_bin_still_win_it():
    # no single item beats peel, but recyclable as a whole does
    d = decide(probs(paper=0.35, metal=0.3, peel=0.35), LABELS, TAX, threshold=0.6)
    assert d.item in ("paper", "peel")
    assert d.bin == "recyclable"
    assert d.confidence == pytest.approx(0.65)
    assert not d.uncertain


def test_below_threshold_goes_to_fallback_and_is_uncertain():
    d = decide(probs(battery=0.5, peel=0.5), LABELS, TAX, threshold=0.6)
    assert d.uncertain and d.bin == "other"
    d = decide(probs(battery=0.5, peel=0.5), LABELS, TAX, threshold=0.6, fallback_bin="hazardous")
    assert d.bin == "hazardous"
    d = decide(probs(battery=0.55, peel=0.45), LABELS, TAX, threshold=0.5)
    assert d.bin == "hazardous" and not d.uncertain


def test_multi_frame_vote_averages_frames():
    frames = [probs(battery=0.9, peel=0.1), probs(battery=0.2, peel=0.8), probs(battery=0.7, peel=0.3)]
    d = decide(frames, LABELS, TAX, threshold=0.5)
    assert d.frames == 3
    assert d.bin == "hazardous"
    assert d.confidence == pytest.approx(0.6)


def test_empty_tray_decides_nothing():
    d = decide(probs(empty=0.8, paper=0.2), LABELS, TAX)
    assert d.empty and d.bin is None and d.item == "empty"


def test_an_empty_tray_decision_carries_the_empty_labels_probability_and_the_vote():
    frames = [probs(empty=0.9, paper=0.1), probs(empty=0.7, paper=0.3)]
    d = decide(frames, LABELS, TAX, threshold=0.95, top_k=2)
    assert d.empty and d.uncertain is False and d.bin_probs == {}
    assert d.confidence == pytest.approx(0.8) and d.item_confidence == pytest.approx(0.8)
    assert [k for k, _ in d.top_items] == ["empty", "paper"] and d.frames == 2


def test_all_mass_on_ignored_labels_gives_zero_bin_probabilities_not_a_division_by_zero():
    assert bin_probabilities(probs(empty=1.0), LABELS, TAX) == dict.fromkeys(TAX.bin_ids, 0.0)


def test_the_decision_keeps_the_summed_bin_probabilities():
    d = decide(probs(paper=0.3, metal=0.3, battery=0.4), LABELS, TAX, threshold=0.5)
    assert d.bin_probs == pytest.approx({"recyclable": 0.6, "kitchen": 0.0, "hazardous": 0.4, "other": 0.0})


def test_empty_mass_is_left_out_of_bin_confidence():
    d = decide(probs(empty=0.3, paper=0.4, peel=0.3), LABELS, TAX, threshold=0.5)
    assert d.bin == "recyclable"
    assert d.confidence == pytest.approx(0.4 / 0.7)


def test_top_items_are_sorted():
    d = decide(probs(paper=0.1, metal=0.2, peel=0.7), LABELS, TAX, top_k=2)
    assert [k for k, _ in d.top_items] == ["peel", "metal"]


BINS = ["recyclable", "kitchen", "hazardous", "other"]


def with_costs(costs) -> object:
    return parse_taxonomy({**TAX.to_dict(), "costs": costs})


def ones() -> dict:
    return {t: {c: 0 if t == c else 1 for c in BINS} for t in BINS}


def hazard_costly(cost: float = 20) -> dict:
    costs = ones()
    costs["hazardous"].update(recyclable=cost, kitchen=cost, other=cost / 2)
    return costs


VECTORS = [
    probs(paper=0.35, metal=0.3, peel=0.35),
    probs(battery=0.45, paper=0.3, peel=0.25),
    probs(trash=0.26, peel=0.25, battery=0.24, metal=0.25),
    probs(battery=0.9, paper=0.1),
    probs(empty=0.3, paper=0.4, peel=0.3),
]


@pytest.mark.parametrize("p", VECTORS)
def test_all_ones_costs_reproduce_the_most_probable_bin(p):
    plain = decide(p, LABELS, TAX, threshold=0.0)
    costed = decide(p, LABELS, with_costs(ones()), threshold=0.0)
    assert costed.bin == plain.bin == plain.most_probable_bin
    assert not costed.cost_rule and not plain.cost_rule


def test_the_summed_bin_wins_over_the_top_items_bin():
    # top item battery (0.4) but recyclable as a whole has 0.6: the bin of the top item is not the answer
    d = decide(probs(battery=0.4, paper=0.3, metal=0.3), LABELS, TAX, threshold=0.0)
    assert d.item == "battery" and d.bin == "recyclable"
    assert d.most_probable_bin == "recyclable" and not d.cost_rule
    assert d.confidence == pytest.approx(0.6) and d.item_confidence == pytest.approx(0.4)


def test_the_threshold_is_on_the_summed_bin_not_the_top_items_bin():
    # the top item's bin (hazardous, 0.4) is below 0.5, the summed bin (recyclable, 0.6) is not
    d = decide(probs(battery=0.4, paper=0.3, metal=0.3), LABELS, TAX, threshold=0.5)
    assert d.bin == "recyclable" and not d.uncertain
    assert d.most_probable_bin == "recyclable" and not d.cost_rule


def test_the_threshold_is_on_the_most_probable_bin_when_the_costs_choose_another():
    # the costs move the item to hazardous (0.4), but recyclable (0.6) clears the threshold: not uncertain
    d = decide(probs(battery=0.4, paper=0.6), LABELS, with_costs(hazard_costly()), threshold=0.5)
    assert d.bin == "hazardous" and d.cost_rule and not d.uncertain


def test_a_costly_hazardous_miss_flips_a_40_percent_hazardous_item():
    p = probs(battery=0.4, paper=0.6)
    assert decide(p, LABELS, TAX, threshold=0.0).bin == "recyclable"
    d = decide(p, LABELS, with_costs(hazard_costly()), threshold=0.0)
    assert d.bin == "hazardous" and d.cost_rule and d.most_probable_bin == "recyclable"
    assert d.confidence == pytest.approx(0.4)


def test_costs_below_the_break_even_do_not_flip():
    # choosing recyclable costs 0.4 * c, choosing hazardous costs 0.6 * 1: flips only when c > 1.5
    p = probs(battery=0.4, paper=0.6)
    assert decide(p, LABELS, with_costs(hazard_costly(1.4)), threshold=0.0).bin == "recyclable"
    assert decide(p, LABELS, with_costs(hazard_costly(1.6)), threshold=0.0).bin == "hazardous"


def test_an_uncertain_item_the_costs_moved_keeps_the_costs_bin():
    d = decide(probs(battery=0.4, paper=0.6), LABELS, with_costs(hazard_costly()), threshold=0.85)
    assert d.uncertain and d.bin == "hazardous"
    # an uncertain item the costs did not move still goes to the fallback bin
    d = decide(probs(peel=0.6, paper=0.4), LABELS, with_costs(hazard_costly()), threshold=0.85)
    assert d.uncertain and not d.cost_rule and d.bin == "other"


# 0.75 exactly, from one item or summed from two (0.5 + 0.25 is exact in float32)
@pytest.mark.parametrize("p", [probs(paper=0.75, peel=0.25), probs(paper=0.5, metal=0.25, peel=0.25)])
def test_threshold_boundary_is_not_uncertain(p):
    d = decide(p, LABELS, TAX, threshold=0.75)
    assert d.confidence == 0.75
    assert not d.uncertain and d.bin == "recyclable"
    d = decide(p, LABELS, TAX, threshold=0.7501)
    assert d.uncertain and d.bin == "other"


# Costs that price both harms: a hazardous item in any other bin costs A, any other item in the hazardous
# bin costs B (a can there contaminates the costliest stream), every other mistake 1. Between hazardous
# and one other bin, hazardous wins above B / (A + B) = 40%.
A, B = 3.0, 2.0
REAL = ["drink-can", "battery", "paper", "banana-peel", "trash"]
NOT_HAZARDOUS = ["recyclable", "kitchen", "other"]


def priced(a: float = A, b: float = B):
    shipped = load_taxonomy(TAXONOMIES / "cn-4bin.yaml")
    costs = {
        t: {
            c: 0.0 if t == c else a if t == "hazardous" else b if c == "hazardous" else 1.0
            for c in shipped.bin_ids
        }
        for t in shipped.bin_ids
    }
    return parse_taxonomy({**shipped.to_dict(), "costs": costs})


PRICED = priced()


def real(**kw):
    return np.array([kw.get(label.replace("-", "_"), 0.0) for label in REAL], dtype=np.float32)


@pytest.mark.parametrize("battery", [0.25, 0.3, 0.39])
def test_a_can_that_is_partly_battery_stays_out_of_a_priced_hazardous_bin(battery):
    d = decide(real(battery=battery, drink_can=1 - battery), REAL, PRICED, threshold=0.0)
    assert d.bin == "recyclable" and not d.cost_rule


def test_a_battery_past_the_break_even_goes_to_hazardous():
    d = decide(real(battery=0.45, drink_can=0.55), REAL, PRICED, threshold=0.0)
    assert d.bin == "hazardous" and d.cost_rule and d.most_probable_bin == "recyclable"
    d = decide(real(battery=0.6, drink_can=0.4), REAL, PRICED, threshold=0.0)
    assert d.bin == "hazardous" and not d.cost_rule


def test_pricing_only_the_hazardous_miss_tips_a_30_percent_can_into_hazardous():
    """The old costs (the hazardous row only): what the price on the hazardous column prevents."""
    d = decide(real(battery=0.3, drink_can=0.7), REAL, priced(b=1.0), threshold=0.0)
    assert d.bin == "hazardous"


def test_an_uncertain_item_whose_most_probable_bin_is_hazardous_goes_to_the_fallback_bin():
    # below the threshold on its most probable bin, and the costs did not move it: default_bin (other).
    # This is why the threshold must be chosen with the costs: a high one sends hazardous items to other.
    d = decide(real(battery=0.6, drink_can=0.4), REAL, PRICED, threshold=0.65)
    assert d.uncertain and not d.cost_rule and d.bin == PRICED.default_bin == "other"


@settings(max_examples=300, deadline=None)
@given(p=st.floats(0.0, 1.0), other=st.sampled_from(["drink-can", "banana-peel", "trash"]))
def test_two_bins_hazardous_exactly_past_the_break_even(p, other):
    """Hazardous and one other bin: hazardous exactly when p_haz * A > (1 - p_haz) * B; on an exact tie
    the bin listed first wins."""
    probs = np.zeros(len(REAL), dtype=np.float32)
    probs[REAL.index("battery")] = p
    probs[REAL.index(other)] += 1 - p
    d = decide(probs, REAL, PRICED, threshold=0.0)
    c = PRICED.bin_of(other)
    a, b = PRICED.cost("hazardous", c), PRICED.cost(c, "hazardous")
    p_haz, p_other = d.bin_probs["hazardous"], d.bin_probs[c]
    first = PRICED.bin_ids.index("hazardous") < PRICED.bin_ids.index(c)
    wins = p_haz * a > p_other * b or (p_haz * a == p_other * b and first)
    assert (d.bin == "hazardous") == wins
    assert d.bin in ("hazardous", c)
