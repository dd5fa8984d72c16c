"""What the README states that code decides: the hazardous rule, the apt packages scripts/test installs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edge.model.decision import choose_bin, decide
from edge.model.taxonomy import load_taxonomy
from tests.conftest import REPO

README = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
TAXONOMY = load_taxonomy(REPO / "config" / "taxonomy" / "cn-4bin.yaml")
OTHERS = [b for b in TAXONOMY.bin_ids if b != "hazardous"]


def said(pattern: str) -> str:
    found = re.search(pattern, README)
    assert found, f"the README no longer says {pattern!r}"
    return found.group(1)


def goes_to_hazardous(p_hazardous: float, rest: dict[str, float]) -> bool:
    """What the code chooses for an item this likely hazardous, the rest shared among ``rest`` as given."""
    bins = {"hazardous": p_hazardous, **{b: (1 - p_hazardous) * share for b, share in rest.items()}}
    return choose_bin(bins, TAXONOMY) == "hazardous"


def break_even(rest: dict[str, float]) -> float:
    """The least probability of hazardous at which the costs choose hazardous (bisection on the code)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if goes_to_hazardous(middle, rest) else (middle, high)
    return high


def test_the_cost_factor_the_readme_names_is_the_shipped_taxonomys():
    factor = float(said(r"makes a hazardous item in any other bin cost (\d+) times an ordinary mistake"))
    assert {TAXONOMY.cost("hazardous", b) for b in OTHERS} == {factor}
    assert {TAXONOMY.cost(b, "hazardous") for b in OTHERS} == {1.0}


def test_the_readme_states_the_hazardous_rule_the_decision_applies():
    hardest = max(break_even({b: 1.0}) for b in OTHERS)  # the rest all in one other bin
    spread = break_even(dict.fromkeys(OTHERS, 1 / len(OTHERS)))
    assert float(said(r"for every item more than (\d+)% likely to be hazardous")) == pytest.approx(
        100 * hardest
    )
    assert float(said(r"for one only more than (\d+)% likely when the rest is spread")) == pytest.approx(
        100 * spread
    )
    factor = float(said(r"its probability of being hazardous, times (\d+), is more than"))
    for p in np.random.default_rng(0).dirichlet(np.ones(len(TAXONOMY.bin_ids)), 5000):
        bins = dict(zip(TAXONOMY.bin_ids, map(float, p)))
        likeliest_other = max(bins[b] for b in OTHERS)
        assert (choose_bin(bins, TAXONOMY) == "hazardous") == (factor * bins["hazardous"] > likeliest_other)


def test_the_threshold_still_applies_when_hazardous_is_also_the_most_probable_bin():
    assert "the threshold below still applies when hazardous is also the most probable bin" in README
    labels = ["battery", "paper", "banana-peel", "trash"]  # hazardous, recyclable, kitchen, other
    moved = decide(np.array([0.3, 0.6, 0.05, 0.05]), labels, TAXONOMY, threshold=0.65)
    assert moved.bin == "hazardous" and moved.cost_rule and moved.uncertain
    unsure = decide(np.array([0.5, 0.3, 0.1, 0.1]), labels, TAXONOMY, threshold=0.65)
    assert unsure.bin == "other" and not unsure.cost_rule and unsure.uncertain


def test_the_readme_lists_the_apt_packages_scripts_test_installs():
    script = (REPO / "scripts" / "test").read_text(encoding="utf-8")
    installed = {name for group in re.findall(r"need\+=\(([^)]*)\)", script) for name in group.split()}
    installed |= set(re.findall(r'"\$\{suite\[@\]\}" (\S+)', script))  # qemu-user, installed on its own
    listed = said(r"The apt packages, each installed only where it is missing: `([^`]*)`").split()
    assert "chromium" in installed and "qemu-user" in installed
    assert sorted(listed) == sorted(installed)
