"""Reading photos from disk: one decoder for the edge, the trainer and the tests."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.errors import SmartbinError

log = logging.getLogger(__name__)

LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # an item label: a folder name, a taxonomy key
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to a BGR uint8 array (OpenCV's order, as a camera gives it)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SmartbinError(f"cannot read image {path}: {exc.strerror}", "check the path") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SmartbinError(
            f"cannot decode image {path}: the file is empty, truncated or not an image",
            "delete or replace the file",
        )
    return image


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (or under it, recursively), sorted by path."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_folders(root: str | Path) -> list[Path]:
    """The label sub-folders of ``root`` (hidden ones left out); raises when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise SmartbinError(
            f"data folder {root} does not exist or is not a folder",
            "give a folder with one sub-folder of photos per label, e.g. data/battery/*.jpg",
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SmartbinError(
            f"data folder {root} has no label sub-folders",
            "put the photos of each label in their own sub-folder, e.g. data/battery/*.jpg",
        )
    return folders


def is_review_folder(root: str | Path) -> bool:
    """A bin's review folder: ``<name>.jpg`` photos with a ``<name>.json`` sidecar beside each."""
    root = Path(root)
    return root.is_dir() and any(p.with_suffix(".jpg").is_file() for p in root.glob("*.json"))


@dataclass
class ReviewLabels:
    """What a labelled review folder holds: the labelled photos, and why the others are left out."""

    pairs: list[tuple[Path, str]] = field(default_factory=list)
    bins: dict[str, str] = field(default_factory=dict)  # label -> bin, as the labelling page wrote it
    unlabelled: int = 0
    problems: list[str] = field(default_factory=list)


def review_labels(root: str | Path) -> ReviewLabels:
    """The labels ``smartbin review`` wrote into the sidecars (``label``, ``label_bin``).

    A photo not labelled yet is counted and left out; a photo without its JSON,
    or with one that cannot be read, is named in ``problems`` and left out.
    """
    root = Path(root)
    found = ReviewLabels()
    for image in sorted(root.glob("*.jpg")):
        sidecar = image.with_suffix(".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            label, bin_id = data.get("label"), data.get("label_bin")
        except FileNotFoundError:
            found.problems.append(f"{image.name}: no JSON beside it")
            continue
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            found.problems.append(f"{sidecar.name}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if not label:
            found.unlabelled += 1
            continue
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            found.problems.append(
                f"{sidecar.name}: label {str(label)[:60]!r} is not a label (lower-case letters, digits, '-')"
            )
            continue
        found.pairs.append((image, label))
        if isinstance(bin_id, str) and bin_id:
            found.bins[label] = bin_id
    return found


def folder_labels(root: str | Path) -> list[str]:
    """The labels a data folder holds: its label sub-folders, or the labels written in a review folder."""
    if is_review_folder(root):
        return sorted({label for _, label in review_labels(root).pairs})
    return [folder.name for folder in label_folders(root)]


def labelled_images(root: str | Path, allow_empty: bool = False) -> list[tuple[Path, str]]:
    """``(path, label)`` for every image under ``root/<label>/``, or every labelled photo of a review folder.

    Raises when ``root`` has no label folders or (unless ``allow_empty``: the
    trainer names and skips small folders itself) a label folder has no images,
    because a silently missing class ruins a training run or an evaluation. A
    review folder's unlabelled and unreadable pairs are counted in the log and
    left out.
    """
    if is_review_folder(root):
        found = review_labels(root)
        log.info(
            "review folder %s: %d labelled photos, %d not labelled yet (left out), %d unreadable (left out)",
            root,
            len(found.pairs),
            found.unlabelled,
            len(found.problems),
        )
        for problem in found.problems:
            log.warning("review folder %s: %s: left out", root, problem)
        if not found.pairs and not allow_empty:
            raise SmartbinError(
                f"review folder {root} has no labelled photo ({found.unlabelled} not labelled yet)",
                f"label them first: smartbin review {root}",
            )
        return found.pairs
    pairs: list[tuple[Path, str]] = []
    for folder in label_folders(root):
        images = list_images(folder)
        if not images and not allow_empty:
            raise SmartbinError(
                f"label folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                "add photos to it or remove the folder",
            )
        pairs += [(p, folder.name) for p in images]
    return pairs


PHOTO_FIX = f"give photos ({', '.join(sorted(IMAGE_SUFFIXES))}) or folders that hold them"


def photo_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The photos a command line names: files as given, folders expanded to the images inside them.

    A path that does not exist, or a folder without one image, is a usage error (raised), so that a
    typo never reads as "0 photos" and a clean exit.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise SmartbinError(f"folder {path} has no photos{other_files(path)}", PHOTO_FIX)
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise SmartbinError(f"{raw} does not exist", "check the path (a typo?)")
    return found


def other_files(folder: Path, shown: int = 3) -> str:
    """What a folder without photos holds instead, for the message: ' (only 2 other files: a.txt, b.md)'."""
    others = sorted(p.name for p in folder.rglob("*") if p.is_file())
    if not others:
        return " (it is empty)"
    more = f", and {len(others) - shown} more" if len(others) > shown else ""
    files = "file" if len(others) == 1 else "files"
    return f" (only {len(others)} other {files}: {', '.join(others[:shown])}{more})"


@dataclass
class PhotoTally:
    """How many photos a command read, and which it skipped and why."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)  # the reason each was skipped (names the photo)

    def skip(self, exc: SmartbinError) -> None:
        log.warning("skipped: %s", exc.problem)
        self.skipped.append(exc.problem)

    def summary(self, shown: int = 3) -> str:
        text = f"read {self.read} photo{'' if self.read == 1 else 's'}, skipped {len(self.skipped)}"
        if not self.skipped:
            return text
        more = f"; and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        return f"{text}: {'; '.join(self.skipped[:shown])}{more}"

    def finish(self) -> int:
        """Say what was read; raise when nothing could be; the exit status: 1 when some were skipped."""
        if not self.read:
            raise SmartbinError(f"no photo could be read: {self.summary()}", PHOTO_FIX)
        (log.warning if self.skipped else log.info)("%s", self.summary())
        return 1 if self.skipped else 0


def readable_photos(paths: Sequence[Path]) -> tuple[list[Path], PhotoTally]:
    """The photos that decode, checked before a run that needs them all (the demo's tray)."""
    tally, readable = PhotoTally(), []
    for path in paths:
        try:
            read_image(path)
        except SmartbinError as exc:
            tally.skip(exc)
            continue
        tally.read += 1
        readable.append(path)
    return readable, tally
