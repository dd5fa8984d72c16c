"""The training pipeline end to end on a tiny subset of real photos: plumbing, not accuracy."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import SmartbinError
from edge.model.bundle import load_bundle
from edge.service.cli import main as smartbin
from host_training.cli import main as train
from host_training.data import Photo, Split, assign_splits, group_near_duplicates
from tests.conftest import REPO, TINY_LABELS, WEIGHTS, make_photo_folder, needs_data, needs_weights

pytestmark = [needs_data, needs_weights]


def tiny(data, *rest: str) -> int:
    """smartbin-train with the tiny preset and the shared weights; ``rest`` is ``"--out", OUT, ...``.

    ``data``: one folder or a list of them.
    """
    folders = data if isinstance(data, list) else [data]
    sources = [arg for folder in folders for arg in ("--data", str(folder))]
    return train(["--preset", "tiny", *sources, "--weights", str(WEIGHTS), *map(str, rest)])


def run_sources(run: Path) -> list[str]:
    return json.loads((run / "split.json").read_text())["sources"]


def test_run_writes_a_verified_bundle_and_the_report(tiny_run):
    bundle = load_bundle(tiny_run / "bundle")
    meta = bundle.meta
    assert bundle.labels == TINY_LABELS  # battery from two folders is one label
    assert meta["input"]["width"] == 96 and meta["input"]["dtype"] == "uint8"
    assert set(meta["input"]["quantization"]) == {"scale", "zero_point"}
    assert meta["taxonomy"]["items"]["battery"] == "hazardous"
    assert len(meta["data"]["fingerprint"]) == 64
    for key in ("tensorflow", "keras", "numpy", "smartbin", "python"):
        assert key in meta["tools"]
    # the metrics in model.json are the run's own confusion matrices, not numbers made up on the way
    result = json.loads((tiny_run / "report.json").read_text())["result"]
    for kind in ("float", "int8"):
        for level in ("item", "bin"):
            confusion = np.array(result[kind][level]["confusion"])
            assert confusion.sum() == meta["metrics"]["n"] == result["n"]
            accuracy = np.trace(confusion) / confusion.sum()
            assert meta["metrics"][f"{kind}_{level}_accuracy"] == pytest.approx(accuracy, abs=1e-5)
    assert meta["metrics"]["int8_float_agreement"] == pytest.approx(result["parity"]["agreement"], abs=1e-5)
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
    for name in ("MODEL_CARD.md", "report.json", "curves.png", "test_split.json", "val_split.json"):
        assert (tiny_run / "bundle" / name).is_file()
    assert (tiny_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_run_fits_the_temperature_on_val_and_reports_calibration(tiny_run):
    """T is fitted on the int8 val probabilities, shipped in model.json and applied to both test scores."""
    from edge.model.calibration import calibrated, calibration_scores

    bundle = load_bundle(tiny_run / "bundle")
    block = bundle.meta["calibration"]
    t = block["temperature"]
    assert bundle.calibrated and bundle.temperature == t and 0.05 <= t <= 20
    assert block["fitted_on"] == "val" and block["photos"] == len(
        Split.load(tiny_run / "split.json").subset("val")
    )
    for level in ("item", "bin"):
        assert set(block["val_ece"][level]) == {"before", "after"}
    assert block["val_nll"]["after"] <= block["val_nll"]["before"] + 1e-4  # T = 1 was in the search
    cal = json.loads((tiny_run / "report.json").read_text())["result"]["calibration"]
    assert cal["temperature"] == t and cal["val"]["int8"]["after"]["item"]["ece"] == pytest.approx(
        block["val_ece"]["item"]["after"], abs=1e-5
    )
    # the test figures are the shipped model's: int8 through the calibrated classifier, float at the same T
    saved = np.load(tiny_run / "test_predictions.npz")
    np.testing.assert_array_equal(saved["int8"], calibrated(saved["int8_uncalibrated"], t))
    np.testing.assert_array_equal(saved["float"], calibrated(saved["float_uncalibrated"], t))
    test = Split.load(tiny_run / "split.json").subset("test")
    for kind in ("float", "int8"):
        again = calibration_scores(saved[kind], [p.label for p in test], bundle.labels, bundle.taxonomy)
        for level in ("item", "bin"):
            assert cal["test"][kind]["after"][level]["ece"] == pytest.approx(again[level]["ece"], abs=1e-9)
            assert sum(r["n"] for r in cal["test"][kind]["after"][level]["reliability"]) == len(test)
    card = (tiny_run / "bundle" / "MODEL_CARD.md").read_text()
    assert (
        "## Calibration" in card
        and f"T = {t:.4g}" in card
        and "![reliability diagram](reliability.png)" in card
    )
    ece = cal["test"]["int8"]
    row = " | ".join(f"{100 * ece[w][lv]['ece']:.2f}%" for lv in ("item", "bin") for w in ("before", "after"))
    assert f"| test | int8 | {len(test)} | {row} |" in card
    assert (tiny_run / "bundle" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_run_fits_the_ood_threshold_on_val_and_reports_what_it_holds(tiny_run):
    """The ood block: fitted on the calibrated int8 val outputs, at most 2% of each folder's waste held."""
    from edge.model import ood
    from host_training.ood_fit import held_summary

    bundle = load_bundle(tiny_run / "bundle")
    block = bundle.meta["ood"]
    assert bundle.ood == ood.OodRule(block["score"], block["threshold"]) and block["fitted_on"] == "val"
    assert block["max_held"] == 0.02 and block["not_waste_photos"] == 0  # the tiny data has no hands
    assert "no never-tip (not-waste) photos in val" in block["chosen_by"]
    assert set(block["val_held"]) == {Path(s).name for s in run_sources(tiny_run)}
    assert all(share <= 0.02 for share in block["val_held"].values())
    result = json.loads((tiny_run / "report.json").read_text())["result"]
    o = result["ood"]
    assert o["score"] == block["score"] and set(o["candidates"]) == set(ood.SCORES)
    assert {f: r["held_by_ood"] for f, r in o["val"]["folders"].items()} == block["val_held"]
    # the test shares are the bin's decisions on the saved int8 test outputs
    test = Split.load(tiny_run / "split.json").subset("test")
    saved = np.load(tiny_run / "test_predictions.npz")["int8"]
    sources = [run_sources(tiny_run)[p.source] for p in test]
    again = held_summary(
        saved,
        [p.label for p in test],
        [Path(s).name for s in sources],
        bundle.labels,
        bundle.taxonomy,
        bundle.ood,
    )
    assert o["test"] == again == result["held"]
    assert bundle.meta["metrics"]["int8_waste_held"] == again["waste"]["held"]
    card = (tiny_run / "bundle" / "MODEL_CARD.md").read_text()
    assert "## Unknown items (out of distribution)" in card and "![ood trade-off](ood_tradeoff.png)" in card
    assert f"Score `{block['score']}`" in card and "The four-bin figures are **without holding**" in card
    assert "waste held (not tipped)" in card
    assert (tiny_run / "bundle" / "ood_tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_the_ood_score_is_chosen_by_the_never_tip_photos_it_holds():
    """Hand-made val outputs: two folders of waste and some hands; each score's threshold holds at most
    2% of each folder's waste, the score chosen holds the most hands, and 0 turns the block off."""
    from edge.model import ood
    from edge.model.taxonomy import parse_taxonomy
    from host_training.ood_fit import fit_ood
    from host_training.settings import TrainSettings
    from host_training.train import fit_unknown

    labels = ["paper", "battery", "hand"]
    tax = parse_taxonomy(
        {
            "name": "t",
            "default_bin": "other",
            "bins": {"recyclable": {}, "hazardous": {}, "other": {}},
            "items": {"paper": "recyclable", "battery": "hazardous"},
            "never_tip": {"hand": {}},
        }
    )
    rng = np.random.default_rng(0)

    def rows(n, top, spread):  # top label sure, the rest spread over the others
        p = rng.dirichlet(np.ones(3) * spread, n) * 0.3
        p[:, top] += 0.7
        return p / p.sum(1, keepdims=True)

    # hands the model mostly takes for paper or battery at middling confidence: spread rows
    hands = rng.dirichlet([3, 3, 1], 40)
    unsure = rng.dirichlet([2, 2, 0.2], 10)  # paper the model is unsure of, some taken for battery
    parts = [rows(140, 0, 0.5), unsure, rows(50, 1, 0.5), rows(40, 0, 0.5), rows(20, 1, 0.5), hands]
    probs = np.concatenate(parts).astype(np.float32)  # as the bin reads them
    truth = ["paper"] * 150 + ["battery"] * 50 + ["paper"] * 40 + ["battery"] * 20 + ["hand"] * 40
    folders = ["a"] * 200 + ["b"] * 60 + ["c"] * 40
    block, account = fit_ood(probs, truth, folders, labels, tax)
    assert block["not_waste_photos"] == 40 and block["photos"] == 260 and set(block["val_held"]) == {"a", "b"}
    for name, c in account["candidates"].items():
        values = ood.score(name, probs)
        assert ood.held_share(values[:200], c["threshold"]) <= 0.02
        assert ood.held_share(values[200:260], c["threshold"]) <= 0.02
    best = max(c["not_waste_held"] for c in account["candidates"].values())
    assert account["candidates"][block["score"]]["not_waste_held"] == best > 0
    assert (
        f"holds the most of the 40 never-tip (not-waste) val photos at its threshold: {best}"
        in (block["chosen_by"])
    )
    assert (
        sum(
            r["held_by_never_tip"] + r["held_by_ood"] + r["tipped"]
            for r in account["val"]["not_waste"].values()
        )
        == 40
    )
    # without hands, the score that best separates right from wrong waste photos
    block, account = fit_ood(probs[:260], truth[:260], folders[:260], labels, tax)
    aurocs = {n: c["auroc_right_vs_wrong"] for n, c in account["candidates"].items()}
    assert (
        block["score"] == max(aurocs, key=lambda n: aurocs[n] or 0) and "no never-tip" in block["chosen_by"]
    )
    assert fit_unknown(probs, None, labels, tax, TrainSettings(ood_max_held=0)) is None


def test_the_run_shows_what_the_augmentation_does(tiny_run):
    assert (tiny_run / "augmented_views.png").read_bytes()[:4] == b"\x89PNG"


def test_report_numbers_are_the_bundle_numbers(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    meta = json.loads((tiny_run / "bundle" / "model.json").read_text())
    assert meta["metrics"]["int8_item_accuracy"] == pytest.approx(
        report["result"]["int8"]["item"]["accuracy"], abs=1e-5
    )
    card = (tiny_run / "bundle" / "MODEL_CARD.md").read_text()
    assert f"{100 * report['result']['int8']['item']['accuracy']:.2f}%" in card
    assert "kitchen` was learned from `biological` photos only" in card


def test_each_folder_is_split_and_reported_on_its_own(tiny_run):
    """Merged labels stay one label, yet every folder keeps its share of the test split and its own scores."""
    split = Split.load(tiny_run / "split.json")
    test = split.subset("test")
    assert {(split.source_name(p), p.label) for p in test} == {
        ("garbage12", "battery"),
        ("garbage12", "biological"),
        ("garbage12", "clothes"),
        ("garbage26cn", "battery"),
        ("garbage26cn", "paint-bucket"),
        ("trashnet-trash", "trash"),
    }
    result = json.loads((tiny_run / "report.json").read_text())["result"]
    folders = result["folders"]
    assert list(folders) == ["garbage12", "garbage26cn", "trashnet-trash"]
    assert sum(f["n"] for f in folders.values()) == result["n"] == len(test)
    for name, f in folders.items():
        mine = [p for p in test if split.source_name(p) == name]
        assert f["int8"]["item"]["n"] == f["int8"]["bin"]["n"] == len(mine)
        bins = f["int8"]["bin"]
        support = {b: c["support"] for b, c in bins["per_class"].items() if c["support"]}
        expected = {}
        for p in mine:
            expected[meta_bin(tiny_run, p.label)] = expected.get(meta_bin(tiny_run, p.label), 0) + 1
        assert support == expected
    card = (tiny_run / "bundle" / "MODEL_CARD.md").read_text()
    assert "## Per data folder" in card and "Four-bin confusion, trashnet-trash" in card
    assert "| garbage26cn | 24 | 2 | A public Chinese garbage-classification collection" in card
    assert "TrashNet (Stanford" in card and "ODbL" in card
    hazard = folders["garbage26cn"]["int8"]["bin"]["confusion"][2]
    assert f"{100 * hazard[2] / sum(hazard):.2f}% of {sum(hazard)}" in card


def meta_bin(run: Path, label: str) -> str:
    return json.loads((run / "bundle" / "model.json").read_text())["taxonomy"]["items"][label]


def test_small_folders_get_more_views_and_more_showings(tiny_run):
    """garbage26cn's ~50 photos a label are cached as augmented copies and shown that many times more."""
    from host_training.settings import load_settings
    from host_training.train import epoch_repeats, photo_views

    photos = [Photo(0, f"a/{i}.jpg", "a", str(i), i) for i in range(10)]
    photos += [Photo(1, f"a/{i}.jpg", "a", f"b{i}", i) for i in range(3)]
    split = Split(["/x/big", "/x/small"], photos, ["train"] * 13, list(range(13)), 0, (0.7, 0.15, 0.15), 4)
    settings = load_settings(None, {"small_label_photos": 5, "views": 2, "small_label_views": 6})
    views = photo_views(split, settings)
    assert views.tolist() == [2] * 10 + [6] * 3  # the same label, small only in the second folder
    assert epoch_repeats(views, 2).tolist() == [1] * 10 + [3] * 3
    # the tiny run cached every photo with small_label_views (4) copies: each folder's labels are small there
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["timing"]["feature_cache_photos"] == 4 * report["split"]["photos"]


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
    assert tiny(run_sources(tiny_run), "--out", out) == 0
    assert "reusing the split" in caplog.text
    assert "phase head already finished" in caplog.text
    assert "phase finetune already finished" not in caplog.text
    assert load_bundle(out / "bundle").labels == TINY_LABELS
    # the report still counts what the skipped stages cost the first time
    before = json.loads((tiny_run / "report.json").read_text())["timing"]
    after = json.loads((out / "report.json").read_text())["timing"]
    for stage in ("split_s", "feature_cache_s", "head_s"):
        assert after[stage] == before[stage]
    assert after["total_s"] >= before["total_s"] - before["finetune_s"]


def test_resuming_with_other_training_settings_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "changed"
    shutil.copytree(tiny_run, out, symlinks=True)
    err = tiny_error(capsys, run_sources(tiny_run), "--out", out, "--tail-blocks", "2")
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
    data = make_photo_folder(tmp_path / "photos", per_class=10)
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


def test_small_and_empty_label_folders_are_named_and_skipped(tmp_path, caplog):
    data = make_photo_folder(tmp_path / "photos", per_class=10)
    make_photo_folder(data, per_class=9, classes=("metal",))
    (data / "paper").mkdir()
    caplog.set_level("WARNING")
    out = tmp_path / "run"
    assert tiny(data, "--out", out, "--head-epochs", "1", "--finetune-epochs", "0") == 0
    for label, n in (("metal", 9), ("paper", 0)):
        assert f"skipping label folder {data / label}: {n} photos, fewer than 10" in caplog.text
    split = Split.load(out / "split.json")
    assert split.labels == ["battery", "biological", "clothes"]
    assert split.skipped_labels == [f"{data / 'metal'} (9 photos)", f"{data / 'paper'} (0 photos)"]


def test_label_unknown_to_the_taxonomy_is_refused_before_any_work(tmp_path, capsys):
    data = make_photo_folder(tmp_path / "photos", per_class=3)
    (data / "battery").rename(data / "batteries")
    err = tiny_error(capsys, data, "--out", tmp_path / "r")
    assert "['batteries']" in err and "not in taxonomy" in err and "cn-4bin.yaml" in err
    assert "add each under 'items:'" in err and "batteries: other" in err
    assert not (tmp_path / "r" / "split.json").exists()


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
    data = make_photo_folder(tmp_path / "photos", per_class=10)
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


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"head_epochs: [1\n", "is not valid YAML"), (b"\xff\xfe\x00", "is not UTF-8 text (byte 0)")],
)
def test_a_preset_file_that_is_not_yaml_is_named_with_a_fix(tmp_path, content, problem):
    """A broken preset is a SmartbinError naming the file, like the device config (it was a traceback)."""
    from host_training.settings import load_settings

    preset = tmp_path / "broken.yaml"
    preset.write_bytes(content)
    with pytest.raises(SmartbinError) as err:
        load_settings(str(preset), {})
    assert f"training preset {preset} {problem}" in str(err.value) and err.value.fix


def test_a_run_resumes_when_its_taxonomy_is_the_same_file_under_another_path():
    """Runs started when the taxonomy lived at config/taxonomy/ resume now that config/ is a link."""
    from edge.paths import TAXONOMIES
    from host_training.train import same_setting

    old, new = str(REPO / "config/taxonomy/cn-4bin.yaml"), str(TAXONOMIES / "cn-4bin.yaml")
    assert old != new and same_setting("taxonomy", old, new)
    assert not same_setting("taxonomy", old, str(REPO / "pyproject.toml"))
    assert not same_setting("batch_size", 64, 32) and same_setting("batch_size", 64, 64)


# A resumed run checks that its data folders still hold the photos its split was made from


def copied_photos(root: Path, per_class: int = 10) -> Path:
    """A label folder of real photos copied (not linked into ../shared): the tests change them."""
    from tests.conftest import TINY_CLASSES, real_photos

    for label in TINY_CLASSES:
        (root / label).mkdir(parents=True)
        for photo in real_photos(label, per_class):
            shutil.copy(photo, root / label / photo.name)
    return root


def add_photo(data: Path) -> None:
    from tests.conftest import real_photos

    shutil.copy(real_photos("battery", 11)[10], data / "battery" / "new.jpg")


def replace_photo(data: Path) -> None:
    """Another photo under the same name."""
    from tests.conftest import real_photos

    target = sorted((data / "battery").iterdir())[0]
    target.write_bytes(real_photos("clothes", 11)[10].read_bytes())


def edit_photo(data: Path) -> None:
    """The same name and size, other bytes, a later time (a photo edited in place)."""
    import os

    target = sorted((data / "battery").iterdir())[0]
    content = bytearray(target.read_bytes())
    content[len(content) // 2] ^= 0xFF
    target.write_bytes(bytes(content))
    later = target.stat().st_mtime_ns + 10**10
    os.utime(target, ns=(later, later))


def remove_photo(data: Path) -> None:
    sorted((data / "clothes").iterdir())[0].unlink()


def split_once(data: Path, out: Path, preset="tiny"):
    from host_training.settings import load_settings
    from host_training.train import prepare_split

    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings(preset, {"data": [str(data)], "out": str(out)})
    return settings, prepare_split(settings, out)


@pytest.mark.parametrize(
    ("change", "counts", "example"),
    [
        (add_photo, "1 added, 0 removed, 0 changed", "added: photos/battery/new.jpg"),
        (replace_photo, "0 added, 0 removed, 1 changed", "changed: photos/battery/"),
        (edit_photo, "0 added, 0 removed, 1 changed", "changed: photos/battery/"),
        (remove_photo, "0 added, 1 removed, 0 changed", "removed: photos/clothes/"),
    ],
)
def test_a_resumed_run_refuses_photos_changed_since_its_split(tmp_path, capsys, change, counts, example):
    data, out = copied_photos(tmp_path / "photos"), tmp_path / "run"
    split_once(data, out)
    change(data)
    err = tiny_error(capsys, data, "--out", out)
    assert f"changed since run folder {out} split them: {counts} (e.g. {example}" in err
    assert "another --out" in err and "delete split.json" in err


def test_a_resumed_run_with_the_same_photos_reuses_its_split(tmp_path, caplog):
    """Unchanged photos resume; a photo only touched (copied with a new time) is hashed and still the same."""
    import os

    data, out = copied_photos(tmp_path / "photos"), tmp_path / "run"
    settings, first = split_once(data, out)
    touched = sorted((data / "battery").iterdir())[0]
    later = touched.stat().st_mtime_ns + 10**10
    os.utime(touched, ns=(later, later))
    caplog.set_level("INFO")
    from host_training.train import prepare_split

    assert prepare_split(settings, out).fingerprint() == first.fingerprint()
    assert "reusing the split" in caplog.text
    listing = json.loads((out / "split_files.json").read_text())
    assert [0, f"battery/{touched.name}", "battery", touched.stat().st_size, later] in listing["files"]


def test_a_split_written_before_the_file_listing_is_checked_against_its_hashes(tmp_path):
    """A run folder from before split_files.json: its photos are hashed once, then listed."""
    from host_training.train import prepare_split

    data, out = copied_photos(tmp_path / "photos"), tmp_path / "run"
    settings, _ = split_once(data, out, preset=None)
    (out / "split_files.json").unlink()
    prepare_split(settings, out)
    assert (out / "split_files.json").is_file()
    (out / "split_files.json").unlink()
    edit_photo(data)
    add_photo(data)
    with pytest.raises(
        SmartbinError, match=r"1 added, 0 removed, 1 changed \(e\.g\. added: photos/battery/new"
    ):
        prepare_split(settings, out)


def test_a_deeper_cut_trains_and_resumes(tiny_sources, tmp_path, caplog):
    """Six blocks fine-tuned on the cached activations at block 10, then the same --out again resumes."""
    out = tmp_path / "deep"
    args = ("--out", out, "--tail-blocks", "6", "--head-epochs", "1", "--finetune-epochs", "1")
    caplog.set_level("INFO")
    assert tiny(tiny_sources, *args) == 0
    (cache,) = (out / "cache").glob("*/activations.f32")
    assert np.load(cache, mmap_mode="r").shape[1:] == (6, 6, 96)  # block_10_project_BN at 96 px
    assert "phase finetune: training" in caplog.text
    assert "already finished" not in caplog.text
    caplog.clear()
    assert tiny(tiny_sources, *args) == 0
    assert "reusing the split" in caplog.text
    assert "phase head already finished" in caplog.text and "phase finetune already finished" in caplog.text
    assert load_bundle(out / "bundle").labels == TINY_LABELS


def test_pooled_features_stream_the_cache_in_any_row_order(tmp_path):
    """The head phase's pooled features of a memory-mapped cache: the rows asked for, in their order."""
    import keras

    from host_training.features import pooled_features
    from host_training.model import build_classifier, cut_layer_name

    model = build_classifier(3, WEIGHTS, 96)
    cut = cut_layer_name(model, 4)
    shape = (40, *model.get_layer(cut).output.shape[1:])
    acts = np.lib.format.open_memmap(tmp_path / "acts.npy", mode="w+", dtype=np.float32, shape=shape)
    acts[:] = np.random.default_rng(0).normal(size=shape)
    rows = np.array([39, 3, 20, 3, 0])  # out of order, one twice
    to_pool = keras.Model(model.get_layer(cut).output, model.get_layer("pool").output)
    want = to_pool.predict(np.asarray(acts[rows]), verbose=0)
    np.testing.assert_allclose(pooled_features(model, cut, acts, rows, batch_size=2), want, atol=1e-5)
    assert pooled_features(model, cut, acts).shape == (40, 1280)
    np.testing.assert_array_equal(pooled_features(model, "pool", want, [4, 0]), want[[4, 0]])
