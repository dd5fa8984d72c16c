"""Training on a labelled review folder: labels from the sidecars, new items, weights, reused features."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.images import labelled_images, review_labels
from edge.model.bundle import load_bundle
from edge.model.taxonomy import load_taxonomy
from edge.service.cli import main as smartbin
from host_training.data import Split
from host_training.train import photo_weights
from tests.conftest import GARBAGE26CN, REPO, needs_data, needs_weights
from tests.test_training import bare_tray_photos, tiny, tiny_error

TAXONOMY = REPO / "config" / "taxonomy" / "cn-4bin.yaml"


def review_folder(folder: Path, photos: list[Path], label: str | None, label_bin: str | None = None) -> Path:
    """A review folder as the daemon writes it and the labelling page labels it (real photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, photo in enumerate(photos):
        name = f"20261125-0100{n:02d}.000001-item{n:03d}"
        shutil.copyfile(photo, folder / f"{name}.jpg")
        sidecar = {"id": name, "item": "paper", "bin": "recyclable", "probabilities": {"paper": 0.4}}
        sidecar |= {"kept": "uncertain", "label": label, "label_bin": label_bin}
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return folder


def cn_photos(label: str, n: int) -> list[Path]:
    return sorted((GARBAGE26CN / label).iterdir())[:n]


@pytest.fixture()
def field(tmp_path) -> Path:
    """14 labelled photos of a new item, 10 of the bare tray labelled "not an item", 3 not labelled yet,
    a JPEG without its JSON, a damaged JSON."""
    if not GARBAGE26CN.is_dir():
        pytest.skip(f"real photos absent: {GARBAGE26CN}")
    folder = review_folder(tmp_path / "bin-07-review", cn_photos("lighter", 14), "takeaway-cup", "recyclable")
    unlabelled = review_folder(tmp_path / "more", cn_photos("toothbrush", 3), None)
    for pair in unlabelled.iterdir():
        pair.rename(folder / f"z{pair.name}")
    bare_tray_photos(tmp_path / "tray", 10)
    empty = review_folder(tmp_path / "bare", sorted((tmp_path / "tray").iterdir()), "empty", None)
    for pair in empty.iterdir():
        pair.rename(folder / f"y{pair.name}")
    shutil.copyfile(cn_photos("toothbrush", 4)[3], folder / "zz-no-json.jpg")
    shutil.copyfile(cn_photos("toothbrush", 5)[4], folder / "zz-damaged.jpg")
    (folder / "zz-damaged.json").write_text('{"label": "pap')
    return folder


def test_a_review_folder_reads_as_labelled_photos(field, caplog):
    found = review_labels(field)
    assert len(found.pairs) == 24 and found.unlabelled == 3 and len(found.problems) == 2
    assert found.bins == {"takeaway-cup": "recyclable"}
    assert any("zz-no-json.jpg: no JSON" in p for p in found.problems)
    assert any("zz-damaged.json: unreadable" in p for p in found.problems)
    with caplog.at_level(logging.INFO):
        pairs = labelled_images(field)
    assert {label for _, label in pairs} == {"takeaway-cup", "empty"} and len(pairs) == 24
    assert "24 labelled photos, 3 not labelled yet (left out), 2 unreadable (left out)" in caplog.text


def test_a_review_folder_with_nothing_labelled_says_to_label_it(tmp_path):
    if not GARBAGE26CN.is_dir():
        pytest.skip(f"real photos absent: {GARBAGE26CN}")
    folder = review_folder(tmp_path / "review", cn_photos("lighter", 3), None)
    with pytest.raises(Exception, match="no labelled photo") as err:
        labelled_images(folder)
    assert f"smartbin review {folder}" in err.value.fix


@needs_data
@needs_weights
def test_a_new_item_labelled_on_the_page_is_trained_and_reaches_the_taxonomy(
    field, tiny_data, tiny_run, tmp_path, caplog
):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = tiny([tiny_data, field], "--out", out, "--base-run", tiny_run, "--field-weight", 3)
    assert code == 0
    bundle = load_bundle(out / "bundle")
    assert "takeaway-cup" in bundle.labels and bundle.taxonomy.bin_of("takeaway-cup") == "recyclable"
    assert "empty" in bundle.labels and bundle.taxonomy.bin_of("empty") is None  # "not an item"
    written = load_taxonomy(out / "bundle" / "taxonomy.yaml")
    assert written.items == {**load_taxonomy(TAXONOMY).items, "takeaway-cup": "recyclable"}
    assert written.costs == load_taxonomy(TAXONOMY).costs
    split = Split.load(out / "split.json")
    assert sum(split.counts()[s].get("takeaway-cup", 0) for s in ("train", "val", "test")) == 12  # limit 12
    weights = photo_weights(split, 3.0)
    assert {float(w) for p, w in zip(split.photos, weights) if p.source == 1} == {3.0}  # the bin's photos
    assert {float(w) for p, w in zip(split.photos, weights) if p.source == 0} == {1.0}
    # the tiny run cached every photo of tiny_data: only the review folder's photos go through the network
    shared = sum(1 for p in split.photos if p.source == 0)
    assert f"{shared} of {len(split.photos)} photos' features taken from earlier runs" in caplog.text
    card = (out / "bundle" / "MODEL_CARD.md").read_text()
    assert "labelled with `smartbin review`" in card
    # the labelled review folder also scores a bundle
    assert smartbin(["eval", "--model", str(out / "bundle"), "--data", str(field), "--json"]) == 0


@needs_data
@needs_weights
def test_reused_features_are_the_features_the_network_gives(tiny_run, tiny_data, tmp_path):
    """A photo's copied rows equal those computed afresh (its photo and mirror views are deterministic)."""
    fresh, reused = tmp_path / "fresh", tmp_path / "reused"
    assert tiny(tiny_data, "--out", fresh) == 0
    assert tiny(tiny_data, "--out", reused, "--base-run", tiny_run) == 0
    a = np.load(next((fresh / "cache").glob("*/activations.f32")), mmap_mode="r")
    b = np.load(next((reused / "cache").glob("*/activations.f32")), mmap_mode="r")
    views = json.loads(next((fresh / "cache").glob("*/photos.json")).read_text())["views"]
    first = np.concatenate([[0], np.cumsum(views)])[:-1]
    for row in first:
        np.testing.assert_allclose(a[row : row + 2], b[row : row + 2], atol=1e-4)


@needs_data
@needs_weights
def test_field_label_errors_are_refused_before_any_work(tiny_data, tmp_path, capsys):
    if not GARBAGE26CN.is_dir():
        pytest.skip(f"real photos absent: {GARBAGE26CN}")
    photos = cn_photos("paint-bucket", 3)
    wrong_bin = review_folder(tmp_path / "wrong-bin", photos, "takeaway-cup", "compost")
    error = tiny_error(capsys, [tiny_data, wrong_bin], "--out", tmp_path / "a")
    assert "new item 'takeaway-cup' is labelled for bin 'compost'" in error and "label it again" in error
    no_bin = review_folder(tmp_path / "no-bin", photos, "takeaway-cup", None)
    error = tiny_error(capsys, [tiny_data, no_bin], "--out", tmp_path / "b")
    assert "label folders ['takeaway-cup']" in error and "takeaway-cup: other" in error
    error = tiny_error(capsys, tiny_data, "--out", tmp_path / "c", "--base-run", tmp_path)
    assert "has no cached features" in error
    assert not (tmp_path / "a" / "split.json").exists()


@needs_data
@needs_weights
def test_a_model_that_lacks_a_new_item_is_scored_against_the_bin_it_was_labelled_for(field, tiny_run, capsys):
    """The tiny model never saw a take-away cup; its photos still count as recyclable, not as the
    taxonomy's default bin, in a plain eval and in a comparison."""
    assert smartbin(["eval", "--model", str(tiny_run / "bundle"), "--data", str(field), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["bin"]
    truth = dict(zip(scores["labels"], np.array(scores["confusion"]).sum(axis=1).tolist()))
    assert truth["recyclable"] == 14 and truth["other"] == 0  # the 10 bare-tray frames have no bin
    bundle = str(tiny_run / "bundle")
    assert smartbin(["eval", "--model", bundle, "--model", bundle, "--data", str(field), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 14


def test_a_label_with_a_newline_or_a_tail_is_not_a_label(tmp_path):
    """A sidecar edited by hand (or by a bin not trusted): "paper\\n" would train a label of its own."""
    folder = tmp_path / "review"
    folder.mkdir()
    for n, label in enumerate(["paper\n", "paper extra", "paper"]):
        (folder / f"p{n}.jpg").write_bytes(b"\xff\xd8")
        (folder / f"p{n}.json").write_text(json.dumps({"id": f"p{n}", "label": label, "label_bin": None}))
    found = review_labels(folder)
    assert [p.name for p, _ in found.pairs] == ["p2.jpg"] and len(found.problems) == 2
    assert all("is not a label" in p for p in found.problems)
