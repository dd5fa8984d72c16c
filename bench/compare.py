"""Two bundles on the same held-out photos, per data folder: is the new model better where it counts?

  .venv/bin/python bench/compare.py --model models/household38-mnv2 --model runs/new/bundle

Both are scored, int8 through the edge's own classifier, on the test photos that both bundles held
out (the intersection of their test_split.json: neither model saw any of them, nor a near-duplicate
of one), with one taxonomy for both (default: config/taxonomy/cn-4bin.yaml, its costs included), so
that only the models differ. Per data folder: item accuracy and balanced accuracy (where every photo's
label is one the model knows), four-bin accuracy, balanced accuracy and hazardous recall. Photos of a
never-tip label (not waste) have no bin and count only for the model that knows them, as held or not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import SHARED, parser, print_table, write_result

HAZARD = "hazardous"


def common_test_photos(bundles: list[Path]) -> list[dict]:
    """The photos in every bundle's test split, in the first bundle's order."""
    splits = [json.loads((b / "test_split.json").read_text()) for b in bundles]
    keys = set.intersection(*({(p["source"], p["path"]) for p in s} for s in splits))
    return [p for p in splits[0] if (p["source"], p["path"]) in keys]


def folder_scores(probs: np.ndarray, truth: list[str], labels: list[str], taxonomy) -> dict:
    from edge.model.evaluation import predicted_bins, score_predictions

    waste = [i for i, t in enumerate(truth) if taxonomy.bin_of(t) is not None]
    scored = score_predictions(probs[waste], [truth[i] for i in waste], labels, taxonomy) if waste else {}
    out: dict = {"n": len(truth), "waste": len(waste)}
    if "item" in scored:
        out["item_accuracy"] = scored["item"]["accuracy"]
        out["item_balanced"] = scored["item"]["balanced_accuracy"]
    if "bin" in scored:
        out["bin_accuracy"] = scored["bin"]["accuracy"]
        out["bin_balanced"] = scored["bin"]["balanced_accuracy"]
        hazardous = [i for i in waste if taxonomy.bin_of(truth[i]) == HAZARD]
        if hazardous:
            pred = predicted_bins(probs[hazardous], labels, taxonomy)
            out["hazardous_recall"] = float(np.mean([b == HAZARD for b in pred]))
            out["hazardous"] = len(hazardous)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", action="append", required=True, help="a bundle (give two, or more)")
    p.add_argument("--taxonomy", help="one taxonomy for all (default: config/taxonomy/cn-4bin.yaml)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    args = p.parse_args()
    from tqdm import tqdm

    from edge.images import read_image
    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier
    from edge.model.taxonomy import load_taxonomy
    from edge.paths import TAXONOMIES

    bundles = [Path(m) for m in args.model]
    taxonomy = load_taxonomy(args.taxonomy or TAXONOMIES / "cn-4bin.yaml")
    photos = common_test_photos(bundles)
    if args.quick:
        photos = photos[:: max(1, len(photos) // 48)][:48]
    truth = [ph["label"] for ph in photos]
    folders = [ph["source"] for ph in photos]
    frames = [
        read_image(SHARED / ph["source"] / ph["path"]) for ph in tqdm(photos, desc="reading", unit="photo")
    ]
    results: dict[str, dict] = {}
    for bundle in bundles:
        classifier = Classifier(load_bundle(bundle), threads=args.threads)
        labels = classifier.labels
        probs = np.stack([classifier.predict(f) for f in tqdm(frames, desc=bundle.name, unit="photo")])
        per_folder = {}
        for folder in dict.fromkeys(folders):
            mine = [i for i, f in enumerate(folders) if f == folder]
            own = [truth[i] for i in mine]
            per_folder[folder] = folder_scores(probs[mine], own, labels, taxonomy)
        results[str(bundle)] = per_folder
    print(f"\n{len(photos)} test photos held out by every bundle; taxonomy {taxonomy.name}\n")
    metrics = ["item_accuracy", "item_balanced", "bin_accuracy", "bin_balanced", "hazardous_recall"]
    rows = []
    for folder in dict.fromkeys(folders):
        for bundle, per_folder in results.items():
            m = per_folder[folder]
            rows.append(
                [f"{folder} ({m['n']})", Path(bundle).name]
                + [f"{100 * m[k]:.2f}" if k in m else "-" for k in metrics]
            )
    print_table(
        ["folder (photos)", "bundle", "item %", "item bal %", "bin %", "bin bal %", "haz recall %"], rows
    )
    write_result("compare", args.out, {"taxonomy": taxonomy.name, "photos": len(photos), "results": results})


if __name__ == "__main__":
    main()
