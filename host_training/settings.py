"""Training settings: defaults, presets (config/training/*.yaml) and their descriptions.

The defaults are the household34 preset, the recipe of the previous default model: CPU-practical,
about 36 minutes on 2 cores for 16,968 photos (garbage12 + garbage26cn + trashnet-trash). The shipped
model, models/household38-mnv2, was trained with the household-deep preset (about 61 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from edge.errors import SmartbinError
from edge.paths import TAXONOMIES, TRAINING_PRESETS
from edge.schema import build_dataclass, opt, read_yaml_file


@dataclass
class TrainSettings:
    data: List[str] = field(
        default_factory=list,
        metadata={
            "help": "photo folders, one sub-folder per item label, or review folders labelled with "
            "`smartbin review` (several allowed)"
        },
    )
    field_weight: float = opt(
        1.0,
        "weight of a photo from a review folder (the bin's own camera) against a photo from a label folder",
        lambda x: x > 0,
        "> 0",
    )
    base_run: Optional[str] = opt(
        None,
        "a previous run folder with the same image_size, tail_blocks and views: its cached features are "
        "reused for every photo both runs share, so only new photos go through the network (teach preset)",
    )
    out: str = opt("runs/latest", "run folder: split, cache, checkpoints, report, bundle")
    weights: Optional[str] = opt(None, "ImageNet MobileNetV2 .h5 (no top); empty = look in the usual places")
    taxonomy: str = opt(str(TAXONOMIES / "cn-4bin.yaml"), "taxonomy the model is trained for")
    model_id: Optional[str] = opt(None, "bundle id; empty = <data>-mnv2-<date>")
    mode: str = opt(
        "cached",
        "cached: cache the frozen front once, train the tail on the cache (CPU-practical); "
        "full: train from photos with full augmentation (GPU workstation)",
        lambda m: m in ("cached", "full"),
        "cached or full",
    )
    image_size: int = opt(224, "input size; ImageNet weights exist for 224", lambda n: n >= 32, ">= 32")
    tail_blocks: int = opt(
        2,
        "blocks fine-tuned in phase 2: 0 = head only, 1..16 = last N blocks, -1 = all (full mode)",
        lambda n: -1 <= n <= 16,
        "-1 to 16",
    )
    head_epochs: int = opt(25, "phase 1 epochs (head only)", lambda n: n >= 1, ">= 1")
    head_lr: float = opt(1e-3, "phase 1 learning rate", lambda x: x > 0, "> 0")
    finetune_epochs: int = opt(6, "phase 2 epochs (0 = skip)", lambda n: n >= 0, ">= 0")
    finetune_lr: float = opt(
        1e-4, "phase 2 learning rate (low: the backbone is pretrained)", lambda x: x > 0, "> 0"
    )
    batch_size: int = opt(64, "batch size", lambda n: n >= 1, ">= 1")
    dropout: float = opt(0.5, "dropout before the softmax head", lambda x: 0 <= x < 1, "0 <= x < 1")
    label_smoothing: float = opt(
        0.1,
        "label smoothing (0 = off): softer targets; +0.9 points of item accuracy on the default model",
        lambda x: 0 <= x < 1,
        "0 <= x < 1",
    )
    views: int = opt(
        2,
        "cached mode: copies of each photo cached: 1 = the photo, 2 = + its mirror image, "
        "more = + randomly augmented copies (crop, rotation, light, colour, blur)",
        lambda n: n >= 1,
        ">= 1",
    )
    tray_augmentation: bool = opt(
        False,
        "augmented copies also lay the item smaller on a tray tone, lit from one side, with a "
        "white-balance cast and JPEG compression (a tray camera's frames, not web photos); "
        "off in the shipped model's recipe, which predates it",
    )
    small_label_photos: int = opt(
        200,
        "a label with fewer training photos than this in one folder is small there (garbage26cn's ~50 "
        "against garbage12's thousands): those photos get small_label_views copies and are shown "
        "more often per epoch",
        lambda n: n >= 0,
        ">= 0",
    )
    small_label_views: int = opt(
        8,
        "copies of each photo of a small label (photo, mirror, augmented); each epoch shows "
        "small_label_views / views of them",
        lambda n: n >= 1,
        ">= 1",
    )
    min_label_photos: int = opt(
        10, "label folders with fewer photos than this are named and skipped", lambda n: n >= 1, ">= 1"
    )
    class_weighting: bool = opt(
        True, "weight classes by inverse frequency of what an epoch shows (garbage12 is a third clothes)"
    )
    seed: int = opt(0, "seed for the split and the training order")
    fractions: List[float] = field(
        default_factory=lambda: [0.7, 0.15, 0.15], metadata={"help": "train, val, test shares"}
    )
    phash_distance: int = opt(4, "photos whose perceptual hashes differ in <= this many bits share a split")
    limit_per_class: Optional[int] = opt(None, "use at most this many photos per label (quick runs)")
    calibration_photos: int = opt(
        300, "training photos used to calibrate int8 quantisation", lambda n: n >= 1, ">= 1"
    )
    ood_max_held: float = opt(
        0.02,
        "the out-of-distribution hold (model.json `ood`): its threshold is fitted on val so that at most "
        "this share of every data folder's waste is held as unknown, and its score chosen by what it holds "
        "of the never-tip (not-waste) val photos; 0 = no ood block (no item is held as unknown)",
        lambda x: 0 <= x < 1,
        "0 <= x < 1",
    )
    max_int8_drop: float = opt(
        1.0, "fail the run if int8 test accuracy is more than this many points below float"
    )
    min_agreement: float = opt(
        0.965,
        "fail the run if int8 and float agree on the top item for fewer test photos than this (the 34-label "
        "default model measures 0.969, and 0.990 on the bin; a broken quantisation falls far below)",
    )
    float16: bool = opt(False, "also write model_fp16.tflite (for Jetson GPUs); not part of the bundle")
    threads: int = opt(2, "interpreter threads for the int8 evaluation", lambda n: n >= 1, ">= 1")


def load_settings(preset: str | None, overrides: dict) -> TrainSettings:
    data: dict = {}
    if preset:
        path = Path(preset)
        if not path.suffix:
            path = TRAINING_PRESETS / f"{preset}.yaml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(TRAINING_PRESETS.glob("*.yaml")))
            raise SmartbinError(f"training preset {preset} not found", f"use one of: {known}, or a YAML path")
        data = (
            read_yaml_file(
                path,
                "training preset",
                missing_fix="give the preset's path, or a name from config/training/",
                damaged_fix="write the preset again as YAML (see config/training/)",
            )
            or {}
        )
        source = str(path)
    else:
        source = "settings"
    data.update({k: v for k, v in overrides.items() if v is not None})
    settings = build_dataclass(TrainSettings, data, "", source)
    if settings.small_label_views < settings.views:
        raise SmartbinError(
            f"small_label_views = {settings.small_label_views} is below views = {settings.views}",
            "give small labels at least as many copies as the others",
        )
    if settings.mode == "cached" and settings.tail_blocks < 0:
        raise SmartbinError("tail_blocks = -1 (all) needs mode: full", "use mode full, or tail_blocks 0..16")
    return settings
