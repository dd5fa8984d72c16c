"""Reading photos from disk: one decoder for the edge, the trainer and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge.errors import SmartbinError

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


def labelled_images(root: str | Path, allow_empty: bool = False) -> list[tuple[Path, str]]:
    """``(path, label)`` for every image under ``root/<label>/``.

    Raises when ``root`` has no label folders or (unless ``allow_empty``: the
    trainer names and skips small folders itself) a label folder has no images,
    because a silently missing class ruins a training run or an evaluation.
    """
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


def expand_paths(paths: list[str | Path]) -> Iterator[Path]:
    """Files as given, folders expanded to the images inside them."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from list_images(path)
        else:
            yield path
