"""The edge refuses a bundle it cannot trust, and says why."""

import json

import numpy as np
import pytest

from edge.errors import SmartbinError
from edge.model.bundle import load_bundle
from edge.model.classifier import Classifier
from edge.model.taxonomy import load_taxonomy, parse_taxonomy
from edge.paths import DEFAULT_BUNDLE
from tests.conftest import REPO, needs_data, needs_weights

pytestmark = [needs_data, needs_weights]


def edit_meta(bundle, **changes):
    path = bundle / "model.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_good_bundle_loads(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.model_path.is_file()
    assert load_bundle(tiny_bundle / "model.json").folder == bundle.folder
    assert load_bundle(tiny_bundle / "model.tflite").folder == bundle.folder


def test_tampered_model_is_refused_by_sha256(tiny_bundle):
    model = tiny_bundle / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(SmartbinError, match="sha256") as err:
        load_bundle(tiny_bundle)
    assert "copy model.tflite and model.json again" in err.value.fix


def test_unknown_format_version_is_refused(tiny_bundle):
    edit_meta(tiny_bundle, format_version=99)
    with pytest.raises(SmartbinError, match="format version 99 is not supported"):
        load_bundle(tiny_bundle)


def test_missing_file_and_bad_json_are_refused(tiny_bundle):
    (tiny_bundle / "model.json").write_text("{not json")
    with pytest.raises(SmartbinError, match="not valid JSON"):
        load_bundle(tiny_bundle)
    (tiny_bundle / "model.json").unlink()
    with pytest.raises(SmartbinError, match="model.json is missing"):
        load_bundle(tiny_bundle)


def test_a_model_json_nested_too_deep_or_too_big_is_refused_not_a_crash(tmp_path):
    """The shipped bundle's model.tflite beside a model.json that is hostile: never a traceback, never
    read without end."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.tflite").write_bytes((DEFAULT_BUNDLE / "model.tflite").read_bytes())
    (bundle / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SmartbinError, match="not valid JSON \\(nested too deep\\)"):
        load_bundle(bundle)
    (bundle / "model.json").write_bytes(b" " * (5 << 20) + b"{}")
    with pytest.raises(SmartbinError, match="more than the 4 MiB"):
        load_bundle(bundle)


def test_a_password_file_swapped_for_a_device_after_load_is_not_read_without_end():
    from edge.config import MqttConfig
    from edge.mqtt.client import read_password

    with pytest.raises(SmartbinError, match="character device"):
        read_password(MqttConfig(password_file="/dev/zero"))


def test_labels_not_covered_by_the_active_taxonomy_are_refused(tiny_bundle):
    narrow = parse_taxonomy(
        {
            "name": "narrow",
            "default_bin": "other",
            "bins": {"other": {}, "kitchen": {}},
            "items": {"biological": "kitchen"},
        }
    )
    with pytest.raises(
        SmartbinError,
        match=r"labels \['battery', 'clothes', 'paint-bucket', 'trash'\] are not in taxonomy 'narrow'",
    ):
        load_bundle(tiny_bundle, narrow)
    shipped = load_taxonomy(REPO / "config/taxonomy/cn-4bin.yaml")
    with pytest.raises(SmartbinError, match=r"never tips \['earbuds', 'glasses', 'hand', 'phone'\]"):
        load_bundle(tiny_bundle, shipped)  # a model that knows no hand cannot promise to hold one
    assert load_bundle(tiny_bundle, shipped.holding_only(load_bundle(tiny_bundle).labels))


def test_corrupt_model_with_matching_sha_is_refused_by_the_interpreter(tiny_bundle):
    (tiny_bundle / "model.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(SmartbinError, match="cannot load"):
        Classifier(load_bundle(tiny_bundle, verify_sha=False))


def test_classifier_reads_quantisation_from_the_model(tiny_bundle):
    clf = Classifier(load_bundle(tiny_bundle))
    meta = json.loads((tiny_bundle / "model.json").read_text())
    assert clf.input_dtype == np.uint8
    assert clf._in_q[0] == pytest.approx(meta["input"]["quantization"]["scale"])
    probs = clf.predict(np.full((300, 400, 3), 128, np.uint8))
    assert probs.shape == (len(meta["labels"]),) and probs.sum() == pytest.approx(1.0, abs=0.02)
