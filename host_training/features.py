"""Prepared photos and the frozen front's activations, computed once and cached on disk.

This is what makes training practical on a CPU: the frozen part of
MobileNetV2 is ~90% of the compute and never changes, so it runs once per
photo (and once per mirrored or augmented copy) instead of once per epoch.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from edge.images import read_image
from edge.model.preprocess import InputSpec, prepare


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


def view_offsets(views: Sequence[int]) -> np.ndarray:
    """Row of each photo's first view in the flat cache; ``offsets[i + 1]`` ends photo ``i``."""
    return np.concatenate([[0], np.cumsum(np.asarray(views, dtype=np.int64))])


def cached_activations(
    front,
    files: Sequence[Path],
    spec: InputSpec,
    folder: Path,
    views: Sequence[int],
    batch_size: int = 64,
    augment=None,
) -> np.ndarray:
    """``(sum(views), *front_output)`` float32 activations, memory-mapped from ``folder``.

    Photo ``i`` owns rows ``view_offsets(views)[i]`` onwards, ``views[i]`` of
    them: its view 0 is the photo, view 1 its mirror image, and views 2.. are
    copies through ``augment`` (the same Keras pipeline the full mode trains
    with). Photos of small labels get more views than the rest. An interrupted
    run resumes at the first batch not yet written.
    """
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    views = np.asarray(views, dtype=np.int64)
    offsets = view_offsets(views)
    shape = (int(offsets[-1]), *front.output.shape[1:])
    data_path, progress_path = folder / "activations.f32", folder / "progress.json"
    done = json.loads(progress_path.read_text())["rows"] if progress_path.exists() else 0
    mode = "r+" if data_path.exists() else "w+"
    acts = np.lib.format.open_memmap(data_path, mode=mode, dtype=np.float32, shape=shape)
    if done >= len(files):
        return acts
    run_front = tf.function(lambda x: front(x, training=False), reduce_retracing=True)
    bar = tqdm(
        total=len(files), initial=done, desc="caching frozen features", unit="photo", dynamic_ncols=True
    )
    row = done
    for batch in prepared_batches(files[done:], spec, batch_size):
        n = len(batch)
        want = views[row : row + n]
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
            owners += [offsets[row + j] + k for j in take]
        images = tf.concat(copies, axis=0)
        out = np.concatenate(
            [run_front(images[i : i + 2 * batch_size]).numpy() for i in range(0, len(owners), 2 * batch_size)]
        )
        acts[np.array(owners)] = out
        row += n
        acts.flush()
        progress_path.write_text(json.dumps({"rows": row}))
        bar.update(n)
    bar.close()
    return acts
