"""The model bundle: the contract between the training workstation and the bin.

A bundle is ``model.tflite`` plus ``model.json`` side by side (usually in one
folder). ``model.json`` carries everything the edge needs to use the model
without guessing; :func:`bundle_meta` and :func:`write_bundle` write its keys. The edge refuses a
bundle it cannot trust and says exactly why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import SmartbinError
from edge.model.ood import SCORES, OodRule
from edge.model.preprocess import InputSpec
from edge.model.taxonomy import Taxonomy, parse_taxonomy
from edge.schema import UnfitFile, read_capped

FORMAT = "smartbin-model-bundle"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MODEL_FILE = "model.tflite"
META_FILE = "model.json"


@dataclass(frozen=True)
class Bundle:
    folder: Path
    meta: dict[str, Any]
    taxonomy: Taxonomy

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def model_id(self) -> str:
        return str(self.meta.get("model_id", self.folder.name))

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.meta["input"])

    @property
    def calibrated(self) -> bool:
        return "calibration" in self.meta

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted by training; 1.0 (as trained) for a bundle made before that."""
        return float(self.meta["calibration"]["temperature"]) if self.calibrated else 1.0

    @property
    def calibration_note(self) -> str:
        """How its probabilities are calibrated, for the lines ``smartbin check`` and ``classify`` print."""
        if not self.calibrated:
            return "uncalibrated (bundle made before calibration)"
        return f"calibrated (T={self.temperature:.3g})"

    @property
    def ood(self) -> OodRule | None:
        """The out-of-distribution rule fitted by training (edge/model/ood.py); None: no item is unknown."""
        block = self.meta.get("ood")
        return None if block is None else OodRule(str(block["score"]), float(block["threshold"]))


META_MAX_BYTES = 4 << 20  # model.json: a few KiB in practice; never read past this


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_folder(path: str | Path) -> Path:
    """Accept the folder, its model.json or its model.tflite."""
    path = Path(path)
    return path.parent if path.name in (MODEL_FILE, META_FILE) else path


def load_bundle(path: str | Path, taxonomy: Taxonomy | None = None, *, verify_sha: bool = True) -> Bundle:
    """Read and verify a bundle against the active ``taxonomy``.

    With no taxonomy given, the one the model was trained for (embedded in
    model.json) is used.
    """
    folder = bundle_folder(path)
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    for needed in (meta_path, model_path):
        if not needed.is_file():
            raise SmartbinError(
                f"model bundle {folder}: {needed.name} is missing",
                "a bundle is model.tflite + model.json written by smartbin-train; "
                "copy both files, or point --model at the right folder",
            )
    try:
        meta = json.loads(read_capped(meta_path, META_MAX_BYTES).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, UnfitFile) as exc:
        why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise SmartbinError(
            f"model bundle {folder}: {META_FILE} is not valid JSON ({why})",
            "the file is damaged; copy the bundle again from the training run",
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SmartbinError(
            f"model bundle {folder}: {META_FILE} is not a smartbin bundle (format != {FORMAT!r})",
            "export the model with smartbin-train, which writes this file",
        )
    version = meta.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise SmartbinError(
            f"model bundle {folder}: format version {version!r} is not supported "
            f"(this smartbin reads {sorted(SUPPORTED_VERSIONS)})",
            "update smartbin on this device, or export the bundle with a matching smartbin-train",
        )
    for key in ("labels", "input", "model_sha256", "taxonomy"):
        if key not in meta:
            raise SmartbinError(
                f"model bundle {folder}: {META_FILE} has no {key!r}",
                "export the bundle again with smartbin-train",
            )
    if verify_sha:
        actual = sha256_file(model_path)
        if actual != meta["model_sha256"]:
            raise SmartbinError(
                f"model bundle {folder}: {MODEL_FILE} sha256 is {actual[:12]}…, "
                f"but {META_FILE} says {str(meta['model_sha256'])[:12]}…; the model file is "
                "corrupt or belongs to another bundle",
                "copy model.tflite and model.json again, together, from the same training run",
            )
    trained_for = parse_taxonomy(meta["taxonomy"], source=f"{meta_path} taxonomy")
    active = taxonomy or trained_for
    missing = active.uncovered(meta["labels"])
    if missing:
        raise SmartbinError(
            f"model bundle {folder}: labels {missing} are not in taxonomy {active.name!r}",
            "map each of them to a bin under 'items:' (or list them under 'ignore:') in the taxonomy file",
        )
    lacking = active.never_tip_missing(meta["labels"])
    if lacking:
        raise SmartbinError(
            f"model bundle {folder}: taxonomy {active.name!r} never tips {lacking}, but the model has no "
            "such label, so it could never hold them",
            f"use a model trained on photos of {', '.join(lacking)}, or remove them from 'never_tip:' in the "
            "taxonomy file (keep them as a comment until such a model exists)",
        )
    InputSpec.from_dict(meta["input"])
    check_calibration(meta, folder)
    check_ood(meta, folder)
    return Bundle(folder=folder, meta=meta, taxonomy=active)


def check_calibration(meta: dict[str, Any], folder: Path) -> None:
    """No block is an uncalibrated bundle (made before calibration); a block must hold a usable T."""
    if "calibration" not in meta:
        return
    block = meta["calibration"]
    value = block.get("temperature") if isinstance(block, dict) else None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        got = "missing" if not isinstance(block, dict) or "temperature" not in block else repr(value)
        raise SmartbinError(
            f"model bundle {folder}: {META_FILE} calibration.temperature is {got}; it must be a "
            "positive number (the softmax temperature training fitted)",
            "export the bundle again with smartbin-train, or copy model.json again, together with "
            "model.tflite, from the training run",
        )


def check_ood(meta: dict[str, Any], folder: Path) -> None:
    """No block: no out-of-distribution hold. A block names a known score and a finite threshold."""
    if "ood" not in meta:
        return
    block = meta["ood"]
    fix = (
        "export the bundle again with smartbin-train, or copy model.json again, together with "
        "model.tflite, from the training run; delete the ood block to run without an unknown-item hold"
    )
    if not isinstance(block, dict):
        raise SmartbinError(f"model bundle {folder}: {META_FILE} ood is not an object", fix)
    name = block.get("score")
    if name not in SCORES:
        got = "missing" if "score" not in block else repr(name)
        raise SmartbinError(
            f"model bundle {folder}: {META_FILE} ood.score is {got}; this smartbin knows {sorted(SCORES)}",
            f"update smartbin, or {fix}",
        )
    value = block.get("threshold")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value)):
        got = "missing" if "threshold" not in block else repr(value)
        raise SmartbinError(
            f"model bundle {folder}: {META_FILE} ood.threshold is {got}; it must be a finite number (the "
            "score under which an item is unknown, fitted by training)",
            fix,
        )


def bundle_meta(
    *,
    model_id: str,
    labels: list[str],
    spec: InputSpec,
    pixel_scaling: str,
    architecture: str,
    taxonomy: Taxonomy,
    data: dict[str, Any],
    tools: dict[str, str],
) -> dict[str, Any]:
    """``model.json`` as a training run starts it, in the order of its keys in the file.

    What is measured later is added by the run: each tensor's ``quantization`` (read back from the
    converted model), ``calibration`` (the softmax temperature fitted on val, see
    edge/model/calibration.py; optional: a bundle without it is uncalibrated), ``ood`` (the
    out-of-distribution score and threshold, see edge/model/ood.py; optional: without it no item is
    unknown) and ``metrics``;
    :func:`write_bundle` adds the format and the sha256.
    """
    return {
        "model_id": model_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": labels,
        "input": {**spec.to_dict(), "dtype": "uint8", "value_range": [0, 255]},
        "preprocessing": {
            "steps": [
                "decode to BGR (OpenCV)",
                f"{spec.resize}",
                f"resize to {spec.width}x{spec.height} ({spec.interpolation})",
                "BGR to RGB",
            ],
            "pixel_scaling": pixel_scaling,
        },
        "output": {"dtype": "uint8", "activation": "softmax"},
        "architecture": architecture,
        "taxonomy": taxonomy.to_dict(),
        "data": data,
        "tools": tools,
    }


def write_bundle(folder: str | Path, tflite_model: bytes, meta: dict[str, Any]) -> Bundle:
    """Write model.tflite and model.json; the format keys and sha256 are filled in here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    model_path.write_bytes(tflite_model)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "model_sha256": sha256_file(model_path),
    }
    (folder / META_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return load_bundle(folder)
