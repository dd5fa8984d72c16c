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
from edge.preprocess import InputSpec, prepare


def load_prepared(files: Sequence[Path], spec: InputSpec) -> np.ndarray:
    """Photos as the edge would feed them: (n, h, w, 3) uint8 via ``edge.preprocess.prepare``."""
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


def cached_activations(
    front,
    files: Sequence[Path],
    spec: InputSpec,
    folder: Path,
    views: int = 2,
    batch_size: int = 64,
    augment=None,
) -> np.ndarray:
    """``(n, views, *front_output)`` float32 activations, memory-mapped from ``folder``.

    View 0 is the photo, view 1 its mirror image, and views 2.. are copies
    through ``augment`` (the same Keras pipeline the full mode trains with).
    An interrupted run resumes at the first batch not yet written.
    """
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    shape = (len(files), views, *front.output.shape[1:])
    data_path, progress_path = folder / "activations.f32", folder / "progress.json"
    done = json.loads(progress_path.read_text())["rows"] if progress_path.exists() else 0
    mode = "r+" if data_path.exists() else "w+"
    acts = np.lib.format.open_memmap(data_path, mode=mode, dtype=np.float32, shape=shape)
    if done >= len(files):
        return acts
    run_front = tf.function(lambda x: front(x, training=False), reduce_retracing=True)
    remaining = files[done:]
    bar = tqdm(
        total=len(files), initial=done, desc="caching frozen features", unit="photo", dynamic_ncols=True
    )
    row = done
    for batch in prepared_batches(remaining, spec, batch_size):
        pixels = tf.constant(batch, dtype=tf.float32)
        copies = [pixels, pixels[:, :, ::-1]][:views]
        copies += [augment(pixels, training=True) for _ in range(views - len(copies))]
        out = run_front(tf.concat(copies, axis=0)).numpy()
        n = len(batch)
        acts[row : row + n] = out.reshape(views, n, *shape[2:]).swapaxes(0, 1)
        row += n
        acts.flush()
        progress_path.write_text(json.dumps({"rows": row}))
        bar.update(n)
    bar.close()
    return acts
