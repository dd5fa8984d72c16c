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
