"""``smartbin-train``: photos in, a verified model bundle out."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from edge.errors import SmartbinError
from edge.paths import TRAINING_PRESETS
from host_training.settings import TrainSettings, load_settings

EPILOG = """\
examples:
  # the shipped default model (38 labels from four folders), on a CPU: about an hour
  smartbin-train --preset household-deep --data ../shared/datasets/garbage12 \
      --data ../shared/datasets/garbage26cn --data ../shared/datasets/trashnet-trash \
      --data ../shared/datasets/not-waste --out runs/household38 --model-id household38-mnv2

  # your own photos added to a public set, on a GPU workstation with augmentation
  smartbin-train --preset workstation --data ../shared/datasets/garbage12 --data my-bin-photos

  # a bin's frames, labelled with `smartbin review`, as training data weighted up
  smartbin-train --data my-photos --data bin-07-review --field-weight 2 --out runs/bin-07

  # teach a new item in minutes: the last layer only, reusing runs/base's cached features
  smartbin-train --preset teach --data my-photos --out runs/base          # once
  smartbin-train --preset teach --data my-photos --data bin-07-review --base-run runs/base \
      --out runs/teach-1

  # a two-minute smoke test of the whole pipeline
  smartbin-train --preset tiny --data ../shared/datasets/garbage12 --out runs/tiny

Stopped? Run the same command again: it resumes from the run folder.
The run folder holds split.json, report.md (the model card), report.json,
curves.png, confusion_*.png, test_split/ (for `smartbin eval`) and bundle/
(model.tflite + model.json, ready for the bin).
Without --preset the defaults below apply; presets (config/training/) and flags override them.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbin-train",
        description="Fine-tune ImageNet MobileNetV2 on labelled photos (one sub-folder per item "
        "label, or a review folder labelled with `smartbin review`), evaluate it at item and bin "
        "level, quantise it to a full-integer TFLite model "
        "and write a model bundle for the bin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    presets = ", ".join(sorted(p.stem for p in TRAINING_PRESETS.glob("*.yaml")))
    parser.add_argument("--preset", help=f"a preset shipped with smartbin ({presets}) or a YAML file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's own logs")
    hints = typing.get_type_hints(TrainSettings)
    for f in dataclasses.fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default})"
        if f.name == "data":
            parser.add_argument(flag, action="append", metavar="FOLDER", help=help_text)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, nargs="+", type=float, help=help_text)
        elif tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, type=tp, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        settings = load_settings(args.preset, overrides)
        from host_training.train import run

        bundle = run(settings)
    except SmartbinError as exc:
        print(f"smartbin-train: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an install without the train extra (scripts/demo's .venv)
        from edge.service.cli import EXTRAS, missing_extra

        error = missing_extra(exc, {**EXTRAS, "tensorflow": "train", "keras": "train"})
        if error is None:
            raise
        print(f"smartbin-train: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"bundle written to {bundle} (model card: {bundle / 'MODEL_CARD.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
