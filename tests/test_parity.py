"""The int8 parity gate of a training run: top-1 agreement and accuracy drop from float to int8 on hand-made
predictions, and the two limits (--min-agreement, --max-int8-drop) at their boundaries."""

import dataclasses
import json

import numpy as np

from host_training.cli import build_parser
from host_training.quantize import parity, parity_gate_failures
from host_training.settings import TrainSettings, load_settings
from tests.conftest import SHIPPED


def predictions(*tops: int, labels: int = 3) -> np.ndarray:
    """Probabilities whose top-1 item of each photo is ``tops``."""
    out = np.full((len(tops), labels), 0.1, dtype=np.float32)
    out[np.arange(len(tops)), tops] = 0.8
    return out


def settings(*flags: str) -> TrainSettings:
    """The settings smartbin-train builds from these flags (and its defaults)."""
    args = vars(build_parser().parse_args(list(flags)))
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    return load_settings(None, {k: v for k, v in args.items() if k in names})


def check(agreement: float, drop_points: float) -> dict[str, float]:
    return {"agreement": agreement, "drop_points": drop_points}


def test_parity_counts_agreement_and_the_drop_in_points():
    # float right on 3 of 4, int8 on 2 of 4; they agree on the first two photos only
    true = np.array([0, 1, 2, 0])
    result = parity(predictions(0, 1, 2, 1), predictions(0, 1, 1, 2), true)
    assert result == {"agreement": 0.5, "float_accuracy": 0.75, "int8_accuracy": 0.5, "drop_points": 25.0}


def test_disagreeing_on_wrong_answers_lowers_agreement_not_accuracy():
    # both right on photo 0 only; int8 says 2 where float says 1 on photo 1: 3 of 4 agree, nothing is lost
    true = np.array([0, 0, 0, 0])
    result = parity(predictions(0, 1, 2, 1), predictions(0, 2, 2, 1), true)
    assert result == {"agreement": 0.75, "float_accuracy": 0.25, "int8_accuracy": 0.25, "drop_points": 0.0}


def test_int8_more_accurate_than_float_is_a_negative_drop():
    true = np.array([0, 1, 2, 0])
    result = parity(predictions(1, 1, 2, 1), predictions(0, 1, 2, 0), true)
    assert result == {"agreement": 0.5, "float_accuracy": 0.5, "int8_accuracy": 1.0, "drop_points": -50.0}


def test_only_the_top_item_counts():
    true = np.array([0, 1, 2])
    float_probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32)
    int8_probs = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.33, 0.33, 0.34]], dtype=np.float32)
    assert parity(float_probs, int8_probs, true) == {
        "agreement": 1.0,
        "float_accuracy": 1.0,
        "int8_accuracy": 1.0,
        "drop_points": 0.0,
    }


def test_agreement_at_the_minimum_passes_and_below_it_fails():
    strict = settings("--min-agreement", "0.75")
    assert strict.min_agreement == 0.75
    assert parity_gate_failures(check(0.75, 0.0), strict) == []
    assert parity_gate_failures(check(0.7499, 0.0), strict) == ["min_agreement"]
    assert parity_gate_failures(check(1.0, 0.0), strict) == []


def test_a_drop_at_the_maximum_passes_and_above_it_fails():
    strict = settings("--max-int8-drop", "2.5")
    assert strict.max_int8_drop == 2.5
    assert parity_gate_failures(check(1.0, 2.5), strict) == []
    assert parity_gate_failures(check(1.0, 2.5001), strict) == ["max_int8_drop"]
    assert parity_gate_failures(check(1.0, -3.0), strict) == []  # int8 more accurate than float


def test_each_limit_is_checked_on_its_own():
    both = settings("--min-agreement", "0.9", "--max-int8-drop", "2")
    assert parity_gate_failures(check(0.5, 0.0), both) == ["min_agreement"]  # a fine drop does not save it
    assert parity_gate_failures(check(1.0, 10.0), both) == ["max_int8_drop"]  # nor full agreement
    assert parity_gate_failures(check(0.5, 10.0), both) == ["min_agreement", "max_int8_drop"]


def test_the_gate_on_parity_of_known_predictions():
    # agreement 0.5, drop 25 points (the first test's predictions)
    result = parity(predictions(0, 1, 2, 1), predictions(0, 1, 1, 2), np.array([0, 1, 2, 0]))
    assert parity_gate_failures(result, settings("--min-agreement", "0.5", "--max-int8-drop", "25")) == []
    assert parity_gate_failures(result, settings("--min-agreement", "0.51", "--max-int8-drop", "25")) == [
        "min_agreement"
    ]
    assert parity_gate_failures(result, settings("--min-agreement", "0.5", "--max-int8-drop", "24.9")) == [
        "max_int8_drop"
    ]


def test_the_default_gate_passes_the_shipped_model_and_fails_just_past_it():
    # the shipped model measured agreement 0.969 and a drop of 0.47 points against the defaults 0.965 and 1.0
    measured = json.loads((SHIPPED / "report.json").read_text())["result"]["parity"]
    defaults = settings()
    assert (defaults.min_agreement, defaults.max_int8_drop) == (0.965, 1.0)
    assert parity_gate_failures(measured, defaults) == []
    assert parity_gate_failures(check(0.964, 0.47), defaults) == ["min_agreement"]
    assert parity_gate_failures(check(0.969, 1.01), defaults) == ["max_int8_drop"]
