"""Old 32-bit Pi images: tflite-runtime 2.14 with numpy 1.x runs the bundle like LiteRT does.

`scripts/test` builds `.venv-legacy` with `smartbin[edge-legacy]` (tflite-runtime,
numpy<2) beside the main environment; this test drives the real CLI in both.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge.model.calibration import calibrated
from edge.paths import DEFAULT_BUNDLE
from tests.conftest import REPO, TINY_CLASSES, needs_data, real_photos, shipped_bundle_with

LEGACY = REPO / ".venv-legacy" / "bin" / "python"

pytestmark = [
    needs_data,
    pytest.mark.skipif(not LEGACY.exists(), reason="no .venv-legacy: scripts/test builds it"),
]


def classify(python, photos) -> list[dict]:
    out = subprocess.run(
        [str(python), "-m", "edge", "classify", "--json", *map(str, photos)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_legacy_environment_really_is_legacy():
    code = (
        "import numpy, tflite_runtime, importlib.util as u; "
        "print(numpy.__version__, u.find_spec('ai_edge_litert'))"
    )
    out = subprocess.run([str(LEGACY), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith("1.") and out[1] == "None"


def test_tflite_runtime_and_litert_agree_on_real_photos():
    photos = [p for label in TINY_CLASSES + ("paper", "green-glass") for p in real_photos(label, 6)]
    legacy, current = classify(LEGACY, photos), classify(sys.executable, photos)
    assert len(legacy) == len(current) == len(photos)
    same = sum(a["item"] == b["item"] for a, b in zip(legacy, current))
    assert same >= len(photos) - 1
    header = subprocess.run(
        [str(LEGACY), "-m", "edge", "classify", str(photos[0])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "(tflite-runtime)" in header


def test_tflite_runtime_applies_the_bundles_temperature(tmp_path):
    """The calibration is the classifier's, not the runtime's: the old runtime applies it too."""
    hot = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    meta = json.loads((hot / "model.json").read_text())
    meta["calibration"] = {"temperature": 2.0, "fitted_on": "val", "photos": 1}
    (hot / "model.json").write_text(json.dumps(meta))
    plain = shipped_bundle_with(tmp_path / "plain", drop=("calibration",))  # as a bundle made before it
    photos = [str(p) for p in real_photos("battery", 2) + real_photos("paper", 2)]
    code = (
        "import json, sys\n"
        "from edge.images import read_image\n"
        "from edge.model.bundle import load_bundle\n"
        "from edge.model.classifier import Classifier\n"
        "plain, hot = (Classifier(load_bundle(b)) for b in sys.argv[1:3])\n"
        "print(json.dumps([plain.runtime, hot.temperature]))\n"
        "for p in sys.argv[3:]:\n"
        "    image = read_image(p)\n"
        "    print(json.dumps([plain.predict(image).tolist(), hot.predict(image).tolist()]))\n"
    )
    out = subprocess.run(
        [str(LEGACY), "-c", code, str(plain), str(hot), *photos],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert json.loads(out[0]) == ["tflite-runtime", 2.0]
    for line in out[1:]:
        raw, probs = (np.array(p, np.float32) for p in json.loads(line))
        assert probs.max() < raw.max() and probs.argmax() == raw.argmax()
        np.testing.assert_allclose(probs, calibrated(raw, 2.0), rtol=1e-5, atol=1e-7)
    assert len(out) == len(photos) + 1
    header = subprocess.run(
        [str(LEGACY), "-m", "edge", "classify", "--model", str(hot), photos[0]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "(tflite-runtime), calibrated (T=2)" in header
