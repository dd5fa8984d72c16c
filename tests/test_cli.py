"""`smartbin classify`, `eval` and `config` on real photos with the shipped bundle."""

import json
import subprocess
import sys

import pytest
import yaml

from edge.service.cli import main
from tests.conftest import (
    GARBAGE12,
    REPO,
    SHIPPED,
    make_photo_folder,
    needs_data,
    real_photos,
    shipped_bundle_with,
)


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "classify" in out and "Exit status" in out


def test_config_prints_a_loadable_reference(capsys):
    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["threshold"] == 0.65


@needs_data
def test_classify_prints_item_bin_confidence(capsys):
    photos = real_photos("battery", 2) + real_photos("shoes", 2)
    assert main(["classify", *map(str, photos)]) == 0
    out = capsys.readouterr().out
    assert "hazardous" in out and "recyclable" in out
    assert out.count("battery") >= 2


@needs_data
def test_classify_json_and_corrupt_photo_is_skipped_by_name(tmp_path, capsys, caplog):
    bad = tmp_path / "half.jpg"
    bad.write_bytes(real_photos("metal", 1)[0].read_bytes()[:50])
    photos = [str(p) for p in real_photos("biological", 2)] + [str(bad)]
    assert main(["classify", "--json", "--top-k", "2", *photos]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["bin"] == "kitchen" and row["item"] == "biological"
        assert len(row["top"]) == 2 and row["top"][0] == [row["item"], row["item_confidence"]]
        assert row["top"][0][1] >= row["top"][1][1]
        assert row["confidence"] == row["bins"]["kitchen"] == max(row["bins"].values())
        assert set(row["bins"]) == {"recyclable", "kitchen", "hazardous", "other"}
    assert "half.jpg" in caplog.text


@needs_data
def test_threshold_sends_unsure_items_to_the_fallback_bin(tmp_path, capsys):
    """The threshold alone: a bundle without the unknown-item rule (which marks items uncertain too)."""
    photos = [str(real_photos(p.name, 1)[0]) for p in sorted(GARBAGE12.iterdir())]
    bundle = str(shipped_bundle_with(tmp_path, drop=("ood",)))
    assert main(["classify", "--model", bundle, "--json", "--threshold", "0.99", *photos]) == 0
    strict = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(r["uncertain"] for r in strict)
    for r in strict:
        if abs(r["confidence"] - 0.99) > 1e-4:  # the JSON rounds to 4 places
            assert r["uncertain"] == (r["confidence"] < 0.99)
        if r["uncertain"]:
            assert r["bin"] == "other"
    assert main(["classify", "--model", bundle, "--json", "--threshold", "0", *photos]) == 0
    lax = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not any(r["uncertain"] for r in lax)


@needs_data
def test_eval_on_item_folders_and_on_bin_folders(tmp_path, capsys):
    items = make_photo_folder(tmp_path / "items", per_class=4, classes=("battery", "cardboard", "trash"))
    assert main(["eval", "--data", str(items), "--json", "--plots", str(tmp_path / "plots")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["item"]["n"] == 12
    confusion = result["item"]["confusion"]
    recalls = [row[i] / sum(row) for i, row in enumerate(confusion) if sum(row)]
    assert len(recalls) == 3 and result["item"]["balanced_accuracy"] == pytest.approx(sum(recalls) / 3)
    assert result["bin"]["per_class"]["hazardous"]["support"] == 4
    assert (tmp_path / "plots" / "confusion_items.png").read_bytes()[:4] == b"\x89PNG"

    bins = tmp_path / "bins"
    (bins / "hazardous").mkdir(parents=True)
    (bins / "kitchen").mkdir()
    for p in real_photos("battery", 3):
        (bins / "hazardous" / p.name).symlink_to(p)
    for p in real_photos("biological", 3):
        (bins / "kitchen" / p.name).symlink_to(p)
    assert main(["eval", "--data", str(bins)]) == 0
    out = capsys.readouterr().out
    assert "bin level" in out and "item level" not in out


def test_eval_with_unknown_folders_names_them(tmp_path, capsys):
    (tmp_path / "spaceships").mkdir()
    (tmp_path / "spaceships" / "x.jpg").write_bytes(b"x")
    assert main(["eval", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "['spaceships']" in err and "--unknown-ok" in err


NOT_WASTE = GARBAGE12.parent / "not-waste"


UNKNOWN = {"keys": "hand", "wallet": "phone"}  # folders no label of the model names, and their photos


def not_waste_folder(root, per_label=5, waste=("battery",)):
    """Folders named after things the model has no label for (photos of hands and phones filed as keys
    and a wallet) beside a few photos of waste."""
    make_photo_folder(root, per_class=4, classes=waste)
    for label, photos in UNKNOWN.items():
        (root / label).mkdir()
        for photo in real_photos(photos, per_label, NOT_WASTE):
            (root / label / photo.name).symlink_to(photo)
    return root


@needs_data
def test_eval_scores_things_the_model_never_saw_as_held_or_tipped(tmp_path, capsys):
    data = not_waste_folder(tmp_path / "data")
    assert main(["eval", "--data", str(data)]) == 2
    assert "['keys', 'wallet']" in capsys.readouterr().err
    for bundle in (SHIPPED, shipped_bundle_with(tmp_path, drop=("ood",))):
        assert main(["eval", "--model", str(bundle), "--data", str(data), "--unknown-ok", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["item"]["n"] == result["bin"]["n"] == 4  # accuracy on the battery photos alone
        assert set(result["held"]) == {"battery", "keys", "wallet"}
        photos = [str(p) for label in UNKNOWN for p in sorted((data / label).iterdir())]
        assert main(["classify", "--model", str(bundle), "--json", *photos]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        for i, label in enumerate(UNKNOWN):
            r = result["not_waste"][label]
            held = sum(row["held"] is not None for row in rows[5 * i : 5 * i + 5]) / 5
            assert r["kind"] == "unknown" and r["n"] == 5
            assert r["held"] == result["held"][label] == pytest.approx(held)  # the bin's own decisions
            assert r["held"] + r["tipped"] == pytest.approx(1)
            assert r["tipped"] == pytest.approx(sum(r["tipped_to"].values()))
            if bundle != SHIPPED:
                assert r["held_by_ood"] == 0  # no ood block: only a never-tip label holds
    assert main(["eval", "--data", str(data), "--unknown-ok"]) == 0
    out = capsys.readouterr().out
    assert "not waste (unknown, no accuracy): keys, 5 photos: held" in out and "item level" in out


@needs_data
def test_eval_scores_a_never_tip_folder_by_what_is_held(tmp_path, capsys):
    """A taxonomy that never tips lighters (a label the shipped model has): the lighter folder is scored as
    held or tipped; its items are still scored (a model label), it has no bin to score."""
    data = load_taxonomy_dict()
    del data["items"]["lighter"]
    data["never_tip"] = {**data["never_tip"], "lighter": {"reason": "a lighter: take it back"}}
    tax = tmp_path / "tax.yaml"
    tax.write_text(yaml.safe_dump(data))
    folder = make_photo_folder(
        tmp_path / "data", per_class=6, classes=("lighter",), source=GARBAGE12.parent / "garbage26cn"
    )
    bundle = shipped_bundle_with(tmp_path, drop=("ood",))  # held by the never-tip rule alone
    assert (
        main(["eval", "--model", str(bundle), "--taxonomy", str(tax), "--data", str(folder), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    r = result["not_waste"]["lighter"]
    assert r["kind"] == "never_tip" and r["n"] == 6 and r["held_by_ood"] == 0
    assert r["held"] == r["held_by_never_tip"] == result["held"]["lighter"] > 0.5
    assert r["held"] + r["tipped"] + r["seen_as_empty"] == pytest.approx(1)
    assert result["item"]["n"] == 6 and result["bin"]["n"] == 0  # a model label: its item is scored


def load_taxonomy_dict() -> dict:
    from edge.model.taxonomy import load_taxonomy

    return load_taxonomy(REPO / "config" / "taxonomy" / "cn-4bin.yaml").to_dict()


def test_errors_are_one_clear_message(tmp_path, capsys):
    assert main(["classify", "--model", str(tmp_path), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "model.json is missing" in err and "fix:" in err and "Traceback" not in err
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {threshold: 7}\n")
    assert main(["classify", "--config", str(bad), "x.jpg"]) == 2
    assert "model.threshold = 7" in capsys.readouterr().err
    assert main(["classify", "--model", str(SHIPPED), "--threshold", "3", "x.jpg"]) == 2


@needs_data
def test_no_interpreter_installed_says_what_to_install():
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in ("ai_edge_litert", "tflite_runtime", "tensorflow"))
    photo = str(real_photos("paper", 1)[0])
    code = f"import sys; {hide}; from edge.service.cli import main; sys.exit(main(['classify', {photo!r}]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "no TFLite interpreter is installed" in out.stderr and "tflite-runtime" in out.stderr


@needs_data
def test_eval_compares_two_bundles_on_the_same_photos(tmp_path, capsys, tiny_bundle):
    """Each side of the comparison is what `eval` alone says of that bundle on those photos."""
    items = make_photo_folder(tmp_path / "items", per_class=4, classes=("battery", "biological", "clothes"))
    alone = []
    for bundle in (SHIPPED, tiny_bundle):
        assert main(["eval", "--model", str(bundle), "--data", str(items), "--json"]) == 0
        alone.append(json.loads(capsys.readouterr().out)["bin"]["accuracy"])
    args = ["eval", "--model", str(SHIPPED), "--model", str(tiny_bundle), "--data", str(items)]
    assert main([*args, "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["n"] == 12 and both["bin_accuracy"] == pytest.approx(alone)
    assert both["models"] == [SHIPPED.name, tiny_bundle.name]
    right = [round(a * 12) for a in alone]
    assert right[0] - right[1] == len(both["only_first"]) - len(both["only_second"])
    assert all(str(items) in p for p in both["only_first"] + both["only_second"])
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"verdict: {both['verdict']}"
    assert main(["eval", "--model", str(SHIPPED), "--model", str(SHIPPED), "--data", str(items)]) == 0
    assert "verdict: the same" in capsys.readouterr().out
    assert main([*args, "--model", str(SHIPPED)]) == 2
    assert "--model is given 3 times" in capsys.readouterr().err
