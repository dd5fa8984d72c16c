"""The run's report: JSON for machines, Markdown (the model card) for people, PNGs to look at.

Every number here comes from the run's own results; nothing is typed in by hand.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge.images import is_review_folder
from edge.model.evaluation import misrouted, plot_confusion
from host_training.data import SPLITS, Split
from host_training.settings import TrainSettings

PICTURES = ("curves.png", "confusion_items.png", "confusion_bins.png", "reliability.png", "ood_tradeoff.png")


def bundle_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The compact metrics block that travels in model.json."""
    out: dict[str, Any] = {"split": result["split"], "n": result["n"]}
    for kind in ("float", "int8"):
        for level in ("item", "bin"):
            r = result[kind][level]
            out[f"{kind}_{level}_accuracy"] = round(r["accuracy"], 5)
            out[f"{kind}_{level}_balanced_accuracy"] = round(r["balanced_accuracy"], 5)
    out["int8_float_agreement"] = round(result["parity"]["agreement"], 5)
    hazard = misrouted(result["int8"]["bin"], CRITICAL_BIN)
    if hazard:
        out["int8_hazardous_recall"] = round(hazard["recall"], 5)
    if "held" in result:  # beside the four-bin figures, which are without holding
        out["int8_waste_held"] = result["held"]["waste"]["held"]
    return out


CRITICAL_BIN = "hazardous"  # the bin whose misses the report counts one by one


def folder_lines(res: dict[str, Any], bins: list[str]) -> list[str]:
    """Per data folder: item and bin scores, hazardous recall and misroutes, the four-bin confusion."""
    lines = [
        "## Per data folder (int8, test split)",
        "",
        "Each folder's own test photos, so that a big folder's accuracy cannot hide a small one's.",
        "",
        "| folder | test photos | item accuracy | item balanced | four-bin accuracy | four-bin balanced "
        "| hazardous recall | hazardous → recyclable or kitchen | waste held (not tipped) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    held = res.get("held", {}).get("folders", {})
    for folder, r in res["folders"].items():
        q = r["int8"]
        item = q.get("item", {})
        hazard = misrouted(q["bin"], CRITICAL_BIN)
        if hazard.get("n"):
            wrong = sum(hazard["sent_to"].get(b, 0) for b in ("recyclable", "kitchen"))
            recall = f"{pct(hazard['recall'])} of {hazard['n']}"
            sent = f"{wrong} ({pct(wrong / hazard['n'])})"
        else:
            recall = sent = "-"
        lines.append(
            f"| {folder} | {r['n']} | {pct(item.get('accuracy', 0))} "
            f"| {pct(item.get('balanced_accuracy', 0))} | {pct(q['bin']['accuracy'])} "
            f"| {pct(q['bin']['balanced_accuracy'])} | {recall} | {sent} "
            f"| {pct(held[folder]['held']) if folder in held else '-'} |"
        )
    for folder, r in res["folders"].items():
        q = r["int8"]["bin"]
        lines += [
            "",
            f"Four-bin confusion, {folder} (rows: true bin, columns: chosen bin):",
            "",
            "| true \\ chosen | " + " | ".join(bins) + " | recall |",
            "|---|" + "---:|" * (len(bins) + 1),
        ]
        for name, row in zip(q["labels"], q["confusion"]):
            if sum(row):
                lines.append(
                    f"| {name} | "
                    + " | ".join(str(v) for v in row)
                    + f" | {pct(q['per_class'][name]['recall'])} |"
                )
    return lines


def read_history(out: Path) -> dict[str, list[dict[str, float]]]:
    history = {}
    for phase in ("head", "finetune"):
        path = out / f"history_{phase}.csv"
        if path.exists():
            with open(path, newline="") as fh:
                history[phase] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    return history


def plot_curves(history: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, rows in history.items():
        epochs = np.arange(offset + 1, offset + len(rows) + 1)
        for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
            ax.plot(epochs, [r[key] for r in rows], label=f"train ({phase})")
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], "--", label=f"val ({phase})")
        if offset:
            for ax in (ax_loss, ax_acc):
                ax.axvline(offset + 0.5, color="grey", lw=0.8)
        offset += len(rows)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves (grey line: fine-tuning starts)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def calibration_lines(cal: dict[str, Any]) -> list[str]:
    """The temperature and the expected calibration error before and after it, on val and test."""
    rows = [("val (fitted here)", "int8", cal["val"]["int8"]), ("test", "int8", cal["test"]["int8"])]
    rows.append(("test", "float", cal["test"]["float"]))
    lines = [
        "## Calibration",
        "",
        f"The probabilities are temperature-scaled: softmax(log p / T) with T = {cal['temperature']:.4g}, "
        f"fitted on the int8 model's probabilities for the {cal['photos']} validation photos (least "
        "negative log-likelihood). The bin applies it to every output (model.json `calibration`); "
        "the top item never changes, the confidence the threshold and the costs read does. "
        "T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.",
        "",
        f"Expected calibration error ({cal['ece_bins']} equal confidence bins; lower is better). Item: the "
        "top item's probability against whether it is right; bin: the most probable bin's probability "
        "(its items' probabilities summed) against whether it is the right bin.",
        "",
        "| split | model | photos | item ECE before | item ECE after | bin ECE before | bin ECE after |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for split, kind, r in rows:
        n = sum(b["n"] for b in r["before"]["item"]["reliability"])
        ece = [pct(r[when][level]["ece"]) for level in ("item", "bin") for when in ("before", "after")]
        lines.append(f"| {split} | {kind} | {n} | " + " | ".join(ece) + " |")
    return [*lines, "", "![reliability diagram](reliability.png)", ""]


def plot_reliability(cal: dict[str, Any], path: Path) -> None:
    """Accuracy against confidence per bin of confidence, int8 on test, before and after the temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    test = cal["test"]["int8"]
    for ax, level in zip(axes, ("item", "bin")):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="perfectly calibrated")
        for when, style in (("before", "o--"), ("after", "s-")):
            rows = test[when][level]["reliability"]
            label = f"{when} (ECE {pct(test[when][level]['ece'])})"
            if when == "after":
                label = f"after, T = {cal['temperature']:.3g} (ECE {pct(test[when][level]['ece'])})"
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=label)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"mean {'top item' if level == 'item' else 'most probable bin'} probability")
        ax.set_ylabel("share right")
        ax.set_title(f"{level} level")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    n = sum(r["n"] for r in test["before"]["item"]["reliability"])
    fig.suptitle(f"reliability, int8 on the test split (n={n})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def held_lines(res: dict[str, Any]) -> list[str]:
    """What the bin holds of the int8 test photos, beside the four-bin figures (scored without holding)."""
    held = res.get("held")
    if not held:
        return []
    rule = held["ood"]
    how = (
        f"a never-tip label, or the ood rule ({rule['score']} below {rule['threshold']:.4g})"
        if rule
        else "a never-tip label (the bundle has no ood rule)"
    )
    return [
        "",
        f"The four-bin figures are **without holding**: every waste photo is scored by the bin chosen for "
        f"it. The bin would hold {pct(held['waste']['held'])} of the {held['waste']['n']} waste test "
        f"photos on the tray instead ({how}); the per-folder table gives each folder's share.",
    ]


def ood_lines(res: dict[str, Any]) -> list[str]:
    """The ood block: how its score was chosen, what it holds of the waste per folder (val and test) and
    of the never-tip photos, and the trade-off curve."""
    o = res.get("ood")
    if not o:
        return []
    lines = [
        "## Unknown items (out of distribution)",
        "",
        f"Score `{o['score']}`, threshold {o['threshold']:.6g} (model.json `ood`): an item whose score is "
        f"below it is held as unknown. Fitted on the {o['photos']} waste photos of the validation split "
        f"so that at most {pct(o['max_held'])} of every data folder's waste is held (per folder, not "
        f"pooled). Chosen: {o['chosen_by']}.",
        "",
        "| score | threshold | never-tip val photos held | AUROC waste vs not-waste | AUROC right vs wrong |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in o["candidates"].items():

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        lines.append(
            f"| {name}{' (chosen)' if name == o['score'] else ''} | {c['threshold']:.6g} "
            f"| {c['not_waste_held']} of {o['not_waste_photos']} | {fmt(c['auroc_waste_vs_not_waste'])} "
            f"| {fmt(c['auroc_right_vs_wrong'])} |"
        )
    lines += [
        "",
        "Share of each folder's waste held (by the ood score alone; all: with never-tip labels too):",
        "",
        "| folder | val photos | val held | test photos | test held (ood) | test held (all) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    val, test = o["val"]["folders"], o.get("test", {}).get("folders", {})
    for folder in dict.fromkeys([*val, *test]):
        v, t = val.get(folder), test.get(folder)
        lines.append(
            f"| {folder} | {v['n'] if v else '-'} | {pct(v['held_by_ood']) if v else '-'} "
            f"| {t['n'] if t else '-'} | {pct(t['held_by_ood']) if t else '-'} "
            f"| {pct(t['held']) if t else '-'} |"
        )
    rows = [
        (split, label, r)
        for split in ("val", "test")
        for label, r in o.get(split, {}).get("not_waste", {}).items()
    ]
    if rows:
        lines += [
            "",
            "Never-tip (not-waste) photos: held by their never-tip label, held by the ood score, tipped:",
            "",
            "| split | label | photos | held (never-tip label) | held (ood score) | tipped |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for split, label, r in rows:
            lines.append(
                f"| {split} | {label} | {r['n']} | {r['held_by_never_tip']} | {r['held_by_ood']} "
                f"| {r['tipped']} |"
            )
    else:
        lines += [
            "",
            "The data has no never-tip (not-waste) photos: what the rule holds of them is unmeasured.",
        ]
    return [
        *lines,
        "",
        "![ood trade-off](ood_tradeoff.png)",
        "",
        "A statistical filter, not a safety device: a model can be sure of something it never saw.",
        "",
    ]


def plot_tradeoff(o: dict[str, Any], path: Path) -> None:
    """Per threshold of the chosen score: the share of waste held against the share of not-waste tipped
    (val and test), and the share of waste held against the threshold; the fitted threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_trade, ax_held) = plt.subplots(1, 2, figsize=(10, 4.6))
    for split, style in (("val", "o-"), ("test", "s--")):
        curve = o["tradeoff"].get(split)
        if not curve:
            continue
        held = [r["waste_held"] for r in curve]
        ax_held.plot([r["threshold"] for r in curve], held, style, ms=2, label=split)
        if o.get(split, {}).get("not_waste") or (split == "val" and o["not_waste_photos"]):
            ax_trade.plot(held, [r["not_waste_tipped"] for r in curve], style, ms=2, label=split)
    if not ax_trade.lines:
        ax_trade.text(0.5, 0.5, "no never-tip (not-waste) photos", ha="center", va="center")
    ax_held.axvline(o["threshold"], color="grey", lw=0.8, label=f"threshold {o['threshold']:.4g}")
    ax_held.axhline(o["max_held"], color="red", lw=0.8, ls=":", label=f"{pct(o['max_held'])} per folder")
    ax_trade.set_xlabel("share of waste held")
    ax_trade.set_ylabel("share of not-waste tipped")
    ax_trade.set_xlim(-0.02, 1.02)
    ax_trade.set_ylim(-0.02, 1.02)
    ax_held.set_xlabel(f"threshold on {o['score']}")
    ax_held.set_ylabel("share of waste held (all folders)")
    for ax in (ax_trade, ax_held):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"unknown items: {o['score']}, int8, calibrated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def known_limits(labels: list[str], taxonomy: dict[str, Any], counts: dict[str, dict[str, int]]) -> list[str]:
    """Limits that follow from the data itself: which labels taught each bin."""
    lines = []
    by_bin: dict[str, list[str]] = {b: [] for b in taxonomy["bins"]}
    for label in labels:
        bin_id = taxonomy["items"].get(label)
        if bin_id:
            by_bin[bin_id].append(label)
    for bin_id, taught in by_bin.items():
        if not taught:
            lines.append(
                f"`{bin_id}` was learned from no label at all: the model never chooses it "
                "except as the fallback for uncertain items."
            )
        elif len(taught) == 1:
            lines.append(
                f"`{bin_id}` was learned from `{taught[0]}` photos only: other "
                f"{bin_id} items will be recognised as something else."
            )
    total = {lab: sum(counts[s].get(lab, 0) for s in SPLITS) for lab in labels}
    big = max(total, key=total.get)
    share = total[big] / max(1, sum(total.values()))
    if share > 2 / len(labels):
        lines.append(
            f"`{big}` is {share:.0%} of the photos; overall accuracy leans on it, "
            "so read the balanced accuracy and per-class recall too."
        )
    lines.append(
        "The photos are single objects on plain or web backgrounds, not a bin's tray "
        "camera: expect lower accuracy on a device until it is retrained with photos "
        "from its own camera (the uncertain photos it saves are for that)."
    )
    return lines


# Where the public collections smartbin's default model learns from come from. A folder of your
# own can say it in a PROVENANCE.md (its first paragraph goes into the model card).
KNOWN_PROVENANCE = {
    "garbage12": 'Kaggle "Garbage Classification" (12 classes), web photos, as mirrored in a public '
    "GitHub repository at 255x255; licensed by its publisher under the ODbL.",
    "garbage26cn": "A public Chinese garbage-classification collection (26 classes of the four-bin "
    "standard, ~90 web photos each), as found in a public GitHub repository; no licence stated there, "
    "used here to train and evaluate.",
    "trashnet-trash": "Half of the `trash` class of TrashNet (Stanford, Gary Thung and Mindy Yang, "
    "2016; MIT licence): single items on a plain board, shot from above with a phone.",
}


def provenance(folder: Path) -> str:
    """The folder's own PROVENANCE.md (first paragraph), else what is known of a public collection."""
    note = folder / "PROVENANCE.md"
    if note.is_file():
        return note.read_text(encoding="utf-8").strip().split("\n\n")[0].replace("\n", " ")
    if is_review_folder(folder):
        return "frames a bin kept for review, labelled with `smartbin review`"
    return KNOWN_PROVENANCE.get(folder.name, "not recorded (add a PROVENANCE.md to the folder)")


def source_lines(meta: dict[str, Any], split: dict[str, Any]) -> list[str]:
    folders = split.get("folders", {})
    if not folders:
        return []
    known = meta["data"].get("provenance", {})
    lines = ["| data folder | photos | labels | provenance |", "|---|---:|---:|---|"]
    for name, f in folders.items():
        lines.append(f"| {name} | {f['photos']} | {f['labels']} | {known.get(name, '-')} |")
    return [*lines, ""]


def markdown(rep: dict[str, Any]) -> str:
    meta, res, split = rep["meta"], rep["result"], rep["split"]
    labels = meta["labels"]
    lines = [
        f"# Model card: {meta['model_id']}",
        "",
        f"{meta['architecture']}. Input: {meta['input']['width']}x{meta['input']['height']} "
        f"{meta['input']['color_order']} uint8, full-integer (int8) TFLite. Written by "
        f"`smartbin-train` on {meta['created']} from the run's own report (`report.json`).",
        "",
        "## Results on the held-out test split",
        "",
        f"{res['n']} test photos, none of them a near-duplicate of a training photo "
        f"(perceptual hash within {split['phash_distance']} bits keeps a group in one split).",
        "",
        "| | float (Keras) | int8 (LiteRT, shipped) |",
        "|---|---:|---:|",
    ]
    for level, name in (("item", "item"), ("bin", "four-bin")):
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
            lines.append(
                f"| {name} {label} | {pct(res['float'][level][key])} | {pct(res['int8'][level][key])} |"
            )
    if "bin_most_probable" in res["int8"]:
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
            lines.append(
                f"| four-bin {label}, most probable bin (no costs) "
                f"| {pct(res['float']['bin_most_probable'][key])} "
                f"| {pct(res['int8']['bin_most_probable'][key])} |"
            )
    p = res["parity"]
    lines += [
        "",
        "The four-bin rows are the bin's own decision: the least expected cost under the "
        "taxonomy's misrouting costs (the most probable bin when it has none), with no threshold.",
        *held_lines(res),
        "",
        f"int8 vs float: top-1 agreement {pct(p['agreement'])}, item accuracy drop "
        f"{p['drop_points']:.2f} points. Interpreter: {res['runtime']}.",
        "",
        "### Per item (int8)",
        "",
        "| item | bin | precision | recall | test photos |",
        "|---|---|---:|---:|---:|",
    ]
    for label in labels:
        pc = res["int8"]["item"]["per_class"][label]
        bin_id = meta["taxonomy"]["items"].get(label, "-")
        lines.append(
            f"| {label} | {bin_id} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pc['support']} |"
        )
    lines += [
        "",
        "### Per bin (int8)",
        "",
        "| bin | precision | recall | test photos |",
        "|---|---:|---:|---:|",
    ]
    for bin_id, pc in res["int8"]["bin"]["per_class"].items():
        lines.append(f"| {bin_id} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pc['support']} |")
    lines += [
        "",
        "![item confusion](confusion_items.png)",
        "![bin confusion](confusion_bins.png)",
        "",
        *(folder_lines(res, list(meta["taxonomy"]["bins"])) if "folders" in res else []),
        "",
        *(calibration_lines(res["calibration"]) if "calibration" in res else []),
        *ood_lines(res),
        "## Known limits",
        "",
        *[f"- {line}" for line in known_limits(labels, meta["taxonomy"], split["counts"])],
        "",
        "## Data",
        "",
        f"Sources: {', '.join(meta['data']['sources'])}. Fingerprint `{meta['data']['fingerprint'][:16]}…`. "
        f"{split['photos']} photos in {split['groups']} near-duplicate groups; "
        f"{split['skipped']} unreadable photos skipped. Split seed {split['seed']}, shares "
        f"{'/'.join(str(f) for f in split['fractions'])} (train/val/test), per data folder and label.",
        "",
        *source_lines(meta, split),
        "| item | train | val | test |",
        "|---|---:|---:|---:|",
    ]
    for label in labels:
        lines.append(
            f"| {label} | " + " | ".join(str(split["counts"][s].get(label, 0)) for s in SPLITS) + " |"
        )
    s = rep["settings"]
    t = rep["timing"]
    lines += [
        "",
        "## Training",
        "",
        f"Mode `{s['mode']}`: phase 1 trains the head ({s['head_epochs']} epochs max, lr {s['head_lr']}), "
        f"phase 2 fine-tunes the last {s['tail_blocks']} blocks ({s['finetune_epochs']} epochs max, "
        f"lr {s['finetune_lr']}) with BatchNorm frozen. Class weighting: {s['class_weighting']}. "
        f"Label smoothing: {s.get('label_smoothing', 0)}. "
        f"Cached views per photo: {s['views']} (photo, mirror, augmented copies); "
        f"{s.get('small_label_views', s['views'])} for a label with fewer than "
        f"{s.get('small_label_photos', 0)} training photos in its folder, each photo then shown "
        f"{-(-s.get('small_label_views', s['views']) // s['views'])} times per epoch. "
        "Early stopping on validation loss.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k.removesuffix('_s')} | {v:.0f} |" for k, v in t.items() if k.endswith("_s")],
        "",
        "![training curves](curves.png)",
        "",
        "Tools: " + ", ".join(f"{k} {v}" for k, v in meta["tools"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def write(
    out: Path,
    settings: TrainSettings,
    split: Split,
    result: dict[str, Any],
    meta: dict[str, Any],
    timing: dict[str, float],
) -> Path:
    history = read_history(out)
    rep = {
        "meta": meta,
        "settings": asdict(settings),
        "split": {
            "photos": len(split.photos),
            "groups": len(set(split.groups)),
            "skipped": len(split.skipped),
            "seed": split.seed,
            "fractions": list(split.fractions),
            "phash_distance": split.phash_distance,
            "counts": split.counts(),
            "folders": {
                Path(source).name: {
                    "photos": sum(p.source == i for p in split.photos),
                    "labels": len({p.label for p in split.photos if p.source == i}),
                }
                for i, source in enumerate(split.sources)
            },
            "skipped_labels": split.skipped_labels,
        },
        "result": result,
        "history": history,
        "timing": timing,
    }
    (out / "report.json").write_text(json.dumps(rep, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(rep), encoding="utf-8")
    plot_curves(history, out / "curves.png")
    if "calibration" in result:
        plot_reliability(result["calibration"], out / "reliability.png")
    if result.get("ood"):
        plot_tradeoff(result["ood"], out / "ood_tradeoff.png")
    for level, png in (("item", "confusion_items.png"), ("bin", "confusion_bins.png")):
        r = result["int8"][level]
        plot_confusion(
            np.array(r["confusion"]),
            r["labels"],
            out / png,
            f"int8 {level} confusion, test split (n={result['n']})",
        )
    return out / "report.md"


def attach(out: Path, bundle_dir: Path, split: Split) -> None:
    """Ship the report beside the model: the card's claims point at files the run wrote.

    ``test_split.json`` and ``val_split.json`` list the photos of those splits
    (source folder name, path, label) so anyone with the same data can score
    the bundle on exactly them; decision settings such as the taxonomy's costs
    are chosen on val, never on test.
    """
    for name in ("test", "val"):
        photos = [
            {"source": split.source_name(p), "path": p.path, "label": p.label, "sha256": p.sha256}
            for p in split.subset(name)
        ]
        (bundle_dir / f"{name}_split.json").write_text(json.dumps(photos, indent=0) + "\n")
    shutil.copy(out / "report.md", bundle_dir / "MODEL_CARD.md")
    shutil.copy(out / "report.json", bundle_dir / "report.json")
    for name in PICTURES:
        if (out / name).exists():
            shutil.copy(out / name, bundle_dir / name)
