"""The training pipeline end to end on a tiny subset of real photos: plumbing, not accuracy."""

import json
import shutil
from pathlib import Path

import pytest

from edge.bundle import load_bundle
from edge.cli import main as smartbin
from host_training.cli import main as train
from host_training.data import Split, assign_splits, group_near_duplicates
from tests.conftest import TINY_CLASSES, WEIGHTS, make_photo_folder, needs_data, needs_weights

pytestmark = [needs_data, needs_weights]


def tiny(data, *rest: str) -> int:
    """smartbin-train with the tiny preset and the shared weights; ``rest`` is ``"--out", OUT, ...``."""
    return train(["--preset", "tiny", "--data", str(data), "--weights", str(WEIGHTS), *map(str, rest)])


def test_run_writes_a_verified_bundle_and_the_report(tiny_run):
    bundle = load_bundle(tiny_run / "bundle")
    meta = bundle.meta
    assert bundle.labels == sorted(TINY_CLASSES)
    assert meta["input"]["width"] == 96 and meta["input"]["dtype"] == "uint8"
    assert set(meta["input"]["quantization"]) == {"scale", "zero_point"}
    assert meta["taxonomy"]["items"]["battery"] == "hazardous"
    assert len(meta["data"]["fingerprint"]) == 64
    for key in ("tensorflow", "keras", "numpy", "smartbin", "python"):
        assert key in meta["tools"]
    for key in (
        "float_item_accuracy",
        "int8_item_accuracy",
        "float_bin_accuracy",
        "int8_bin_accuracy",
        "int8_float_agreement",
    ):
        assert 0 <= meta["metrics"][key] <= 1
    for name in (
        "report.json",
        "report.md",
        "curves.png",
        "confusion_items.png",
        "confusion_bins.png",
        "split.json",
        "history_head.csv",
        "history_finetune.csv",
    ):
        assert (tiny_run / name).stat().st_size > 0, name
    for name in ("MODEL_CARD.md", "report.json", "curves.png", "test_split.json"):
        assert (tiny_run / "bundle" / name).is_file()
    assert (tiny_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_numbers_are_the_bundle_numbers(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    meta = json.loads((tiny_run / "bundle" / "model.json").read_text())
    assert meta["metrics"]["int8_item_accuracy"] == pytest.approx(
        report["result"]["int8"]["item"]["accuracy"], abs=1e-5
    )
    card = (tiny_run / "bundle" / "MODEL_CARD.md").read_text()
    assert f"{100 * report['result']['int8']['item']['accuracy']:.2f}%" in card
    assert "hazardous` was learned from `battery` photos only" in card


def test_split_keeps_groups_together_and_is_written(tiny_run):
    split = Split.load(tiny_run / "split.json")
    by_group = {}
    for group, part in zip(split.groups, split.assignment):
        by_group.setdefault(group, set()).add(part)
    assert all(len(parts) == 1 for parts in by_group.values())
    assert {p for p in split.assignment} == {"train", "val", "test"}
    test_files = sorted(p.name for p in (tiny_run / "test_split").rglob("*.jpg"))
    assert len(test_files) == len(split.subset("test"))


def test_near_duplicates_are_grouped():
    a = 0x0F0F_0F0F_0F0F_0F0F
    hashes = [a, a ^ 0b111, a ^ 0xFFFF_0000_0000_0000, 0x1234_5678_9ABC_DEF0]
    groups = group_near_duplicates(hashes, max_distance=4)
    assert groups[0] == groups[1]
    assert len(set(groups)) == 3


def test_split_is_deterministic_and_stratified():
    labels = ["a"] * 100 + ["b"] * 20
    groups = list(range(120))
    keys = [str(i) for i in range(120)]
    first = assign_splits(labels, groups, keys, (0.7, 0.15, 0.15), seed=1)
    assert first == assign_splits(labels, groups, keys, (0.7, 0.15, 0.15), seed=1)
    assert first != assign_splits(labels, groups, keys, (0.7, 0.15, 0.15), seed=2)
    assert [first[:100].count(s) for s in ("train", "val", "test")] == [70, 15, 15]
    assert [first[100:].count(s) for s in ("train", "val", "test")] == [14, 3, 3]


def test_edge_eval_reproduces_the_reported_int8_accuracy(tiny_run, capsys):
    """Edge and training prepare photos identically: the bin scores what the trainer scored."""
    report = json.loads((tiny_run / "report.json").read_text())
    code = smartbin(
        ["eval", "--data", str(tiny_run / "test_split"), "--model", str(tiny_run / "bundle"), "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["item"]["accuracy"] == pytest.approx(
        report["result"]["int8"]["item"]["accuracy"], abs=0.002
    )
    assert result["bin"]["accuracy"] == pytest.approx(report["result"]["int8"]["bin"]["accuracy"], abs=0.002)


def test_a_stopped_run_resumes_from_its_checkpoints(tiny_run, tmp_path, caplog):
    out = tmp_path / "again"
    shutil.copytree(tiny_run, out, symlinks=True, ignore=shutil.ignore_patterns("bundle"))
    (out / "checkpoints" / "finetune.weights.h5").unlink()
    caplog.set_level("INFO")
    data = json.loads((out / "split.json").read_text())["sources"][0]
    assert tiny(data, "--out", out) == 0
    assert "reusing the split" in caplog.text
    assert "phase head already finished" in caplog.text
    assert "phase finetune already finished" not in caplog.text
    assert load_bundle(out / "bundle").labels == sorted(TINY_CLASSES)


def test_resuming_with_other_training_settings_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "changed"
    shutil.copytree(tiny_run, out, symlinks=True)
    data = json.loads((out / "split.json").read_text())["sources"][0]
    err = tiny_error(capsys, data, "--out", out, "--tail-blocks", "2")
    assert "tail_blocks 1 -> 2" in err and "another --out" in err


def test_parity_failure_fails_loudly_and_writes_no_bundle(tiny_data, tmp_path, capsys):
    out = tmp_path / "strict"
    code = tiny(
        tiny_data, "--out", out, "--min-agreement", "1.01", "--finetune-epochs", "0", "--head-epochs", "1"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "parity check" in err and "no bundle written" in err
    assert not (out / "bundle").exists()
    assert (out / "report.md").exists()


# Bad input: each names the problem


def test_corrupt_photo_is_skipped_and_named(tmp_path, caplog):
    data = make_photo_folder(tmp_path / "photos", per_class=8)
    (data / "battery" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    caplog.set_level("WARNING")
    out = tmp_path / "run"
    code = tiny(data, "--out", out, "--head-epochs", "1", "--finetune-epochs", "0")
    assert code == 0
    assert "broken.jpg" in caplog.text
    assert any(s.endswith("broken.jpg") for s in Split.load(out / "split.json").skipped)


def tiny_error(capsys, data, *rest) -> str:
    """Run the tiny preset expecting a clean failure (exit 2); the error text."""
    assert tiny(data, *rest) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "fix:" in err
    return err


def test_empty_class_folder_is_an_error(tmp_path, capsys):
    data = make_photo_folder(tmp_path / "photos", per_class=3)
    (data / "metal").mkdir()
    err = tiny_error(capsys, data, "--out", tmp_path / "r")
    assert "metal" in err and "has no images" in err


def test_label_unknown_to_the_taxonomy_is_an_error(tmp_path, capsys):
    data = make_photo_folder(tmp_path / "photos", per_class=3)
    (data / "battery").rename(data / "batteries")
    err = tiny_error(capsys, data, "--out", tmp_path / "r")
    assert "['batteries']" in err and "not in taxonomy" in err


def test_missing_weights_is_an_error(tmp_path, capsys):
    data = make_photo_folder(tmp_path / "photos", per_class=3)
    err = tiny_error(capsys, data, "--out", tmp_path / "r", "--weights", tmp_path / "nope.h5")
    assert "nope.h5 does not exist" in err


def test_wrong_shape_weights_is_an_error(tmp_path, capsys):
    import keras

    small = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None
    )
    small.save_weights(str(tmp_path / "wrong.weights.h5"))
    wrong = (tmp_path / "wrong.weights.h5").rename(tmp_path / "wrong.h5")
    data = make_photo_folder(tmp_path / "photos", per_class=6)
    err = tiny_error(capsys, data, "--out", tmp_path / "r", "--weights", wrong)
    assert "does not fit MobileNetV2" in err


def test_bad_settings_name_the_key(tmp_path, capsys):
    err = tiny_error(capsys, "x", "--mode", "turbo", "--out", tmp_path)
    assert "mode = 'turbo'" in err and "cached or full" in err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        train(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--tail-blocks" in out and "resumes" in out


def bare_tray_photos(folder: Path, n: int) -> None:
    """Stand-ins for photos of the empty tray: a lit grey surface with sensor noise."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        light = np.linspace(90 + 3 * i, 170, 200)[None, :, None]
        image = np.clip(light + rng.normal(0, 6, (200, 200, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"tray{i}.png"), image)


def test_full_mode_with_augmentation_and_an_empty_label(tmp_path, capsys):
    """The workstation path (tf.data, augmentation, all blocks) and the `empty` label, on the CPU."""
    data = make_photo_folder(tmp_path / "photos", per_class=10)
    bare_tray_photos(data / "empty", 10)
    out = tmp_path / "run"
    code = tiny(data, "--out", out, "--mode", "full", "--tail-blocks", "-1", "--float16")
    assert code == 0
    bundle = load_bundle(out / "bundle")
    assert "empty" in bundle.labels
    report = json.loads((out / "report.json").read_text())
    assert "empty" not in report["result"]["int8"]["bin"]["labels"]
    n_empty = report["split"]["counts"]["test"]["empty"]
    assert report["result"]["int8"]["bin"]["n"] == report["result"]["n"] - n_empty
    assert (out / "model_fp16.tflite").stat().st_size > 0
    capsys.readouterr()
    assert (
        smartbin(["eval", "--data", str(out / "test_split"), "--model", str(out / "bundle"), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["item"]["accuracy"] == pytest.approx(
        report["result"]["int8"]["item"]["accuracy"], abs=0.002
    )
