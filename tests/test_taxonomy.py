import pytest
import yaml

from edge.errors import SmartbinError
from edge.model.taxonomy import load_taxonomy, parse_taxonomy
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
    assert err.value.fix


def test_costs_that_are_not_a_mapping_are_refused():
    with pytest.raises(SmartbinError, match="'costs' is not a mapping") as err:
        costed([1, 2])
    assert "one row per true bin" in err.value.fix


@pytest.mark.parametrize(
    "data, words",
    [
        (["recyclable", "other"], ["t.yaml: is not a mapping"]),
        ({**base(), "bins": {"recyclable": 3, "other": {}}}, ["t.yaml: bins.recyclable is not a mapping"]),
        ({**base(), "items": ["paper"]}, ["t.yaml: 'items' is not a mapping"]),
        ({**base(), "ignore": "empty"}, ["t.yaml: 'ignore' is not a list"]),
    ],
)
def test_a_taxonomy_of_the_wrong_shape_is_refused_with_a_fix(data, words):
    with pytest.raises(SmartbinError) as err:
        parse_taxonomy(data, source="t.yaml")
    for word in words:
        assert word in str(err.value)
    assert err.value.fix


def test_names_and_local_names_are_kept_and_defaulted():
    tax = load_taxonomy(DEFAULT)
    assert tax.name == "cn-4bin" and tax.description
    assert tax.bins["hazardous"].name == "Hazardous" and tax.bins["hazardous"].local_name == "有害垃圾"
    bare = parse_taxonomy({"bins": {"recyclable": None, "other": {}}, "default_bin": "other"})
    assert bare.name == "unnamed" and bare.description == ""
    assert bare.bins["recyclable"].name == "recyclable" and bare.bins["recyclable"].local_name == ""


def test_without_costs_every_mistake_costs_one():
    tax = parse_taxonomy({**base(), "costs": None})
    assert tax.costs is None
    assert tax.cost("recyclable", "recyclable") == 0.0 and tax.cost("recyclable", "other") == 1.0


def test_uncovered_labels_are_the_unmapped_not_the_ignored():
    tax = parse_taxonomy({**base(), "ignore": ["empty"]})
    assert tax.uncovered(["paper", "empty", "never-heard-of-it"]) == ["never-heard-of-it"]


def test_a_cost_row_that_is_not_a_mapping_is_refused():
    costs = full_costs()
    costs["other"] = 3
    with pytest.raises(SmartbinError) as err:
        costed(costs)
    assert "costs.other is not a mapping" in str(err.value) and err.value.fix


@pytest.mark.parametrize("value, ok", [(1e6, True), (1e6 + 1, False)])
def test_the_largest_cost_is_a_million(value, ok):
    costs = full_costs()
    costs["hazardous"]["other"] = value
    if ok:
        assert costed(costs).cost("hazardous", "other") == value
    else:
        with pytest.raises(SmartbinError, match="out of range"):
            costed(costs)


def test_only_the_part_of_the_costs_that_is_wrong_is_named():
    costs = full_costs()
    costs.pop("kitchen")
    with pytest.raises(SmartbinError) as err:
        costed(costs)
    assert "unknown" not in str(err.value)
    costs = {**full_costs(), "glass": {"other": 1}}
    with pytest.raises(SmartbinError) as err:
        costed(costs)
    assert "no row" not in str(err.value)


def test_a_taxonomy_file_that_is_missing_or_not_text_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(SmartbinError) as err:
        load_taxonomy(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in err.value.problem
    assert err.value.fix == "point model.taxonomy (or --taxonomy) at a file like config/taxonomy/cn-4bin.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bins")
    with pytest.raises(SmartbinError) as err:
        load_taxonomy(binary)
    assert f"taxonomy file {binary} is not UTF-8 text (byte 0)" in err.value.problem
    assert err.value.fix == "point model.taxonomy at the YAML file, or copy it again from config/taxonomy/"


def test_errors_in_a_taxonomy_file_name_the_file(tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nbins: {other: {}}\ndefault_bin: landfill\n")
    with pytest.raises(SmartbinError) as err:
        load_taxonomy(wrong)
    assert err.value.problem.startswith(f"{wrong}: default_bin 'landfill'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("bins: [unclosed\n")
    with pytest.raises(SmartbinError) as err:
        load_taxonomy(broken)
    assert err.value.problem.startswith(f"taxonomy file {broken} is not valid YAML")


def test_a_taxonomy_reads_the_same_under_a_non_utf8_locale():
    """A Pi image left at LANG=C must still read the Chinese bin names."""
    import os
    import subprocess
    import sys

    code = (
        "from edge.model.taxonomy import load_taxonomy; "
        f"print(load_taxonomy({str(DEFAULT)!r}).bins['hazardous'].local_name.encode('utf-8').hex())"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout.strip()).decode("utf-8") == "有害垃圾"


def without(costs: dict, bin_id: str) -> dict:
    return {k: v for k, v in costs.items() if k != bin_id}


COSTS_EXAMPLE = "costs: {hazardous: {recyclable: 20, kitchen: 20, other: 10, hazardous: 0}, ...}"


@pytest.mark.parametrize(
    "make, problem, fix",
    [
        (
            lambda: parse_taxonomy(["recyclable"]),
            "taxonomy: is not a mapping",
            "a taxonomy has the keys name, bins, items, default_bin",
        ),
        (
            lambda: parse_taxonomy({**base(), "bins": {}}, "t.yaml"),
            "t.yaml: has no 'bins'",
            "list the bins, e.g. bins: {recyclable: {name: Recyclable}}",
        ),
        (
            lambda: parse_taxonomy({**base(), "bins": {**base()["bins"], "Bad Bin": {}}}, "t.yaml"),
            "t.yaml: bin id 'Bad Bin' is not valid",
            "use lowercase letters, digits, '-' or '_', starting with a letter",
        ),
        (
            lambda: parse_taxonomy({**base(), "bins": {"recyclable": 3, "other": {}}}, "t.yaml"),
            "t.yaml: bins.recyclable is not a mapping",
            "give it a name: {name: ...}",
        ),
        (
            lambda: parse_taxonomy({**base(), "default_bin": "landfill"}, "t.yaml"),
            "t.yaml: default_bin 'landfill' is not one of the bins "
            "['recyclable', 'kitchen', 'hazardous', 'other']",
            "set default_bin to one of the bins declared under 'bins'",
        ),
        (
            lambda: parse_taxonomy({**base(), "items": ["paper"]}, "t.yaml"),
            "t.yaml: 'items' is not a mapping",
            "write items as label: bin_id lines",
        ),
        (
            lambda: parse_taxonomy({**base(), "ignore": "empty"}, "t.yaml"),
            "t.yaml: 'ignore' is not a list",
            "write ignore: [empty]",
        ),
        (
            lambda: parse_taxonomy({**base(), "ignore": ["battery"]}, "t.yaml"),
            "t.yaml: labels ['battery'] are both mapped and ignored",
            "keep each label in one place",
        ),
        (
            lambda: costed([1, 2]),
            "t.yaml: 'costs' is not a mapping",
            f"write one row per true bin, e.g. {COSTS_EXAMPLE}",
        ),
        (
            lambda: costed({**full_costs(), "other": {**full_costs()["other"], "kitchen": "high"}}),
            "t.yaml: costs.other.kitchen = 'high' is not a number",
            "write a number, e.g. 1 or 20",
        ),
        (
            lambda: costed({**full_costs(), "other": {**full_costs()["other"], "other": 3}}),
            "t.yaml: costs.other.other = 3",
            "the right bin costs nothing: write 0 or leave it out",
        ),
        (
            lambda: costed({**without(full_costs(), "kitchen"), "glass": {"other": 1}}),
            "t.yaml: costs name unknown bins ['glass']; have no row for bins ['kitchen']",
            "give one row for each bin of ['recyclable', 'kitchen', 'hazardous', 'other'] (the item's true "
            f"bin), e.g. {COSTS_EXAMPLE}",
        ),
        (
            lambda: costed(without(full_costs(), "kitchen")),
            "t.yaml: costs have no row for bins ['kitchen']",
            "give one row for each bin of ['recyclable', 'kitchen', 'hazardous', 'other'] (the item's true "
            f"bin), e.g. {COSTS_EXAMPLE}",
        ),
        (
            lambda: costed({**full_costs(), "glass": {"other": 1}}),
            "t.yaml: costs name unknown bins ['glass']",
            "give one row for each bin of ['recyclable', 'kitchen', 'hazardous', 'other'] (the item's true "
            f"bin), e.g. {COSTS_EXAMPLE}",
        ),
    ],
)
def test_each_refusal_says_exactly_what_is_wrong_and_how_to_fix_it(make, problem, fix):
    """The words a technician reads in the log: pinned, so that a change to them is a decision."""
    with pytest.raises(SmartbinError) as err:
        make()
    assert (err.value.problem, err.value.fix) == (problem, fix)
