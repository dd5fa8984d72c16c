"""Each benchmark runs on a handful of frames and writes valid JSON. Nothing here looks at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.broker import mosquitto_path
from tests.conftest import GARBAGE12, REPO, WEIGHTS

needs_data = pytest.mark.skipif(not GARBAGE12.is_dir(), reason=f"real photos absent: {GARBAGE12}")
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"ImageNet weights absent: {WEIGHTS}")


def bench(name: str, out) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["quick"] is True
    assert {"date", "cpu", "cores", "command"} <= set(data["machine"])
    return data


@needs_weights
def test_inference(tmp_path):
    data = bench("inference", tmp_path)
    runtimes = {r["runtime"] for r in data["results"]}
    assert {"keras predict (float)", "keras call (float)", "litert float32"} <= runtimes
    assert any(r.endswith("int8") for r in runtimes)
    reference = [r for r in data["results"] if r["runtime"] == "ai-edge-litert int8"]
    assert reference and all(r["ratio_to_litert_int8"] == 1.0 for r in reference)


@needs_data
@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it")
def test_pipeline(tmp_path):
    data = bench("pipeline", tmp_path)
    assert set(data["stages"]) >= {
        "capture",
        "trigger",
        "preprocess",
        "invoke",
        "decide",
        "move",
        "ledger",
        "mqtt publish to PUBACK",
    }
    assert data["items"] == 4 and data["vote_frames"] == 3


def test_footprint(tmp_path):
    data = bench("footprint", tmp_path)
    assert data["tensorflow_imported"] is False
    assert data["items_sorted"] > 0 and data["rss_ready_mib"] > 0
    assert data["cold_start_to_ready"]["n"] == 1


@needs_data
def test_accuracy(tmp_path):
    data = bench("accuracy", tmp_path)
    assert data["photos"] == 24 and len(data["sweep"]) == len(data["sweep_val"]) == 14
    assert (tmp_path / "threshold.png").stat().st_size > 0
    assert (tmp_path / "costs.png").read_bytes()[:4] == b"\x89PNG"
    sweep = data["cost_sweep"]
    assert [r["factor"] for r in sweep["val"]] == [r["factor"] for r in sweep["test"]]
    assert data["hazard_factor_chosen_on_val"] in [r["factor"] for r in sweep["val"]]
    assert data["hazard_factor_shipped"] > 1  # the shipped taxonomy makes hazardous misses costlier


@needs_data
@needs_weights
def test_training(tmp_path):
    data = bench("training", tmp_path)
    assert [p["phase"].split(" (")[0] for p in data["phases"]] == [
        "feature cache",
        "fine-tune epoch",
        "head epoch",
    ]
