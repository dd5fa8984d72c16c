"""The review folder: frames kept for a person to label and retrain on.

Every uncertain item is kept, and a random share (``sorting.review_sample``) of
the items sorted with confidence, so that a confident mistake can be found too;
the sidecar's ``kept`` says which. Each item is ``<time>-<id>.jpg`` with
``<time>-<id>.json`` beside it (the model, the decision and every item's
probability). Each file is written under a temporary name and renamed, the JSON
last: a JSON file means its pair is whole, for whoever copies the folder while
the daemon writes to it. The folder is bounded: past ``review_max`` items the
oldest pair is deleted first.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.model.decision import Decision

log = logging.getLogger(__name__)


def review_name(when: float, item_id: str) -> str:
    """Sorts by time (UTC, to the microsecond), so the oldest are first in name order."""
    micro = int(round(when * 1e6)) % 1_000_000
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(when)) + f".{micro:06d}-{item_id[:12]}"


def review_reason(uncertain: bool, sample: float, draw: float) -> str | None:
    """Why an item's frame is kept (``uncertain``, ``sample``), or None; ``draw`` is uniform in [0, 1)."""
    if uncertain:
        return "uncertain"
    return "sample" if draw < sample else None


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a name of this write's own (two writers never share one), then rename into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_for_review(
    folder: Path,
    frame_bgr: np.ndarray,
    item_id: str,
    when: float,
    decision: Decision,
    probabilities: np.ndarray,
    labels: Sequence[str],
    model_id: str,
    keep: int,
    kept: str = "uncertain",
) -> Path | None:
    """Write the frame and its sidecar; never raises (a full disk must not stop the sorting)."""
    if keep <= 0:
        return None
    name = review_name(when, item_id)
    sidecar = {
        "id": item_id,
        "time": when,
        "model_id": model_id,
        "item": decision.item,
        "bin": decision.bin,
        "confidence": round(decision.confidence, 4),
        "uncertain": decision.uncertain,
        "most_probable_bin": decision.most_probable_bin,
        "cost_rule": decision.cost_rule,
        "bins": {k: round(v, 4) for k, v in decision.bin_probs.items()},
        "probabilities": {label: round(float(p), 4) for label, p in zip(labels, probabilities)},
        "kept": kept,
        "label": None,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"{name}.jpg"
        ok, jpeg = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise OSError(f"OpenCV could not encode {image}")
        write_atomically(image, jpeg.tobytes())
        write_atomically(folder / f"{name}.json", json.dumps(sidecar, indent=1).encode("utf-8"))
        for old in sorted(folder.glob("*.jpg"))[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    except OSError as exc:
        log.warning("review folder %s: %s; the item is sorted but its frame is not kept", folder, exc)
        return None
    return image
