"""Photos in, a reproducible train/val/test split out.

Near-duplicate photos (the same picture saved twice, resized copies) would put
the same image on both sides of the split and flatter the test accuracy, so
photos are grouped by perceptual hash and a whole group goes to one split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from edge.errors import SmartbinError
from edge.images import folder_labels, labelled_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_VERSION = 1


@dataclass(frozen=True)
class Photo:
    source: int
    path: str  # relative to its source folder
    label: str
    sha256: str
    phash: int


@dataclass
class Split:
    sources: list[str]
    photos: list[Photo]
    assignment: list[str]  # one of SPLITS per photo
    groups: list[int]
    seed: int
    fractions: tuple[float, float, float]
    phash_distance: int
    skipped: list[str] = field(default_factory=list)
    skipped_labels: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({p.label for p in self.photos})

    def subset(self, name: str) -> list[Photo]:
        return [p for p, s in zip(self.photos, self.assignment) if s == name]

    def file(self, photo: Photo) -> Path:
        return Path(self.sources[photo.source]) / photo.path

    def source_name(self, photo: Photo) -> str:
        return Path(self.sources[photo.source]).name

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {s: Counter() for s in SPLITS}
        for photo, split in zip(self.photos, self.assignment):
            table[split][photo.label] += 1
        return {s: dict(sorted(c.items())) for s, c in table.items()}

    def fingerprint(self) -> str:
        """sha256 over every photo's label, split and content hash: same data, same split."""
        digest = hashlib.sha256()
        for photo, split in sorted(zip(self.photos, self.assignment), key=lambda x: x[0].sha256):
            digest.update(f"{photo.label}\t{split}\t{photo.sha256}\n".encode())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPLIT_VERSION,
            "sources": self.sources,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "phash_distance": self.phash_distance,
            "fingerprint": self.fingerprint(),
            "counts": self.counts(),
            "skipped": self.skipped,
            "skipped_labels": self.skipped_labels,
            "photos": [
                {
                    "source": p.source,
                    "path": p.path,
                    "label": p.label,
                    "split": s,
                    "group": g,
                    "sha256": p.sha256,
                    "phash": f"{p.phash:016x}",
                }
                for p, s, g in zip(self.photos, self.assignment, self.groups)
            ],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Split:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != SPLIT_VERSION:
            raise SmartbinError(f"split file {path} has an unknown version", "delete it to re-split")
        photos = [
            Photo(r["source"], r["path"], r["label"], r["sha256"], int(r["phash"], 16))
            for r in data["photos"]
        ]
        return cls(
            sources=data["sources"],
            photos=photos,
            assignment=[r["split"] for r in data["photos"]],
            groups=[r["group"] for r in data["photos"]],
            seed=data["seed"],
            fractions=tuple(data["fractions"]),
            phash_distance=data["phash_distance"],
            skipped=data.get("skipped", []),
            skipped_labels=data.get("skipped_labels", []),
        )


def scan_photos(sources: Sequence[Path]) -> tuple[list[Photo], list[str]]:
    """Hash every photo under the label folders; unreadable files are skipped and named."""
    pairs = [
        (i, path, label)
        for i, root in enumerate(sources)
        for path, label in labelled_images(root, allow_empty=True)
    ]
    photos, skipped = [], []
    for i, path, label in tqdm(pairs, desc="hashing photos", unit="photo", dynamic_ncols=True):
        try:
            data = path.read_bytes()
            with Image.open(path) as image:
                image.load()
                phash = int(str(imagehash.phash(image.convert("RGB"))), 16)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            log.warning("skipping unreadable photo %s: %s", path, exc)
            skipped.append(str(path))
            continue
        rel = path.relative_to(sources[i]).as_posix()
        photos.append(Photo(i, rel, label, hashlib.sha256(data).hexdigest(), phash))
    return photos, skipped


def group_near_duplicates(hashes: Sequence[int], max_distance: int) -> list[int]:
    """Union-find over photos whose 64-bit perceptual hashes differ in <= max_distance bits."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bits = np.unpackbits(np.array(hashes, dtype=">u8").view(np.uint8).reshape(n, 8), axis=1)
    bits = bits.astype(np.int16)
    for start in range(0, n, 512):
        block = bits[start : start + 512]
        # Hamming distance = popcount(a xor b) = a.(1-b) + (1-a).b
        dist = block @ (1 - bits).T + (1 - block) @ bits.T
        for a, b in zip(*np.nonzero(dist <= max_distance)):
            a += start
            if a < b:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    renumber = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [renumber[r] for r in roots]


def assign_splits(
    strata: Sequence[str],
    groups: Sequence[int],
    keys: Sequence[str],
    fractions: tuple[float, float, float],
    seed: int,
) -> list[str]:
    """Deterministic, stratified assignment of whole groups to train/val/test.

    A group belongs to the stratum (a label, or a folder's label) most of its
    photos have. Within each stratum, groups are taken in a seeded hash order
    and each goes to the split that is furthest below its target share.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for g, idx in members.items():
        stratum = Counter(strata[i] for i in idx).most_common(1)[0][0]
        by_stratum[stratum].append(g)

    def order(g: int) -> str:
        first = min(keys[i] for i in members[g])
        return hashlib.sha256(f"{seed}:{first}".encode()).hexdigest()

    assignment = [""] * len(strata)
    for stratum in sorted(by_stratum):
        filled = dict.fromkeys(SPLITS, 0)
        total = sum(len(members[g]) for g in by_stratum[stratum])
        for g in sorted(by_stratum[stratum], key=order):
            split = min(
                SPLITS,
                key=lambda s: (filled[s] / (fractions[SPLITS.index(s)] * total + 1e-9), SPLITS.index(s)),
            )
            for i in members[g]:
                assignment[i] = split
            filled[split] += len(members[g])
    return assignment


def make_split(
    sources: Sequence[Path],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    phash_distance: int = 4,
    limit_per_class: int | None = None,
    min_label_photos: int = 1,
) -> Split:
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise SmartbinError(f"split fractions {fractions} do not add up to 1", "e.g. 0.7 0.15 0.15")
    sources = [Path(s).resolve() for s in sources]
    photos, skipped = scan_photos(sources)
    if limit_per_class:
        photos = limit_labels(photos, limit_per_class)
    photos, skipped_labels = drop_small_folders(photos, sources, min_label_photos)
    if not photos:
        raise SmartbinError("no readable photos in the data folders", "check --data")
    groups = group_near_duplicates([p.phash for p in photos], phash_distance)
    keys = [f"{p.source}/{p.path}" for p in photos]
    # Per folder and label, so that each folder keeps its share in every split (a label two
    # folders share, like battery, is split in each folder on its own).
    strata = [f"{p.source}/{p.label}" for p in photos]
    assignment = assign_splits(strata, groups, keys, fractions, seed)
    split = Split(
        [str(s) for s in sources],
        photos,
        assignment,
        groups,
        seed,
        fractions,
        phash_distance,
        skipped,
        skipped_labels,
    )
    n_groups = len(set(groups))
    log.info(
        "%d photos in %d near-duplicate groups (%d photos share a group); %d skipped",
        len(photos),
        n_groups,
        len(photos) - n_groups,
        len(skipped),
    )
    return split


def drop_small_folders(
    photos: list[Photo], sources: Sequence[Path], minimum: int
) -> tuple[list[Photo], list[str]]:
    """Leave out label folders with fewer than ``minimum`` readable photos, naming each.

    A label seen a handful of times cannot be learned or tested; training on it
    would only add a class the model guesses at.
    """
    per_folder = Counter({(i, label): 0 for i, root in enumerate(sources) for label in folder_labels(root)})
    per_folder.update((p.source, p.label) for p in photos)
    small = {key for key, n in per_folder.items() if n < minimum}
    named = []
    for source, label in sorted(small):
        folder = Path(sources[source]) / label
        log.warning(
            "skipping label folder %s: %d photos, fewer than %d (add photos to train it)",
            folder,
            per_folder[(source, label)],
            minimum,
        )
        named.append(f"{folder} ({per_folder[(source, label)]} photos)")
    return [p for p in photos if (p.source, p.label) not in small], named


def limit_labels(photos: list[Photo], limit: int) -> list[Photo]:
    """At most ``limit`` photos per label of each folder, a deterministic sample (by content hash)."""
    kept: list[Photo] = []
    taken: Counter = Counter()
    for photo in sorted(photos, key=lambda p: p.sha256):
        if taken[(photo.source, photo.label)] < limit:
            taken[(photo.source, photo.label)] += 1
            kept.append(photo)
    return sorted(kept, key=lambda p: (p.source, p.path))


def export_subset(split: Split, name: str, folder: Path) -> Path:
    """Lay one split out as <folder>/<label>/<file> symlinks, for `smartbin eval --data`."""
    for photo in split.subset(name):
        link = folder / photo.label / f"{photo.source}-{Path(photo.path).name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(split.file(photo))
    return folder


def class_weights(labels: Iterable[int], n_classes: int) -> dict[int, float]:
    """Balanced weights, n / (k * count), so clothes (a third of garbage12) does not drown batteries."""
    counts = np.bincount(np.fromiter(labels, dtype=int), minlength=n_classes).astype(float)
    total = counts.sum()
    return {i: float(total / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}
