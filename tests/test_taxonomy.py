import pytest
import yaml

from edge.errors import SmartbinError
from edge.taxonomy import load_taxonomy, parse_taxonomy
from tests.conftest import GARBAGE12, REPO

DEFAULT = REPO / "config" / "taxonomy" / "cn-4bin.yaml"
GARBAGE12_BINS = {
    "battery": "hazardous",
    "biological": "kitchen",
    "brown-glass": "recyclable",
    "cardboard": "recyclable",
    "clothes": "recyclable",
    "green-glass": "recyclable",
    "metal": "recyclable",
    "paper": "recyclable",
    "plastic": "recyclable",
    "shoes": "recyclable",
    "trash": "other",
    "white-glass": "recyclable",
}


def test_default_taxonomy_is_the_four_bin_standard():
    tax = load_taxonomy(DEFAULT)
    assert tax.bin_ids == ["recyclable", "kitchen", "hazardous", "other"]
    assert tax.default_bin == "other"
    for label, bin_id in GARBAGE12_BINS.items():
        assert tax.bin_of(label) == bin_id
    for item, bin_id in {
        "medicine": "hazardous",
        "paint": "hazardous",
        "lamp": "hazardous",
        "eggshell": "kitchen",
        "peel": "kitchen",
        "leftovers": "kitchen",
        "ceramics": "other",
        "tissues": "other",
        "cigarette-end": "other",
    }.items():
        assert tax.bin_of(item) == bin_id
    assert tax.bin_of("empty") is None
    assert tax.bin_of("never-heard-of-it") == "other"


@pytest.mark.skipif(not GARBAGE12.is_dir(), reason="garbage12 absent")
def test_default_taxonomy_covers_every_garbage12_folder():
    labels = [p.name for p in GARBAGE12.iterdir() if p.is_dir()]
    assert load_taxonomy(DEFAULT).uncovered(labels) == []


def base():
    return yaml.safe_load(DEFAULT.read_text())


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d["items"].update(battery="toxic"), ["items.battery", "'toxic'", "does not exist"]),
        (lambda d: d.update(default_bin="landfill"), ["default_bin", "'landfill'"]),
        (lambda d: d.update(bins={}), ["no 'bins'"]),
        (lambda d: d["bins"].update({"Bad Bin": {}}), ["'Bad Bin'", "not valid"]),
        (lambda d: d.update(ignore=["battery"]), ["both mapped and ignored"]),
    ],
)
def test_bad_taxonomy_names_the_problem(change, words):
    data = base()
    change(data)
    with pytest.raises(SmartbinError) as err:
        parse_taxonomy(data, source="t.yaml")
    for word in words:
        assert word in str(err.value)
    assert err.value.fix


def test_missing_and_malformed_taxonomy_files(tmp_path):
    with pytest.raises(SmartbinError, match="does not exist"):
        load_taxonomy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bins: [unclosed\n")
    with pytest.raises(SmartbinError, match="not valid YAML"):
        load_taxonomy(bad)


def test_round_trip_through_the_bundle_form():
    tax = load_taxonomy(DEFAULT)
    again = parse_taxonomy(tax.to_dict())
    assert again == tax


COST_BINS = ["recyclable", "kitchen", "hazardous", "other"]


def costed(costs):
    data = yaml.safe_load(DEFAULT.read_text())
    data["costs"] = costs
    return parse_taxonomy(data, "t.yaml")


def full_costs():
    return {t: {c: 0 if t == c else 1 for c in COST_BINS} for t in COST_BINS}


def test_shipped_costs_make_hazardous_misses_the_costliest():
    tax = load_taxonomy(DEFAULT)
    assert tax.costs is not None
    worst = {t: max(tax.cost(t, c) for c in COST_BINS) for t in COST_BINS}
    assert max(worst, key=worst.get) == "hazardous"
    for true_bin in ("recyclable", "kitchen", "other"):
        assert tax.cost(true_bin, "hazardous") <= tax.cost("hazardous", true_bin)


def test_costs_round_trip_through_a_bundle_dict():
    tax = costed(full_costs())
    assert parse_taxonomy(tax.to_dict()).costs == tax.costs


def test_the_diagonal_may_be_left_out():
    costs = full_costs()
    del costs["other"]["other"]
    assert costed(costs).cost("other", "other") == 0


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["hazardous"].update(recyclable=-1), ["costs.hazardous.recyclable", "-1", "0 to"]),
        (lambda c: c.pop("kitchen"), ["no row for bins ['kitchen']", "one row for each bin"]),
        (lambda c: c.update(glass={"other": 1}), ["unknown bins ['glass']"]),
        (lambda c: c["other"].pop("hazardous"), ["costs.other has no cost for bins ['hazardous']"]),
        (lambda c: c["other"].update(glass=2), ["costs.other names unknown bins ['glass']"]),
        (lambda c: c["other"].update(kitchen="high"), ["costs.other.kitchen = 'high' is not a number"]),
        (lambda c: c["other"].update(other=3), ["costs.other.other", "the right bin costs nothing"]),
        (lambda c: c["other"].update(kitchen=float("nan")), ["is not a number"]),
    ],
)
def test_bad_costs_are_refused_with_the_key_and_the_fix(change, words):
    costs = full_costs()
    change(costs)
    with pytest.raises(SmartbinError) as err:
        costed(costs)
    text = str(err.value)
    assert text.startswith("t.yaml: ")
    for word in words:
        assert word in text


def test_costs_that_are_not_a_mapping_are_refused():
    with pytest.raises(SmartbinError, match="'costs' is not a mapping"):
        costed([1, 2])
