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


@needs_data
@needs_weights
def test_leave_one_collection_out_never_trains_on_the_folder_it_scores(tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "loco.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--runs",
            str(runs),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "loco.json").read_text())
    present = [
        name for name in ("garbage12", "garbage26cn", "trashnet-trash") if (GARBAGE12.parent / name).is_dir()
    ]
    assert [r["left_out"] for r in data["rows"]] == present
    for row in data["rows"]:
        assert row["photos"] > 0 and 0 <= row["bin_accuracy"] <= 1
        split = json.loads((runs / "tiny" / f"without-{row['left_out']}" / "split.json").read_text())
        trained_on = {s.rstrip("/").rsplit("/", 1)[-1] for s in split["sources"]}
        assert row["left_out"] not in trained_on and trained_on


@needs_data
@needs_weights
def test_finetune_depth(tmp_path):
    data = bench("finetune_depth", tmp_path)
    depths = [d["tail_blocks"] for d in data["depths"]]
    assert depths == sorted(depths) and len(depths) >= 2
    weights = [d["trainable_weights"] for d in data["depths"]]
    assert weights == sorted(weights)  # a deeper cut trains more of the network
    for d in data["depths"]:
        assert d["cache_gb"] > 0 and d["projected"]["total_s"] > d["projected"]["cache_s"] > 0
