"""Prepared photos and the frozen front's activations, computed once and cached on disk.

This is what makes training practical on a CPU: the frozen part of
MobileNetV2 is ~90% of the compute and never changes, so it runs once per
photo (and once per mirrored or augmented copy) instead of once per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from edge.images import read_image
from edge.model.preprocess import InputSpec, prepare

log = logging.getLogger(__name__)


def load_prepared(files: Sequence[Path], spec: InputSpec) -> np.ndarray:
    """Photos as the edge would feed them: (n, h, w, 3) uint8 via ``edge.model.preprocess.prepare``."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(lambda f: prepare(read_image(f), spec), files)))


def prepared_batches(files: Sequence[Path], spec: InputSpec, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of prepared photos; the next batch decodes while the caller computes."""
    starts = range(0, len(files), batch_size)
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = None
        for start in starts:
            chunk = files[start : start + batch_size]
            future = ahead.submit(load_prepared, chunk, spec)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(model) -> str:
    """A digest of a model's weights: two caches of the same front hold the same features."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight).tobytes())
    return digest.hexdigest()[:16]


def view_offsets(views: Sequence[int]) -> np.ndarray:
    """Row of each photo's first view in the flat cache; ``offsets[i + 1]`` ends photo ``i``."""
    return np.concatenate([[0], np.cumsum(np.asarray(views, dtype=np.int64))])


MANIFEST = "photos.json"


def reusable_rows(
    folders: Sequence[Path], front_key: str, shas: Sequence[str], views: np.ndarray
) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(photo, old activations, old first row)`` for each photo another cache already holds.

    A cache is read only if its front is the same (``front_key``: image size,
    cut, preprocessing, weights); a photo is taken from it when it holds at least
    as many views of the photo, found by content hash.
    """
    wanted = {sha: i for i, sha in enumerate(shas)}
    taken: set[int] = set()
    for folder in folders:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
            if old.get("front") != front_key or not (folder / "activations.f32").is_file():
                continue
            acts = np.load(folder / "activations.f32", mmap_mode="r")
            done = np.load(folder / "done.npy")
        except (OSError, ValueError):
            continue
        old_offsets = view_offsets(old["views"])
        for j, sha in enumerate(old["sha256"]):
            i = wanted.get(sha)
            if i is not None and i not in taken and done[j] and old["views"][j] >= views[i]:
                taken.add(i)
                yield i, acts, int(old_offsets[j])


def cached_activations(
    front,
    files: Sequence[Path],
    spec: InputSpec,
    folder: Path,
    views: Sequence[int],
    batch_size: int = 64,
    augment=None,
    shas: Sequence[str] = (),
    front_key: str = "",
    reuse: Sequence[Path] = (),
) -> np.ndarray:
    """``(sum(views), *front_output)`` float32 activations, memory-mapped from ``folder``.

    Photo ``i`` owns rows ``view_offsets(views)[i]`` onwards, ``views[i]`` of
    them: its view 0 is the photo, view 1 its mirror image, and views 2.. are
    copies through ``augment`` (the same Keras pipeline the full mode trains
    with). Photos of small labels get more views than the rest. A new cache
    first copies the photos that the caches in ``reuse`` hold for the same
    front (by content hash, ``shas``); the network computes only the rest. An
    interrupted run resumes with the photos not yet written.
    """
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    views = np.asarray(views, dtype=np.int64)
    offsets = view_offsets(views)
    shape = (int(offsets[-1]), *front.output.shape[1:])
    data_path, done_path = folder / "activations.f32", folder / "done.npy"
    fresh = not data_path.exists()
    acts = np.lib.format.open_memmap(data_path, mode="w+" if fresh else "r+", dtype=np.float32, shape=shape)
    done = np.zeros(len(files), dtype=bool)
    if done_path.exists() and not fresh:
        done = np.load(done_path)
    elif (folder / "progress.json").exists() and not fresh:  # a cache written before done.npy
        done[: json.loads((folder / "progress.json").read_text())["rows"]] = True

    def save_done() -> None:
        acts.flush()
        np.save(folder / "done.tmp.npy", done)
        (folder / "done.tmp.npy").replace(done_path)

    if fresh:
        (folder / MANIFEST).write_text(
            json.dumps({"front": front_key, "sha256": list(shas), "views": views.tolist()}), encoding="utf-8"
        )
        for i, old, first in reusable_rows(reuse, front_key, shas, views):
            acts[offsets[i] : offsets[i + 1]] = old[first : first + views[i]]
            done[i] = True
        if done.any():
            log.info("%d of %d photos' features taken from earlier runs", int(done.sum()), len(files))
        save_done()
    todo = np.nonzero(~done)[0]
    if not len(todo):
        return acts
    run_front = tf.function(lambda x: front(x, training=False), reduce_retracing=True)
    bar = tqdm(
        total=len(files),
        initial=len(files) - len(todo),
        desc="caching frozen features",
        unit="photo",
        dynamic_ncols=True,
    )
    batches = prepared_batches([files[i] for i in todo], spec, batch_size)
    for start, batch in zip(range(0, len(todo), batch_size), batches):
        photos = todo[start : start + len(batch)]
        want = views[photos]
        pixels = tf.constant(batch, dtype=tf.float32)
        copies, owners = [], []
        for k in range(int(want.max())):
            if k == 0:
                copy = pixels
            elif k == 1:
                copy = pixels[:, :, ::-1]
            else:
                copy = augment(pixels, training=True)
            take = np.nonzero(want > k)[0]
            copies.append(tf.gather(copy, take))
            owners += [offsets[photos[j]] + k for j in take]
        images = tf.concat(copies, axis=0)
        out = np.concatenate(
            [run_front(images[i : i + 2 * batch_size]).numpy() for i in range(0, len(owners), 2 * batch_size)]
        )
        acts[np.array(owners)] = out
        done[photos] = True
        save_done()
        bar.update(len(photos))
    bar.close()
    return acts


def pooled_features(
    model, cut: str, acts, rows: Sequence[int] | None = None, batch_size: int = 256
) -> np.ndarray:
    """``(len(rows), channels)`` pooled features (the head's input) of cached activations at layer ``cut``.

    The head phase needs the pooled features of every cached view it trains
    on. ``Model.predict`` on the memory-mapped cache first copies the whole
    cache into one tensor (4.5 GB at 12 tail blocks, 36 GB at 16 on the default
    data); this reads ``rows`` (default: all) in file order, a batch at a time,
    so only those views go through the tail and the cache stays on disk.
    """
    import tensorflow as tf

    rows = np.arange(len(acts)) if rows is None else np.asarray(rows, dtype=np.int64)
    if cut == "pool":  # no tail blocks: the cache holds the pooled features
        return np.asarray(acts[rows], dtype=np.float32)
    import keras

    pool = model.get_layer("pool").output
    to_pool = keras.Model(model.get_layer(cut).output, pool)
    call = tf.function(lambda x: to_pool(x, training=False), reduce_retracing=True)
    order = np.argsort(rows, kind="stable")  # memory-mapped rows read faster in order
    out = np.empty((len(rows), pool.shape[-1]), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        take = order[start : start + batch_size]
        out[take] = call(tf.constant(np.asarray(acts[rows[take]]), dtype=tf.float32)).numpy()
    return out
