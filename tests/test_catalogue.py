"""The catalogue of hand-written bugs stays applicable: each entry's text occurs once in its file and
its tests exist (scripts/mutation --catalogue runs them; too slow for CI)."""

from __future__ import annotations

import pytest

from tests.catalogue import CATALOGUE, REPO


@pytest.mark.parametrize("bug", CATALOGUE, ids=lambda b: b.id)
def test_each_bug_applies_once_and_names_tests_that_exist(bug):
    text = (REPO / bug.file).read_text(encoding="utf-8")
    assert text.count(bug.find) == 1, f"{bug.id}: the code changed; update the entry in tests/catalogue.py"
    assert bug.replace != bug.find
    for test in bug.tests:
        assert (REPO / test.split("::")[0]).is_file(), test


def test_ids_are_unique():
    assert len({b.id for b in CATALOGUE}) == len(CATALOGUE)
