import numpy as np
import pytest

from edge.decision import bin_probabilities, decide
from edge.taxonomy import parse_taxonomy

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


def test_empty_mass_is_left_out_of_bin_confidence():
    d = decide(probs(empty=0.3, paper=0.4, peel=0.3), LABELS, TAX, threshold=0.5)
    assert d.bin == "recyclable"
    assert d.confidence == pytest.approx(0.4 / 0.7)


def test_top_items_are_sorted():
    d = decide(probs(paper=0.1, metal=0.2, peel=0.7), LABELS, TAX, top_k=2)
    assert [k for k, _ in d.top_items] == ["peel", "metal"]
