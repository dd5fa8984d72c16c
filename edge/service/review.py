"""The review folder: frames of uncertain items, kept for a person to label and retrain on.

Each item is ``<time>-<id>.jpg`` with ``<time>-<id>.json`` beside it (the
model, the decision and every item's probability). The folder is bounded:
past ``review_max`` items the oldest pair is deleted first.
"""

from __future__ import annotations

import json
import logging
import time
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
        "label": None,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"{name}.jpg"
        if not cv2.imwrite(str(image), frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"OpenCV could not write {image}")
        (folder / f"{name}.json").write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
        for old in sorted(folder.glob("*.jpg"))[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    except OSError as exc:
        log.warning("review folder %s: %s; the item is sorted but its frame is not kept", folder, exc)
        return None
    return image
