"""The default bundle in models/: verified, honest, and reproducible on its own test split."""

import json
import re

import pytest

from edge.model.bundle import load_bundle
from edge.service.cli import main
from tests.conftest import GARBAGE12, SHIPPED, needs_data


def test_shipped_bundle_verifies():
    bundle = load_bundle(SHIPPED)
    assert len(bundle.labels) == 38
    assert bundle.meta["metrics"]["split"] == "test"
    assert bundle.meta["data"]["sources"] == ["garbage12", "garbage26cn", "trashnet-trash", "not-waste"]
    assert bundle.taxonomy.costs is not None  # the bundle carries the decision it was scored with
    assert bundle.taxonomy.never_tip_labels == {"hand", "phone", "earbuds", "glasses"}
    assert bundle.taxonomy.never_tip["hand"].override is False  # no press ever tips a hand
    assert bundle.ood is not None and 0 < bundle.meta["calibration"]["temperature"] < 1


def test_card_and_metrics_come_from_the_run_report():
    meta = json.loads((SHIPPED / "model.json").read_text())
    report = json.loads((SHIPPED / "report.json").read_text())
    result = report["result"]
    for kind in ("float", "int8"):
        for level in ("item", "bin"):
            assert meta["metrics"][f"{kind}_{level}_accuracy"] == pytest.approx(
                result[kind][level]["accuracy"], abs=1e-5
            )
    assert meta["metrics"]["int8_float_agreement"] == pytest.approx(result["parity"]["agreement"], abs=1e-5)
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    reported = re.search(r"\| item accuracy \| ([\d.]+)% \| ([\d.]+)% \|", card)
    assert float(reported.group(2)) == pytest.approx(100 * result["int8"]["item"]["accuracy"], abs=0.005)
    assert meta["data"]["fingerprint"] == report["meta"]["data"]["fingerprint"]


@needs_data
@pytest.mark.slow
def test_edge_reproduces_the_reported_int8_accuracy_on_the_test_split(tmp_path, capsys):
    """The proof that the bin prepares photos as the trainer did: same photos, same score (±0.2 points)."""
    split = json.loads((SHIPPED / "test_split.json").read_text())
    for i, photo in enumerate(split):
        src = GARBAGE12.parent / photo["source"] / photo["path"]
        link = tmp_path / photo["label"] / f"{i}-{src.name}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(src)
    assert main(["eval", "--data", str(tmp_path), "--json", "--model", str(SHIPPED)]) == 0
    result = json.loads(capsys.readouterr().out)
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert result["item"]["n"] == meta["metrics"]["n"] == len(split)
    assert abs(result["item"]["accuracy"] - meta["metrics"]["int8_item_accuracy"]) <= 0.002
    assert abs(result["bin"]["accuracy"] - meta["metrics"]["int8_bin_accuracy"]) <= 0.002


def test_readme_headline_numbers_are_the_shipped_report():
    """The README quotes the model card; a retrained model must update both."""
    result = json.loads((SHIPPED / "report.json").read_text())["result"]
    readme = (SHIPPED.parent.parent / "README.md").read_text()
    for row, level in (("item accuracy", "item"), ("four-bin accuracy", "bin")):
        found = re.search(rf"\| {row} \| ([\d.]+)% \| ([\d.]+)% \|", readme)
        assert found, f"README has no '{row}' row"
        assert float(found.group(1)) == pytest.approx(100 * result["float"][level]["accuracy"], abs=0.005)
        assert float(found.group(2)) == pytest.approx(100 * result["int8"][level]["accuracy"], abs=0.005)
    assert f"{result['n']:,} photos" in readme
