"""Temperature scaling: fitted on hand-made logits, kept in model.json, applied by every runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.errors import SmartbinError
from edge.images import read_image
from edge.model.bundle import load_bundle
from edge.model.calibration import (
    calibrated,
    expected_calibration_error,
    fit_temperature,
    item_confidence,
    negative_log_likelihood,
    reliability,
)
from edge.model.classifier import Classifier
from edge.model.preprocess import prepare
from edge.paths import DEFAULT_BUNDLE
from edge.service.cli import main as smartbin
from tests.conftest import needs_data, real_photos, shipped_bundle_with


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def drawn(t0: float, n: int = 4000, labels: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """softmax(z) for random logits z, and true labels drawn from softmax(z / t0): T0 calibrates them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, labels))
    truth = softmax(z / t0)
    y = (truth.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return softmax(z), y


@pytest.mark.parametrize("t0", [0.5, 0.8, 1.25, 2.0])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(t0):
    probs, y = drawn(t0)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(t0, rel=0.05)
    assert fit_temperature(probs, y) == t  # deterministic
    assert negative_log_likelihood(probs, y, t) < negative_log_likelihood(probs, y)
    before = expected_calibration_error(*item_confidence(probs, y))
    after = expected_calibration_error(*item_confidence(calibrated(probs, t), y))
    assert after < before and after < 0.03


def test_temperature_one_is_the_identity_and_the_top_item_never_changes():
    rng = np.random.default_rng(1)
    p = np.round(rng.dirichlet(np.full(34, 0.3), 200) * 256).astype(np.float32) / 256  # uint8 softmax
    assert calibrated(p, 1.0) is p
    for t in (0.05, 0.5, 2.0, 20.0):
        c = calibrated(p, t)
        assert c.dtype == np.float32 and c.shape == p.shape
        np.testing.assert_array_equal(c.argmax(axis=1), p.argmax(axis=1))
        np.testing.assert_allclose(c.sum(axis=1), 1, rtol=1e-5)
        np.testing.assert_array_equal(calibrated(p[7], t), c[7])  # one photo as in a batch
    # a higher temperature, a lower confidence
    assert (calibrated(p, 2.0).max(axis=1) <= calibrated(p, 0.5).max(axis=1) + 1e-7).all()


def test_expected_calibration_error_on_hand_made_bins():
    assert expected_calibration_error([1.0, 1.0, 1.0, 1.0], [True, False, True, False]) == pytest.approx(0.5)
    conf = [0.95] * 10 + [0.25] * 4
    right = [True] * 9 + [False] + [True] + [False] * 3
    table = reliability(conf, right, n_bins=10)
    assert [(r["lo"], r["hi"], r["n"]) for r in table] == [(0.2, 0.3, 4), (0.9, 1.0, 10)]
    assert table[1]["accuracy"] == pytest.approx(0.9) and table[1]["confidence"] == pytest.approx(0.95)
    assert expected_calibration_error(conf, right, 10) == pytest.approx((10 * 0.05 + 4 * 0) / 14)


def test_a_bundle_without_calibration_loads_uncalibrated(tmp_path):
    old = load_bundle(shipped_bundle_with(tmp_path / "old", drop=("calibration",)))
    assert old.temperature == 1.0 and not old.calibrated
    assert old.calibration_note == "uncalibrated (bundle made before calibration)"
    shipped = load_bundle(DEFAULT_BUNDLE)
    assert shipped.calibrated and shipped.temperature == shipped.meta["calibration"]["temperature"]
    mine = load_bundle(
        shipped_bundle_with(tmp_path, calibration={"temperature": 1.7, "fitted_on": "val", "photos": 9})
    )
    assert mine.temperature == 1.7 and mine.calibrated and mine.calibration_note == "calibrated (T=1.7)"


@pytest.mark.parametrize(
    "block",
    [{}, {"temperature": 0}, {"temperature": -1}, {"temperature": "hot"}, {"temperature": math.nan}]
    + [{"temperature": math.inf}, {"temperature": True}, {"temperature": None}, 2.0],
    ids=["missing", "zero", "negative", "text", "nan", "inf", "bool", "null", "not-a-block"],
)
def test_a_bad_temperature_is_refused_with_the_key_and_the_fix(tmp_path, block):
    with pytest.raises(SmartbinError) as err:
        load_bundle(shipped_bundle_with(tmp_path, calibration=block))
    assert "model.json calibration.temperature is" in err.value.problem
    assert "export the bundle again with smartbin-train" in err.value.fix and "copy" in err.value.fix


@needs_data
def test_the_classifier_applies_the_bundles_temperature(tmp_path):
    photo = read_image(real_photos("battery", 1)[0])
    plain = Classifier(load_bundle(shipped_bundle_with(tmp_path / "plain", drop=("calibration",))))
    hot = Classifier(load_bundle(shipped_bundle_with(tmp_path, calibration={"temperature": 2.0})))
    raw = plain.predict(photo)
    probs = hot.predict(photo)
    np.testing.assert_array_equal(probs, calibrated(raw, 2.0))
    np.testing.assert_array_equal(hot.uncalibrated_tensor(hot.input_tensor(photo)), raw)
    assert probs.max() < raw.max() and probs.argmax() == raw.argmax()

    # the trainer's batch path: the classifier's own calibration, the same as photo by photo
    from host_training.quantize import predict_int8

    photos = [read_image(p) for p in real_photos("paper", 3)]
    pixels = np.stack([prepare(photo, hot.spec) for photo in photos])  # as the trainer prepares photos
    batch = predict_int8(hot, pixels)
    np.testing.assert_array_equal(batch, hot.calibrate(predict_int8(hot, pixels, uncalibrated=True)))
    np.testing.assert_array_equal(batch, np.stack([hot.predict(photo) for photo in photos]))


@needs_data
def test_classify_and_check_say_whether_the_model_is_calibrated(tmp_path, capsys):
    bundle = shipped_bundle_with(tmp_path, calibration={"temperature": 2.0})
    photo = str(real_photos("battery", 1)[0])
    assert smartbin(["classify", "--model", str(bundle), photo]) == 0
    assert "), calibrated (T=2), taxonomy" in capsys.readouterr().out
    old = shipped_bundle_with(tmp_path / "old", drop=("calibration",))
    assert smartbin(["classify", "--model", str(old), photo]) == 0
    assert "uncalibrated (bundle made before calibration)" in capsys.readouterr().out
    assert smartbin(["classify", photo]) == 0  # the shipped model
    assert "), calibrated (T=0.65), taxonomy" in capsys.readouterr().out
    config = tmp_path / "smartbin.yaml"
    config.write_text(f"model: {{bundle: {bundle}}}\n")
    assert smartbin(["check", "--config", str(config), "--only", "model"]) == 0
    assert "calibrated (T=2)" in capsys.readouterr().out
