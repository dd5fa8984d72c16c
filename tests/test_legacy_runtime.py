"""Old 32-bit Pi images: tflite-runtime 2.14 with numpy 1.x runs the bundle like LiteRT does.

`scripts/test` builds `.venv-legacy` with `smartbin[edge-legacy]` (tflite-runtime,
numpy<2) beside the main environment; this test drives the real CLI in both.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_CLASSES, needs_data, real_photos

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
