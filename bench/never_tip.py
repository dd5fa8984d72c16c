"""Choosing ``hold_above`` for the never-tip labels on the validation split, and what the bin then holds
on the test split.

A never-tip item (a hand, a phone) is held on the tray when it is the most probable item. Its rule's
``hold_above: p`` also holds it whenever its probability reaches p though a waste item wins: a hand at
40% beside paper at 45%. The lower p, the more hands are caught, and the more waste waits on the tray
for nothing. For each never-tip name this sweeps p on the validation split and chooses the lowest p at
which the waste it holds (beyond the photos it wins) stays within MAX_WASTE_HELD of the waste photos of
every data folder; only the rules with a ``hold_above`` in the taxonomy are fitted (the others hold
their item only when it is the most probable). The bin decision itself (edge.model.decision.decide),
with the chosen values and the bundle's unknown-item rule, then runs on every test photo, per folder:
never-tip photos held, and waste photos held (by a never-tip rule, or as unknown).

  .venv/bin/python bench/never_tip.py --model runs/x/bundle --cache /tmp/smartbin-int8.npz

``--cache`` is the same file as bench/accuracy.py's: the int8 outputs are computed once for both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from accuracy import int8_outputs
from common import BUNDLE, SHARED, parser, print_table, write_result

HOLD_ABOVE = [round(p, 2) for p in np.arange(0.05, 0.96, 0.05)]
MAX_WASTE_HELD = 0.01  # of a folder's waste photos, held by one never-tip rule's hold_above


def rule_probability(probs: np.ndarray, labels: list[str], taxonomy, name: str) -> np.ndarray:
    """The summed probability of a never-tip name's labels, per photo."""
    index = [labels.index(label) for label in taxonomy.labels_of(name) if label in labels]
    return probs[:, index].sum(axis=1)


def choose_hold_above(
    probs: np.ndarray, truth: list[str], folders: list[str], labels: list[str], taxonomy, name: str
) -> dict:
    """The lowest p of HOLD_ABOVE whose waste held stays within MAX_WASTE_HELD in every folder."""
    p_name = rule_probability(probs, labels, taxonomy, name)
    waste = np.array([t not in taxonomy.never_tip_labels for t in truth])
    mine = np.array([t in taxonomy.labels_of(name) for t in truth])
    folder_of = np.array(folders)
    curve = []
    for p in HOLD_ABOVE:
        held = p_name >= p
        worst = max(
            (
                held[waste & (folder_of == f)].mean()
                for f in sorted(set(folders))
                if (waste & (folder_of == f)).any()
            ),
            default=0.0,
        )
        caught = float(held[mine].mean()) if mine.any() else None
        curve.append({"hold_above": p, "worst_folder_waste_held": float(worst), "caught_alone": caught})
    fitting = [c for c in curve if c["worst_folder_waste_held"] <= MAX_WASTE_HELD]
    chosen = fitting[0] if fitting else curve[-1]
    return {"name": name, "chosen": chosen["hold_above"], "met": bool(fitting), "curve": curve}


def with_hold_above(taxonomy, chosen: dict[str, float]):
    rules = {
        name: dataclasses.replace(rule, hold_above=chosen.get(name, rule.hold_above))
        for name, rule in taxonomy.never_tip.items()
    }
    return dataclasses.replace(taxonomy, never_tip=rules)


def held_by_folder(probs, truth, folders, labels, taxonomy, ood) -> dict[str, dict]:
    """decide() on each photo: per folder, never-tip photos held, and waste photos held and why."""
    from edge.model.decision import decide

    rows: dict[str, dict] = {}
    for p, label, folder in zip(probs, truth, folders):
        decision = decide(p, labels, taxonomy, ood=ood)
        row = rows.setdefault(
            folder,
            {
                "never_tip": 0,
                "never_tip_held": 0,
                "waste": 0,
                "waste_held_never_tip": 0,
                "waste_held_unknown": 0,
            },
        )
        by_rule = decision.held is not None and taxonomy.never_tip_rule(decision.item) is not None
        if label in taxonomy.never_tip_labels:
            row["never_tip"] += 1
            row["never_tip_held"] += decision.held is not None
        else:
            row["waste"] += 1
            row["waste_held_never_tip"] += by_rule
            row["waste_held_unknown"] += decision.held is not None and not by_rule
    return rows


def sources_of(photos: list[dict]) -> dict[str, str]:
    """``source/path`` -> the original collection a photo came from, where its folder's manifest.tsv
    says (not-waste): several hands share one background, so a rule must hold on each source."""
    found: dict[str, str] = {}
    for folder in {p["source"] for p in photos}:
        manifest = SHARED / folder / "manifest.tsv"
        if manifest.is_file():
            for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
                label, name, source = line.split("\t")[:3]
                found[f"{folder}/{label}/{name}"] = source
    return found


def held_by_source(probs, photos, labels, taxonomy, ood) -> dict[str, dict]:
    """Never-tip test photos held, per label and original source."""
    from edge.model.decision import decide

    source = sources_of(photos)
    rows: dict[str, dict] = {}
    for p, photo in zip(probs, photos):
        if photo["label"] not in taxonomy.never_tip_labels:
            continue
        key = f"{photo['label']} / {source.get(photo['source'] + '/' + photo['path'], '?')}"
        row = rows.setdefault(key, {"n": 0, "held": 0})
        row["n"] += 1
        row["held"] += decide(p, labels, taxonomy, ood=ood).held is not None
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument("--model", default=str(BUNDLE), help=f"the bundle to score (default {BUNDLE.name})")
    p.add_argument("--taxonomy", help="the taxonomy whose never_tip rules to fit (default: the bundle's own)")
    p.add_argument(
        "--cache", metavar="FILE", help="int8 outputs kept in FILE (.npz), shared with bench/accuracy.py"
    )
    args = p.parse_args()

    from edge.model.bundle import load_bundle
    from edge.model.classifier import Classifier
    from edge.model.taxonomy import load_taxonomy

    bundle = Path(args.model)
    splits = {name: json.loads((bundle / f"{name}_split.json").read_text()) for name in ("test", "val")}
    if args.quick:
        splits = {k: v[:: max(1, len(v) // 24)][:24] for k, v in splits.items()}
    classifier = Classifier(load_bundle(bundle), threads=args.threads)
    labels = classifier.labels
    taxonomy = load_taxonomy(args.taxonomy) if args.taxonomy else classifier.bundle.taxonomy
    if not any(rule.hold_above is not None for rule in taxonomy.never_tip.values()):
        raise SystemExit(
            f"{args.taxonomy or bundle}: no never_tip rule of the taxonomy has a hold_above to fit"
        )

    probs = int8_outputs(classifier, bundle, splits, args.cache)
    val = splits["val"]
    fits = [  # only the rules that ask for it: the others hold their item when it is the most probable
        choose_hold_above(
            probs["val"], [s["label"] for s in val], [s["source"] for s in val], labels, taxonomy, name
        )
        for name, rule in taxonomy.never_tip.items()
        if rule.hold_above is not None
    ]
    print(
        f"hold_above chosen on the validation split ({len(val)} photos): the lowest p at which a rule holds "
        f"at most {MAX_WASTE_HELD:.0%} of any folder's waste photos\n"
    )
    print_table(
        ["never-tip", "hold_above", "worst folder: waste held %", "its photos over p %", "met"],
        [
            [
                f["name"],
                f"{f['chosen']:.2f}",
                100 * c["worst_folder_waste_held"],
                "-" if c["caught_alone"] is None else f"{100 * c['caught_alone']:.1f}",
                "yes" if f["met"] else "no",
            ]
            for f in fits
            for c in [next(c for c in f["curve"] if c["hold_above"] == f["chosen"])]
        ],
    )
    fitted = with_hold_above(taxonomy, {f["name"]: f["chosen"] for f in fits})
    test = splits["test"]
    rows = held_by_folder(
        probs["test"],
        [s["label"] for s in test],
        [s["source"] for s in test],
        labels,
        fitted,
        classifier.bundle.ood,
    )
    print(f"\nthe bin decision with these values on the test split ({len(test)} photos), per folder:\n")
    print_table(
        ["folder", "never-tip photos", "held %", "waste photos", "held: never-tip rule %", "held: unknown %"],
        [
            [
                folder,
                r["never_tip"],
                "-" if not r["never_tip"] else f"{100 * r['never_tip_held'] / r['never_tip']:.1f}",
                r["waste"],
                "-" if not r["waste"] else f"{100 * r['waste_held_never_tip'] / r['waste']:.2f}",
                "-" if not r["waste"] else f"{100 * r['waste_held_unknown'] / r['waste']:.2f}",
            ]
            for folder, r in sorted(rows.items())
        ],
    )
    by_source = held_by_source(probs["test"], test, labels, fitted, classifier.bundle.ood)
    print("\nnever-tip test photos held, per label and original source (see the folder's PROVENANCE.md):\n")
    print_table(
        ["label / source", "photos", "held %"],
        [[k, r["n"], f"{100 * r['held'] / r['n']:.1f}"] for k, r in sorted(by_source.items())],
    )
    write_result(
        "never-tip",
        args.out,
        {
            "model": bundle.name,
            "max_waste_held": MAX_WASTE_HELD,
            "val": fits,
            "test": rows,
            "by_source": by_source,
        },
    )


if __name__ == "__main__":
    main()
