"""``smartbin``: the command on the bin."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import yaml

from edge.config import REFERENCE_HEADER, Config, add_config_option, load_config, set_keys
from edge.errors import SmartbinError
from edge.fill import bins_to_empty
from edge.images import (
    PHOTO_FIX,
    PhotoTally,
    is_review_folder,
    labelled_images,
    photo_paths,
    read_image,
    review_labels,
)
from edge.ledger import open_ledger
from edge.model.classifier import Classifier, load_classifier
from edge.model.decision import Decision, decide
from edge.model.evaluation import (
    bins_right,
    compare_models,
    format_comparison,
    format_scores,
    plot_confusion,
    score_predictions,
)
from edge.model.taxonomy import Taxonomy
from edge.paths import DEFAULT_BUNDLE, pid_file
from edge.schema import describe, key_type
from edge.service import check, demo
from edge.service.daemon import Daemon
from edge.service.web import serve
from edge.servo import cli as servo_cli

log = logging.getLogger("smartbin")

EPILOG = """\
examples:
  smartbin demo                                the whole bin, with a simulated camera and servo
  smartbin run --config /etc/smartbin/smartbin.yaml
                                               the service (systemd starts it)
  smartbin check --config /etc/smartbin/smartbin.yaml
                                               after installation: each part, pass or fail
  smartbin classify photo.jpg                  item, bin and confidence for one photo
  smartbin classify photos/ --json             every photo in a folder, as JSON lines
  smartbin eval --data runs/household38/test_split --plots out/
                                               accuracy on labelled photos
  smartbin eval --model models/household38-mnv2 --model runs/new/bundle --data bin-07/
                                               two bundles side by side on the same photos
  smartbin servo cycle                         visit every bin (after installation)
  smartbin counts                              items sorted per bin, from the ledger
  smartbin emptied other                       the other bin was emptied: its fill restarts from 0
  smartbin mqtt test                           which step of the broker connection fails
  smartbin fleet --broker broker.local         a page with every bin on the broker
  smartbin config                              every config key with its default

The model is the bundle shipped in models/ unless --model or the config's
model.bundle names another. Exit status: 0 ok, 1 some photos were skipped,
2 an error stopped the command (the message says what to fix).
"""


SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``: journald files each line at its level, and stamps the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # stderr goes to the journal
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:  # OpenCV's own "[ WARN:0@0.2] global cap_v4l.cpp..." lines: our messages say it
        silence_opencv()


def silence_opencv() -> None:
    """OpenCV's own log off: ``cv2.utils.logging`` in the wheels, ``cv2.setLogLevel`` in Debian's 4.6."""
    levels = getattr(getattr(cv2, "utils", None), "logging", None)
    if levels is not None:
        levels.setLogLevel(levels.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)  # 0: silent


# The optional dependencies a command imports only when it needs them, and the extra that brings each
# (the training ones are host_training.cli's: the bin never names them).
EXTRAS = {
    "imagehash": "train",
    "PIL": "train",
    "matplotlib": "plots",
    "ai_edge_litert": "edge",
    "cv2": "edge",
    "serial": "edge",
    "paho": "edge",
    "ruamel": "edge",
    "tflite_runtime": "edge-legacy",
}


def missing_extra(exc: ModuleNotFoundError, extras: dict[str, str] = EXTRAS) -> SmartbinError | None:
    """The pip install that brings a missing optional module; None for a module no extra brings."""
    module = (exc.name or "").split(".")[0]
    extra = extras.get(module)
    if extra is None:
        return None
    setup = extra if extra.startswith("edge") else f"edge,{extra}"
    return SmartbinError(
        f"the Python module {module!r} is not installed: it comes with smartbin's {extra!r} extra",
        f"pip install 'smartbin[{extra}]' (in a checkout: scripts/setup {setup})",
    )


def add_model_options(p: argparse.ArgumentParser, compare: bool = False) -> None:
    add_config_option(p)
    default = f"model bundle folder (default: {DEFAULT_BUNDLE.name} in models/)"
    if compare:
        p.add_argument("--model", action="append", help=default + "; twice to compare two bundles")
    else:
        p.add_argument("--model", help=default)
    p.add_argument("--taxonomy", help="taxonomy YAML (default: the one the model was trained for)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: from config, 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbin",
        description="smartbin: recognise an item on the tray and sort it into a bin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="the sorting service: camera, trigger, model, servo, ledger, MQTT",
        description="Run the sorting loop until SIGTERM. systemd starts it (systemd/smartbin.service); "
        "it tells systemd when it is ready and pings the watchdog. SIGHUP reloads the config and "
        "taxonomy (an invalid file is refused and the running config kept); SIGUSR1 sorts what is "
        "on the tray now. Exit status 0 after a clean stop, 2 when the config, model or ledger "
        "cannot be used (the message says what to fix).",
    )
    add_config_option(p)

    p = sub.add_parser(
        "check",
        help="check each part after installation: config, model, ledger, camera, servo, MQTT",
        description="Validate the config, then open the model, ledger, camera, servo controller "
        "and MQTT broker one by one, with a pass/fail line each. Nothing moves. Stop the service "
        "first (sudo systemctl stop smartbin): it holds the camera and the serial port. "
        "Exit status 0 when every part passes, 1 otherwise.",
    )
    add_config_option(p)
    p.add_argument(
        "--only",
        help=f"comma-separated parts to check (default: all of {','.join(check.PARTS)}); "
        "'config' checks the file alone",
    )

    p = sub.add_parser(
        "demo",
        help="run the real daemon with a simulated camera and servo (no hardware needed)",
        description=demo.__doc__.split("\n", 1)[1].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        nargs="+",
        metavar="PATH",
        help="photos or folders of photos to put on the simulated tray, or one video file to "
        "replay as the camera (default: drawn synthetic items)",
    )
    p.add_argument("--synthetic", type=int, default=8, help="how many synthetic items (default 8)")
    p.add_argument("--model", help="model bundle folder (default: the shipped one)")
    p.add_argument(
        "--broker", default="localhost:1883", help="MQTT broker HOST:PORT (default localhost:1883)"
    )
    p.add_argument("--state", help="folder for the ledger and review frames (default: a new temporary one)")
    p.add_argument("--fps", type=float, default=10.0, help="simulated camera frame rate (0 = flat out)")
    p.add_argument("--dwell", type=float, default=0.3, help="seconds the tray stays tipped (default 0.3)")
    p.add_argument(
        "--review-sample",
        type=float,
        default=0.02,
        help="share of the items sorted with confidence whose frames are kept in <state>/review, as "
        "sorting.review_sample does on a bin (default 0.02; 1 keeps every frame, to teach a new item)",
    )

    p = sub.add_parser(
        "sort",
        help="sort what is on the tray now (signals the running service)",
        description="Ask the running `smartbin run` to classify and sort what is on the tray now, "
        "whatever the trigger says (SIGUSR1 to the pid in its state directory). Run it as the "
        "smartbin user or root; `sudo systemctl kill -s USR1 smartbin` does the same.",
    )
    add_config_option(p)

    p = sub.add_parser(
        "classify",
        help="classify photos: item, bin, confidence",
        description="Classify photos with the model bundle and show the item, the bin it goes "
        "to, the confidence and the top-k items. Unreadable photos are skipped and named.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    add_model_options(p)
    p.add_argument("--threshold", type=float, help="bin confidence below which the item is uncertain")
    p.add_argument("--top-k", type=int, help="how many items to list per photo (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per photo")

    p = sub.add_parser(
        "eval",
        help="score the model on labelled photos",
        description="Score the model on a folder whose sub-folders are item labels (item and "
        "bin accuracy) or bin ids (bin accuracy). Run it on a training run's test_split/ to "
        "check that the bin reproduces the training report. With --model A --model B, score two "
        "bundles on the same photos side by side: bin accuracy overall and per label, the photos "
        "each puts in the right bin that the other does not, and a verdict. Folders of things that are "
        "not waste are scored by what the bin does with them, held or tipped (and where), never by "
        "accuracy: a never_tip label of the taxonomy (a hand), and with --unknown-ok any folder the model "
        "and taxonomy do not know (keys, a wallet).",
    )
    p.add_argument("--data", required=True, help="folder of <label or bin>/<photo> files")
    p.add_argument(
        "--unknown-ok",
        action="store_true",
        help="accept folders named after no model label, taxonomy item or bin: things the model never saw "
        "(keys, a wallet), scored only as held or tipped",
    )
    add_model_options(p, compare=True)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--plots", metavar="DIR", help="write confusion matrix PNGs here (needs matplotlib)")
    p.add_argument("--limit", type=int, help="at most this many photos per folder")

    p = sub.add_parser(
        "review",
        help="label the frames a bin kept, in your browser",
        description="Serve a labelling page for a review folder (deploy/flash.sh --pull-review copies "
        "one from a bin): each frame with the model's top guesses and its bin; a click or a key sets "
        "its label, written into the frame's JSON at once. Keys: 1-5 pick a guess, n not an item, "
        "j/k next and previous. The labelled folder is training data for smartbin-train --data.",
    )
    p.add_argument("folder", metavar="DIR", help="the review folder (<name>.jpg + <name>.json pairs)")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")

    servo_cli.add_parser(sub)

    p = sub.add_parser(
        "counts",
        help="print the ledger's counts per bin",
        description="Print the sorted-item counts per bin from the ledger, the messages waiting "
        "for the broker, and the events dropped after a long outage.",
    )
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = sub.add_parser(
        "emptied",
        help="record that a bin was emptied: its fill restarts from 0",
        description="Record in the ledger that a bin (or all of them) was emptied: its fill restarts "
        "from 0, a full bin takes items again, and an 'emptied' fill event goes to the broker. Works "
        "whether or not the service runs; the same as the MQTT command emptied.",
    )
    p.add_argument("bin", nargs="?", default="all", help="the bin id, or all (default)")
    add_config_option(p)

    p = sub.add_parser(
        "fleet",
        help="a page with every bin on the broker: online, fill, faults, last item",
        description="Serve a page on this machine that lists every bin heard on the MQTT broker: "
        "online or offline (its last will greys it out), a fill bar per bin, items today, faults and "
        "the last item, updated every second. The broker, login and TLS come from the mqtt: section "
        "of --config; --broker overrides the host and port.",
    )
    p.add_argument("--broker", help="the broker as HOST or HOST:PORT (default: mqtt.host and mqtt.port)")
    p.add_argument("--prefix", help="topic prefix the bins publish under (default: mqtt.topic_prefix)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8766, help="port (default 8766)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    add_config_option(p)

    p = sub.add_parser(
        "mqtt",
        help="check the connection to the MQTT broker",
        description="Connect with the configured mqtt.* settings step by step (DNS, TCP, TLS, auth, "
        "ACL) and say exactly which step fails and what to check.",
    )
    p.add_argument("action", choices=("test",))
    add_config_option(p)

    p = sub.add_parser(
        "config",
        help="print every config key with its default and description, or set keys in a file",
        description="Print the config reference as YAML: every key, its default and what it does. "
        "With --file and --set, set keys in that file instead (comments and other keys are kept; "
        "the file is checked before it is replaced).",
        epilog="example:\n  smartbin config --file /etc/smartbin/smartbin.yaml --set device_id=bin-07 "
        "--set mqtt.host=broker.lan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--file", help="config file to change (created from the reference if absent)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a dotted key and a YAML value"
    )
    return parser


def resolve(args: argparse.Namespace) -> tuple[Config, Classifier]:
    config = load_config(args.config)
    return config, load_classifier(config.model, args.model, args.taxonomy, args.threads)


def cmd_classify(args: argparse.Namespace) -> int:
    config, classifier = resolve(args)
    bundle = classifier.bundle
    threshold = config.model.threshold if args.threshold is None else args.threshold
    if not 0 <= threshold <= 1:
        raise SmartbinError(f"--threshold {threshold} is outside 0..1", "use e.g. --threshold 0.65")
    top_k = args.top_k or config.model.top_k
    tally = PhotoTally()
    for path in photo_paths(args.paths):
        try:
            frame = read_image(path)
        except SmartbinError as exc:
            tally.skip(exc)
            continue
        if not tally.read and not args.json:  # the header once a photo is read, never above nothing
            print(
                f"model {bundle.model_id} ({classifier.runtime}), {bundle.calibration_note}, "
                f"taxonomy {bundle.taxonomy.name}, threshold {threshold:.2f}"
            )
            print(f"{'photo':<40} {'item':<14} {'bin':<11} {'conf':>6}  top-{top_k}")
        tally.read += 1
        d = decide(
            classifier.predict(frame),
            classifier.labels,
            bundle.taxonomy,
            threshold,
            config.model.fallback_bin,
            top_k,
            bundle.ood,
            config.sorting.unknown,
        )
        print(json.dumps(decision_json(path, d)) if args.json else decision_row(path, d), flush=True)
    return tally.finish()


def decision_json(path: Path, d: Decision) -> dict[str, Any]:
    return {
        "path": str(path),
        "item": d.item,
        "bin": d.bin,
        "held": d.held,  # why it would stay on the tray (never tipped, unknown), or null
        "confidence": round(d.confidence, 4),
        "item_confidence": round(d.item_confidence, 4),
        "uncertain": d.uncertain,
        "cost_rule": d.cost_rule,
        "bins": {k: round(v, 4) for k, v in d.bin_probs.items()},
        "top": [[k, round(v, 4)] for k, v in d.top_items],
    }


def decision_row(path: Path, d: Decision) -> str:
    shown = str(path) if len(str(path)) <= 40 else "…" + str(path)[-39:]
    mark = "?" if d.uncertain and d.held is None else ""
    top = ", ".join(f"{k} {v:.0%}" for k, v in d.top_items)
    where = "held" if d.held is not None else str(d.bin) + mark
    row = f"{shown:<40} {d.item:<14} {where:<11} {d.confidence:6.1%}  {top}"
    return row + (f"\n{'':<40} held: {d.held}" if d.held is not None else "")


def scorable(label: str, labels: Sequence[str], taxonomy: Taxonomy) -> bool:
    """Whether a folder's photos have a truth to score accuracy against: a model label, a taxonomy item,
    an ignored label or a bin."""
    return label in labels or label in taxonomy.bin_ids or label in taxonomy.items or label in taxonomy.ignore


def not_waste(label: str, taxonomy: Taxonomy) -> bool:
    """A never_tip label or concept of the taxonomy (a hand, a phone)."""
    return label in taxonomy.never_tip_labels or label in taxonomy.never_tip


def read_eval_folders(
    data: Path,
    classifiers: Sequence[Classifier],
    taxonomies: Sequence[Taxonomy],
    limit: int | None,
    unknown_ok: bool = False,
):
    """The photos, once every sub-folder (or review label) is known (to one of the models) as a label,
    a taxonomy item, a never_tip label or a bin; with ``unknown_ok`` any folder is (not waste)."""
    pairs = labelled_images(data)
    folders = {label for _, label in pairs}
    known: set[str] = set()
    for classifier, taxonomy in zip(classifiers, taxonomies):
        known |= {*classifier.labels, *taxonomy.bin_ids, *taxonomy.items, *taxonomy.ignore}
        known |= {*taxonomy.never_tip_labels, *taxonomy.never_tip}
    unknown = sorted(folders - known)
    if unknown and not unknown_ok:
        first = classifiers[0]
        raise SmartbinError(
            f"{data}: folders {unknown} are neither model labels, never_tip labels nor bins of taxonomy "
            f"{first.bundle.taxonomy.name!r}",
            f"name sub-folders after labels ({', '.join(first.labels)}) or bins "
            f"({', '.join(first.bundle.taxonomy.bin_ids)}); for photos of things the model never saw "
            "(keys, a wallet), scored only as held or tipped, pass --unknown-ok",
        )
    if limit:
        by_label: dict[str, list] = {}
        for path, label in pairs:
            by_label.setdefault(label, []).append((path, label))
        pairs = [pair for group in by_label.values() for pair in group[:limit]]
    return pairs


def predict_photos(
    classifiers: Sequence[Classifier], pairs, data: Path
) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    """Each model's probabilities for every readable photo (read once): probabilities per model, the
    photos' labels and paths, and the photos skipped as unreadable."""
    from tqdm import tqdm

    probs: list[list[np.ndarray]] = [[] for _ in classifiers]
    truth, paths, skipped = [], [], []
    if not pairs:
        raise SmartbinError(f"no photos to score in {data}", PHOTO_FIX)
    tally = PhotoTally()
    for path, label in tqdm(pairs, desc="evaluating", unit="photo", disable=None, dynamic_ncols=True):
        try:
            frame = read_image(path)
        except SmartbinError as exc:
            tally.skip(exc)
            skipped.append(str(path))
            continue
        tally.read += 1
        for rows, classifier in zip(probs, classifiers):
            rows.append(classifier.predict(frame))
        truth.append(label)
        paths.append(str(path))
    if not truth:
        raise SmartbinError(f"no photo in {data} could be read: {tally.summary()}", PHOTO_FIX)
    tally.finish()
    return [np.stack(rows) for rows in probs], truth, paths, skipped


def cmd_eval(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    models = args.model or [None]
    if len(models) > 2:
        raise SmartbinError(
            f"--model is given {len(models)} times", "give one bundle to score it, or two to compare them"
        )
    classifiers = [load_classifier(config.model, model, args.taxonomy, args.threads) for model in models]
    # A new item labelled on the page is scored against the bin the technician gave it, for both models.
    taught = review_labels(args.data).bins if is_review_folder(args.data) else {}
    taxonomies = [c.bundle.taxonomy.with_items(taught) for c in classifiers]
    pairs = read_eval_folders(Path(args.data), classifiers, taxonomies, args.limit, args.unknown_ok)
    if len(classifiers) == 2:
        # bins are compared on the photos both models can score; the other folders have no true bin
        kept = [
            (path, label)
            for path, label in pairs
            if any(
                scorable(label, c.labels, t) and not not_waste(label, t)
                for c, t in zip(classifiers, taxonomies)
            )
        ]
        if len(kept) < len(pairs):
            log.info(
                "comparing bins on %d photos: %d of folders with no bin left out",
                len(kept),
                len(pairs) - len(kept),
            )
        probs, truth, paths, skipped = predict_photos(classifiers, kept, Path(args.data))
        return compare_eval(args, classifiers, taxonomies, probs, truth, paths, skipped)
    probs, truth, paths, skipped = predict_photos(classifiers, pairs, Path(args.data))
    (classifier,), (probs_arr,), (taxonomy,) = classifiers, probs, taxonomies
    labels = classifier.labels
    result: dict[str, Any] = {
        "model_id": classifier.bundle.model_id,
        "data": str(args.data),
        "runtime": classifier.runtime,
        "skipped": skipped,
    }
    # accuracy on the photos with a truth to score (a hand the model knows is scored as an item too);
    # folders of things the model never saw have none
    scored = [i for i, label in enumerate(truth) if scorable(label, labels, taxonomy)]
    if scored:
        result.update(score_predictions(probs_arr[scored], [truth[i] for i in scored], labels, taxonomy))
    ood = classifier.bundle.ood
    result["held"] = held_shares(probs_arr, truth, labels, taxonomy, config, ood)
    result["not_waste"] = not_waste_outcomes(probs_arr, truth, labels, taxonomy, config, ood)
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        for key in ("item", "concept", "bin"):  # "concept" only where the taxonomy has concepts
            if key in result:
                r = result[key]
                path = plot_confusion(
                    np.array(r["confusion"]),
                    r["labels"],
                    out / f"confusion_{key}s.png",
                    f"{key} confusion, {args.data} (n={r['n']})",
                )
                log.info("wrote %s", path)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"model {classifier.bundle.model_id} ({classifier.runtime}) on {args.data}")
        for key in ("item", "concept", "bin"):
            if key in result:
                print(format_scores(result[key], f"{key} level"))
                print()
        shares = ", ".join(f"{label} {share:.1%}" for label, share in result["held"].items())
        print(f"held on the tray (not tipped) per label folder: {shares}")
        for label, r in result["not_waste"].items():
            tipped = ", ".join(f"{b} {share:.1%}" for b, share in r["tipped_to"].items())
            print(
                f"not waste ({r['kind']}, no accuracy): {label}, {r['n']} photos: held {r['held']:.1%} "
                f"(never-tip label {r['held_by_never_tip']:.1%}, unknown {r['held_by_ood']:.1%}), "
                f"tipped {r['tipped']:.1%}" + (f" ({tipped})" if tipped else "")
            )
        if "bin_most_probable" in result:
            plain = result["bin_most_probable"]
            print(
                f"bin level with the most probable bin instead of the taxonomy's costs: accuracy "
                f"{plain['accuracy']:.2%}, balanced accuracy {plain['balanced_accuracy']:.2%}"
            )
    return 1 if skipped else 0


def held_shares(
    probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], taxonomy: Taxonomy, config: Config, ood
) -> dict[str, float]:
    """Per label folder, the share of its photos the bin would leave on the tray (a never-tip item, or
    one the bundle's ``ood`` rule finds unknown), deciding as the daemon does."""
    model = config.model
    held: dict[str, list[bool]] = {}
    for p, label in zip(probs, truth):
        d = decide(p, labels, taxonomy, model.threshold, model.fallback_bin, 1, ood, config.sorting.unknown)
        held.setdefault(label, []).append(d.held is not None)
    return {label: sum(v) / len(v) for label, v in sorted(held.items())}


def not_waste_outcomes(
    probs: np.ndarray, truth: Sequence[str], labels: Sequence[str], taxonomy: Taxonomy, config: Config, ood
) -> dict[str, dict[str, Any]]:
    """Per folder of things that are not waste (a never_tip label, or ``unknown``: a folder the model and
    taxonomy do not know), what the bin does with its photos, deciding as the daemon does: the share
    held (by a never-tip label, by the ``ood`` rule) and the share tipped, per bin."""
    model = config.model
    out: dict[str, dict[str, Any]] = {}
    for p, label in zip(probs, truth):
        if scorable(label, labels, taxonomy) and not not_waste(label, taxonomy):
            continue
        r = out.setdefault(
            label,
            {
                "kind": "never_tip" if not_waste(label, taxonomy) else "unknown",
                "n": 0,
                "never": 0,
                "ood": 0,
                "bins": {},
            },
        )
        d = decide(p, labels, taxonomy, model.threshold, model.fallback_bin, 1, ood, config.sorting.unknown)
        r["n"] += 1
        if d.held is not None:
            r["never" if taxonomy.never_tip_rule(d.item) is not None else "ood"] += 1
        elif d.bin is not None:
            r["bins"][d.bin] = r["bins"].get(d.bin, 0) + 1
    return {
        label: {
            "kind": r["kind"],
            "n": r["n"],
            "held": (r["never"] + r["ood"]) / r["n"],
            "held_by_never_tip": r["never"] / r["n"],
            "held_by_ood": r["ood"] / r["n"],
            "tipped": sum(r["bins"].values()) / r["n"],
            "tipped_to": {b: c / r["n"] for b, c in sorted(r["bins"].items())},
            "seen_as_empty": (r["n"] - r["never"] - r["ood"] - sum(r["bins"].values())) / r["n"],
        }
        for label, r in sorted(out.items())
    }


def compare_eval(args, classifiers, taxonomies, probs, truth, paths, skipped) -> int:
    """Two bundles on the same photos, side by side: which puts more of them in the right bin."""
    names = tuple(Path(model).name for model in args.model)
    if names[0] == names[1]:  # two training runs both write bundle/: name them by the paths given
        names = tuple(args.model)
    right = tuple(bins_right(p, truth, c.labels, t) for p, c, t in zip(probs, classifiers, taxonomies))
    result = compare_models(names, truth, right)
    if args.json:
        ids = [c.bundle.model_id for c in classifiers]
        only = {key: [paths[i] for i in result[key]] for key in ("only_first", "only_second")}
        print(
            json.dumps(
                {**result, **only, "model_ids": ids, "data": str(args.data), "skipped": skipped}, indent=1
            )
        )
    else:
        print(f"comparing {names[0]} (first) and {names[1]} (second) on {args.data}")
        print(format_comparison(result, paths))
    return 1 if skipped else 0


def cmd_config(args: argparse.Namespace) -> int:
    if not args.set:
        if args.file:
            raise SmartbinError(
                "--file needs at least one --set KEY=VALUE", "or leave out --file to print the reference"
            )
        print(REFERENCE_HEADER + describe(Config))
        return 0
    if not args.file:
        raise SmartbinError("--set needs --file PATH", "name the config file to change")
    values = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SmartbinError(f"--set {item!r} is not KEY=VALUE", "e.g. --set mqtt.host=broker.lan")
        key = key.strip()
        parsed = yaml.safe_load(value) if value else None
        if key_type(key, Config) in (str, Optional[str]) and parsed is not None:
            parsed = value  # an id like 42 or 2024-01 stays the text it is
        values[key] = parsed
    path = Path(args.file)
    if path.exists():
        set_keys(path, values)
    else:
        create_config(path, values)
    print(f"{path}: set {', '.join(values)}")
    return 0


def create_config(path: Path, values: dict[str, Any]) -> None:
    """A new config file: the reference with ``values`` set, written beside it under another name and moved
    into place only once the keys are set and checked, so a refused key leaves no file behind."""
    draft = path.with_name(f".{path.name}.new")
    try:
        draft.write_text(REFERENCE_HEADER + describe(Config) + "\n", encoding="utf-8")
    except OSError as exc:
        raise SmartbinError(
            f"cannot create {path}: {exc.strerror}", f"check that {path.parent} exists and is writable"
        ) from None
    try:
        set_keys(draft, values)
        draft.replace(path)
    except SmartbinError as exc:
        name = str(draft)
        raise SmartbinError(exc.problem.replace(name, str(path)), exc.fix.replace(name, str(path))) from None
    finally:
        draft.unlink(missing_ok=True)


def cmd_review(args: argparse.Namespace) -> int:
    from edge.model.bundle import load_bundle
    from edge.model.taxonomy import load_taxonomy
    from edge.service.labelling import ReviewFolder, make_server

    config = load_config(args.config)
    taxonomy = args.taxonomy or config.model.taxonomy
    bundle = load_bundle(
        args.model or config.model.bundle or DEFAULT_BUNDLE, load_taxonomy(taxonomy) if taxonomy else None
    )
    folder = Path(args.folder)
    if not folder.is_dir():
        raise SmartbinError(f"review folder {folder} does not exist", f"check the path; {FRAMES_COME_FROM}")
    review = ReviewFolder(folder, bundle.taxonomy)
    items, problems = review.pairs()
    if not items:
        log.warning("review folder %s has no frames to label", folder)
        print(f"{folder} has no frames to label (<name>.jpg + <name>.json pairs): {FRAMES_COME_FROM}")
    server = make_server(review, args.host, args.port)
    url = f"http://{args.host}:{server.server_address[1]}/"
    print(
        f"{len(items)} frames in {folder} ({sum(1 for i in items if i['label'])} labelled), taxonomy "
        f"{bundle.taxonomy.name}: {url}   (Ctrl-C stops)",
        flush=True,
    )
    for problem in problems:
        print(f"  not shown: {problem}")
    serve(server, url, not args.no_browser)
    return 0


FRAMES_COME_FROM = (
    "frames come from a bin's review folder (sorting.review_folder: the uncertain items, and a sample of "
    "the rest): copy them here with deploy/flash.sh --pull-review user@bin DIR, or make some with "
    "smartbin demo --review-sample 1 --state DIR (then DIR/review)"
)


def cmd_counts(args: argparse.Namespace) -> int:
    found = check.ledger_summary(load_config(args.config).ledger)
    if args.json:
        summary = {"counts": found.counts, "total": found.total, "pending": found.waiting}
        print(json.dumps({**summary, "dropped": found.dropped}))
        return 0
    print(f"ledger {found.path}")
    for bin_id, count in found.counts.items():
        print(f"{bin_id:<12} {count:>8}")
    print(f"{'total':<12} {found.total:>8}")
    print(f"{found.waiting} messages wait for the broker; {found.dropped} events dropped after long outages")
    return 0


def cmd_emptied(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    known = load_classifier(config.model).bundle.taxonomy.bin_ids
    try:
        bins = bins_to_empty(args.bin, known)
    except ValueError as exc:
        raise SmartbinError(str(exc), "name one of the bins, or all") from None
    ledger = open_ledger(config.ledger)
    try:
        by = f"smartbin emptied (user {getpass.getuser()})"
        held = ledger.emptied(bins, by, time.time(), config.fill.capacity)
    finally:
        ledger.close()
    for bin_id, items in held.items():
        print(f"{bin_id}: emptied (it held {items} items since it was last emptied)")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from edge.mqtt.client import broker_address
    from edge.service.fleet import Fleet, make_server, watch

    mqtt = load_config(args.config).mqtt
    if args.broker:
        mqtt.host, mqtt.port = broker_address(args.broker, mqtt.port)
    fleet = Fleet(args.prefix or mqtt.topic_prefix)
    server = make_server(fleet, args.host, args.port)
    client = watch(fleet, mqtt)
    url = f"http://{args.host}:{server.server_address[1]}/"
    print(f"bins under {fleet.prefix}/ on {mqtt.host}:{mqtt.port}: {url}   (Ctrl-C stops)")
    try:
        serve(server, url, not args.no_browser)
    finally:
        client.loop_stop()
    return 0


def cmd_mqtt(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    steps = check.diagnose_mqtt(config.mqtt, config.device_id)
    for step, ok, detail in steps:
        print(f"{'ok  ' if ok else 'FAIL'}  {step:<5} {detail}")
    return 0 if all(ok for _, ok, _ in steps) else 1


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    daemon = Daemon(config, args.config)
    daemon.install_signals()
    return daemon.run()


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except SmartbinError as exc:
        print(f"FAIL  config  {exc.problem}; fix: {exc.fix}")
        return 1
    print(f"ok    config  {args.config or 'built-in defaults'} is valid")
    parts = tuple(p for p in args.only.split(",") if p != "config") if args.only else check.PARTS
    unknown = set(parts) - set(check.PARTS)
    if unknown:
        raise SmartbinError(f"--only {args.only}: unknown part(s) {sorted(unknown)}", f"use {check.PARTS}")
    failed = 0
    for part, ok, detail in check.run_checks(config, parts):
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {part:<7} {detail}", flush=True)
    return 1 if failed else 0


def cmd_sort(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = pid_file(config)
    try:
        pid = int(path.read_text())
        os.kill(pid, signal.SIGUSR1)
    except (FileNotFoundError, ValueError):
        raise SmartbinError(
            f"no running smartbin found ({path} is missing or unreadable)",
            "start it (sudo systemctl start smartbin) and give the same --config",
        ) from None
    except ProcessLookupError:
        raise SmartbinError(f"smartbin (pid {pid} in {path}) is not running", "start it") from None
    except PermissionError:
        raise SmartbinError(
            f"not allowed to signal smartbin (pid {pid})", "sudo systemctl kill -s USR1 smartbin"
        ) from None
    print(f"asked smartbin (pid {pid}) to sort what is on the tray now")
    return 0


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "demo": demo.run_demo,
    "sort": cmd_sort,
    "classify": cmd_classify,
    "eval": cmd_eval,
    "servo": servo_cli.run,
    "review": cmd_review,
    "counts": cmd_counts,
    "emptied": cmd_emptied,
    "fleet": cmd_fleet,
    "mqtt": cmd_mqtt,
    "config": cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except SmartbinError as exc:
        print(f"smartbin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        error = missing_extra(exc)
        if error is None:
            raise
        print(f"smartbin {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
