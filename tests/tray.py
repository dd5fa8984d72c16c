"""A recorded tray session made of real photos, for the tests that run `smartbin run` as a process
(tests/test_e2e.py, and on an emulated Raspberry Pi, tests/test_arm64.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.camera.simulation import empty_tray, place_item
from edge.config import ModelConfig
from edge.images import read_image
from edge.model.classifier import load_classifier
from edge.model.decision import DEFAULT_THRESHOLD
from edge.model.taxonomy import load_taxonomy
from tests.broker import Broker
from tests.conftest import REPO, real_photos

LABELS = (
    "battery",
    "biological",
    "brown-glass",
    "cardboard",
    "clothes",
    "metal",
    "paper",
    "plastic",
    "shoes",
    "trash",
    "white-glass",
    "green-glass",
)
EMPTY_FRAMES, ITEM_FRAMES = 6, 8
# The bin each photo belongs in comes from its dataset folder's label through the taxonomy file, never
# from the classifier and `decide` the daemon runs: a decision bug must not move the expectation with it.
TAXONOMY = load_taxonomy(REPO / "config" / "taxonomy" / "cn-4bin.yaml")
# Only photos the shipped model is sure of, and right about, so that the folder's bin is the one right
# answer: a top item at SURE leaves its bin far above the threshold, and too little mass elsewhere for the
# costs (cn-4bin.yaml's are 3 at most) to flip it.
PER_LABEL, CANDIDATES, SURE = 2, 20, 0.85


def record_session(folder: Path, photos: list[Path]) -> list[Path]:
    """A tray session as a camera would record it: empty tray, an item lands and stays a while, empty.

    Returns the frame file of each item, in order.
    """
    folder.mkdir()
    tray = empty_tray()
    rng = np.random.default_rng(0)
    frames, items = [], []
    for _ in range(12):
        frames.append(tray)
    for photo in photos:
        item = place_item(tray, read_image(photo))
        frames += [item] * ITEM_FRAMES + [tray] * EMPTY_FRAMES
        items.append(len(frames) - EMPTY_FRAMES - 1)
    paths = []
    for n, frame in enumerate(frames):
        path = folder / f"{n:05d}.png"
        if frame is tray:  # sensor noise on the empty tray; the item frames stay identical
            frame = cv2.add(tray, rng.integers(0, 4, tray.shape, dtype=np.uint8))
        cv2.imwrite(str(path), frame)
        paths.append(path)
    return [paths[i] for i in items]


def write_config(tmp_path: Path, frames: Path, port: str, broker: Broker, replay_fps: float) -> Path:
    path = tmp_path / "smartbin.yaml"
    path.write_text(
        f"""device_id: e2e
camera: {{source: {frames}, replay_fps: {replay_fps}}}
servo: {{protocol: maestro, port: {port}, dwell_s: 0.05}}
ledger: {{path: {tmp_path / "state" / "ledger.db"}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max_s: 1}}
"""
    )
    return path


def folder_bin(photo: Path) -> str:
    return TAXONOMY.bin_of(photo.parent.name)


def choose_sure_photos() -> list[Path]:
    """PER_LABEL photos of each label, the first whose tray frame the shipped model gives the folder's label
    as its top item at SURE or more (chosen once, by the model alone: no `decide`)."""
    assert SURE > DEFAULT_THRESHOLD
    classifier = load_classifier(ModelConfig())
    tray = empty_tray()
    chosen = []
    for label in LABELS:
        sure = []
        for photo in real_photos(label, CANDIDATES):
            probs = classifier.predict(place_item(tray, read_image(photo)))
            top = int(probs.argmax())
            if classifier.labels[top] == label and probs[top] >= SURE:
                sure.append(photo)
            if len(sure) == PER_LABEL:
                break
        assert len(sure) == PER_LABEL, f"{label}: the model is sure of {len(sure)} of {CANDIDATES} photos"
        chosen += sure
    assert {folder_bin(p) for p in chosen} == set(TAXONOMY.bin_ids)  # every bin is expected at least once
    return chosen
