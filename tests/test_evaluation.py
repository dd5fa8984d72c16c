"""Comparing two models on the same photos (`smartbin eval --model A --model B`): numbers and verdict."""

import pytest

from edge.model.evaluation import compare_models, format_comparison

TRUTH = ["battery", "battery", "paper", "paper", "cup"]


def test_the_photos_each_gets_right_the_accuracies_and_the_verdict():
    old = [True, False, True, True, None]  # the old model has no bin for "cup": not scored for either
    new = [True, True, True, False, True]
    result = compare_models(("old", "new"), TRUTH, (old, new))
    assert result["n"] == 4 and result["bin_accuracy"] == [0.75, 0.75]
    assert result["only_first"] == [3] and result["only_second"] == [1]
    assert result["per_label"] == {"battery": [0.5, 1.0], "paper": [1.0, 0.5]}
    assert result["verdict"].startswith("neither is better: as many photos each way")

    better = compare_models(("old", "new"), TRUTH, (old, [True, True, True, True, False]))
    assert better["verdict"].startswith("new is better by 25.0 points of bin accuracy (75.0% and 100.0% on 4")
    assert "new gets 1 right that old misses, old gets 0 that new misses" in better["verdict"]
    worse = compare_models(("old", "new"), TRUTH, (old, [False, False, True, True, False]))
    assert worse["verdict"].startswith("old is better by 25.0 points")
    same = compare_models(("a", "b"), TRUTH, (old, old))
    assert same["verdict"].startswith("the same") and not same["only_first"] and not same["only_second"]


def test_the_table_names_the_photos_and_marks_the_labels_that_moved():
    result = compare_models(
        ("old", "new"), TRUTH, ([True, False, True, True, True], [True, True, True, False, True])
    )
    text = format_comparison(result, [f"p{i}.jpg" for i in range(5)])
    assert "battery" in text and ">" in text.splitlines()[2] and "<" in text.splitlines()[3]
    assert "new right, old wrong (1):\n  p1.jpg" in text and "old right, new wrong (1):\n  p3.jpg" in text
    assert text.splitlines()[-1].startswith("verdict: ")


def test_nothing_to_score_is_refused():
    with pytest.raises(ValueError):
        compare_models(("a", "b"), ["empty"], ([None], [None]))
