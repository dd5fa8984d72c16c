"""Leave one collection out: train on all photo folders but one, score the folder left out.

  .venv/bin/python bench/loco.py --preset household34                 # today's default recipe
  .venv/bin/python bench/loco.py --preset household34 --preset NEW    # two recipes, side by side
  .venv/bin/python bench/loco.py --quick                              # tiny preset, a few photos

A model's own test split is drawn from the same collections it trained on:
the same cameras, backgrounds and photographers. A bin's tray is none of them.
Training without one collection and scoring every photo of it is the nearest
thing to a new place that can be measured here. Items the model never saw
(garbage26cn's own items when it is left out) are scored at the bin level,
against the bin the taxonomy gives them, which is what a bin is for.

Each training run has its own folder (``--runs``/PRESET/without-FOLDER) and
resumes there when started again, so the hours this takes can be spread over
several sittings. Scores come from ``smartbin eval --json`` on the left-out
folder, the same command a user runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from common import REPO, SHARED, parser, print_table, write_result

FOLDERS = ("garbage12", "garbage26cn", "trashnet-trash")
# The int8 parity gate guards what ships; here the runs compare recipes, and a run without garbage12 has
# 274 test photos, where one photo moves agreement by 0.4 points. A broken conversion still fails.
PARITY_FLOOR = ("--min-agreement", "0.9", "--max-int8-drop", "3")


def plan(folders: Sequence[Path], presets: Sequence[str], runs: Path) -> list[dict[str, Any]]:
    """One training run per (preset, folder left out): what it trains on and where."""
    return [
        {
            "preset": preset,
            "left_out": held.name,
            "train": [str(f) for f in folders if f != held],
            "test": str(held),
            "out": str(runs / Path(preset).stem / f"without-{held.name}"),
        }
        for preset in presets
        for held in folders
    ]


def row_of(run: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """The figures of one left-out folder: four-bin accuracy and balanced accuracy, photos, skipped."""
    bins = scores["bin"]
    hazard = bins["per_class"].get("hazardous", {})
    return {
        "preset": run["preset"],
        "left_out": run["left_out"],
        "photos": bins["n"],
        "bin_accuracy": bins["accuracy"],
        "bin_balanced_accuracy": bins["balanced_accuracy"],
        "hazardous_recall": hazard["recall"] if hazard.get("support") else None,
        "skipped": len(scores.get("skipped", [])),
    }


def smartbin(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(tool)
    return subprocess.run([str(exe), *args], check=True, text=True, stdout=subprocess.PIPE)


def train(run: dict[str, Any], gates: Sequence[str]) -> Path:
    bundle = Path(run["out"]) / "bundle"
    if not bundle.is_dir():  # smartbin-train resumes a run folder it finds half done
        data = [arg for folder in run["train"] for arg in ("--data", folder)]
        smartbin("smartbin-train", "--preset", run["preset"], *data, "--out", run["out"], *gates)
    return bundle


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", action="append", help="training preset (several: side by side)")
    p.add_argument("--runs", default=str(REPO / "runs" / "loco"), help="folder for the training runs")
    p.add_argument(
        "--only", action="append", choices=FOLDERS, help="leave out only this folder (several allowed)"
    )
    p.add_argument("--limit", type=int, help="score at most this many photos a label of the left-out folder")
    args = p.parse_args()
    presets = args.preset or ["household34"]
    if args.quick:
        presets, args.limit = ["tiny"], args.limit or 6  # the tiny preset trains on 12 photos a label
    folders = [SHARED / name for name in FOLDERS if (SHARED / name).is_dir()]
    if len(folders) < 2:
        raise SystemExit(f"leave-one-collection-out needs at least two of {FOLDERS} in {SHARED}")
    runs = [r for r in plan(folders, presets, Path(args.runs)) if not args.only or r["left_out"] in args.only]
    rows = []
    for run in runs:
        bundle = train(run, () if args.quick else PARITY_FLOOR)  # the tiny preset sets its own
        limit = ["--limit", str(args.limit)] if args.limit else []
        scored = smartbin("smartbin", "eval", "--model", str(bundle), "--data", run["test"], "--json", *limit)
        scores = json.loads(scored.stdout)
        rows.append(row_of(run, scores))
    print_table(
        ["preset", "left out", "photos", "4-bin acc", "4-bin balanced", "hazardous recall"],
        [
            [
                r["preset"],
                r["left_out"],
                r["photos"],
                f"{r['bin_accuracy']:.2%}",
                f"{r['bin_balanced_accuracy']:.2%}",
                "-" if r["hazardous_recall"] is None else f"{r['hazardous_recall']:.2%}",
            ]
            for r in rows
        ],
    )
    name = "loco" if not args.only else "loco-without-" + "-".join(sorted(args.only))
    write_result(name, args.out, {"quick": args.quick, "presets": presets, "limit": args.limit, "rows": rows})


if __name__ == "__main__":
    main()
