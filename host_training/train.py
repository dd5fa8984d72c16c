"""One training run: split -> train (two phases) -> evaluate -> quantise -> report -> bundle.

Every stage leaves its result in the run folder, so a stopped run started
again with the same ``--out`` resumes: the split is reused, the feature cache
continues from its last batch, and each phase restarts from its last epoch
(Keras ``BackupAndRestore``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import platform
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import keras
import numpy as np
import yaml
from tqdm import tqdm

import edge
from edge.errors import SmartbinError
from edge.images import folder_labels, is_review_folder, review_labels
from edge.model.bundle import bundle_meta, load_bundle, write_bundle
from edge.model.calibration import (
    ECE_BINS,
    T_RANGE,
    calibrated,
    calibration_scores,
    fit_temperature,
    negative_log_likelihood,
)
from edge.model.classifier import Classifier
from edge.model.evaluation import score_predictions
from edge.model.preprocess import InputSpec
from edge.model.taxonomy import Taxonomy, load_taxonomy
from host_training.augment import AUGMENTATION_VERSION, augmentation, preview
from host_training.data import SPLITS, Split, class_weights, export_subset, make_split
from host_training.features import (
    cache_key,
    cached_activations,
    load_prepared,
    pooled_features,
    prepared_batches,
    view_offsets,
    weights_digest,
)
from host_training.ood_fit import fit_ood, held_summary, tradeoff_curve
from host_training.quantize import convert, parity, parity_gate_failures, predict_int8
from host_training.settings import TrainSettings

log = logging.getLogger(__name__)


class ParityError(SmartbinError):
    """int8 strays too far from float: the run fails loudly and writes no bundle."""


@contextlib.contextmanager
def stage(out: Path, timing: dict[str, float], name: str):
    """Time a stage into ``timing`` and ``timing.json``, keeping the time of a finished stage on resume.

    A resumed run skips finished stages in seconds; the report must still say
    what the whole training cost, so each stage's first full time is kept.
    """
    path = out / "timing.json"
    before = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.monotonic()
    yield
    spent = time.monotonic() - t0
    timing[name] = max(spent, before.get(name, 0.0))
    path.write_text(json.dumps({**before, name: timing[name]}, indent=1) + "\n")


SPLIT_FILES = "split_files.json"


def prepare_split(settings: TrainSettings, out: Path) -> Split:
    """The run folder's split: made once, reused on resume while the photos on disk are still the same.

    Beside ``split.json``, ``split_files.json`` lists every photo file the split
    was made from (label, size, modification time), so a resumed run notices
    photos added, removed, relabelled or replaced under the same folders
    without hashing them all again; only a photo whose time changed at the
    same size is hashed. A changed folder is refused: the old split would be
    trained silently, and the feature cache would mix old and new photos.
    """
    path = out / "split.json"
    sources = [str(Path(d).resolve()) for d in settings.data]
    if path.exists():
        split = Split.load(path)
        if split.sources != sources:
            raise SmartbinError(
                f"run folder {out} holds a split of other data ({split.sources})",
                "use another --out for this data, or delete split.json to split again",
            )
        check_photos(split, out, settings.limit_per_class)
        log.info("reusing the split in %s", path)
        return split
    listing = photo_listing(sources)
    split = make_split(
        [Path(s) for s in sources],
        tuple(settings.fractions),
        settings.seed,
        settings.phash_distance,
        settings.limit_per_class,
        settings.min_label_photos,
    )
    before = read_photo_listing(out)
    if before and before["fingerprint"] != split.fingerprint() and (out / "checkpoints").exists():
        raise SmartbinError(
            f"run folder {out} holds checkpoints trained on another split of its data (split.json was "
            "deleted and the photos have changed since)",
            f"delete {out / 'checkpoints'} too, to train on the new split, or use another --out",
        )
    split.save(path)
    write_photo_listing(out, split, listing)
    return split


Listing = dict[tuple[int, str], tuple[str, int, int]]  # (source, path) -> (label, size, mtime_ns)


def photo_listing(sources: list[str]) -> Listing:
    """``(source, path) -> (label, size, mtime_ns)`` for every photo the data folders hold now."""
    from edge.images import labelled_images

    listing: Listing = {}
    for i, root in enumerate(sources):
        for file, label in labelled_images(root, allow_empty=True):
            try:
                st = file.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # a dangling link: the split skipped it as unreadable
                size, mtime = -1, 0
            listing[(i, file.relative_to(root).as_posix())] = (label, size, mtime)
    return listing


def write_photo_listing(out: Path, split: Split, listing: Listing) -> None:
    files = [[i, rel, *listing[(i, rel)]] for i, rel in sorted(listing)]
    data = {"version": 1, "sources": split.sources, "fingerprint": split.fingerprint(), "files": files}
    (out / f"{SPLIT_FILES}.tmp").write_text(json.dumps(data) + "\n", encoding="utf-8")
    (out / f"{SPLIT_FILES}.tmp").replace(out / SPLIT_FILES)


def read_photo_listing(out: Path) -> dict[str, Any] | None:
    """``split_files.json`` with ``files`` as a ``Listing``; None when absent or unreadable."""
    try:
        data = json.loads((out / SPLIT_FILES).read_text(encoding="utf-8"))
        if data.get("version") != 1:
            return None
        data["files"] = {(i, rel): (label, size, mtime) for i, rel, label, size, mtime in data["files"]}
        return data
    except (OSError, ValueError, TypeError, KeyError):
        return None


def file_sha256(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def check_photos(split: Split, out: Path, limit_per_class: int | None) -> None:
    """Refuse a resumed run whose data folders no longer hold the photos its split was made from."""
    now = photo_listing(split.sources)
    photos = {(p.source, p.path): p for p in split.photos}
    record = read_photo_listing(out)
    if record and (record["sources"] != split.sources or record["fingerprint"] != split.fingerprint()):
        record = None  # written for another split
    added, removed, changed = [], [], []
    stale = record is None
    if record is not None:
        before = record["files"]
        for key, (label, size, mtime) in before.items():
            if key not in now:
                removed.append(key)
            elif now[key][:2] != (label, size):
                changed.append(key)
            elif now[key][2] != mtime:
                stale = True  # touched or copied: the content decides
                if key in photos and file_sha256(split.file(photos[key])) != photos[key].sha256:
                    changed.append(key)
        added = [key for key in now if key not in before]
    else:
        log.info("checking the %d photos of %s against their content hashes", len(photos), out / "split.json")
        for key, photo in photos.items():
            if key not in now:
                removed.append(key)
            elif now[key][0] != photo.label or file_sha256(split.file(photo)) != photo.sha256:
                changed.append(key)
        if limit_per_class is None:  # else the split left photos out on purpose
            left_out = set(split.skipped) | {s.rsplit(" (", 1)[0] for s in split.skipped_labels}
            added = [
                (i, rel)
                for (i, rel), (label, _, _) in now.items()
                if (i, rel) not in photos
                and str(Path(split.sources[i]) / rel) not in left_out
                and str(Path(split.sources[i]) / label) not in left_out
            ]
    if added or removed or changed:
        kind, (i, rel) = next(
            (kind, keys[0])
            for kind, keys in (("added", added), ("removed", removed), ("changed", changed))
            if keys
        )
        raise SmartbinError(
            f"the photos in {', '.join(split.sources)} changed since run folder {out} split them: "
            f"{len(added)} added, {len(removed)} removed, {len(changed)} changed "
            f"(e.g. {kind}: {Path(split.sources[i]).name}/{rel})",
            "use another --out for the changed data, or delete split.json (and checkpoints/, trained on the "
            "old split) to split again",
        )
    if stale:
        write_photo_listing(out, split, now)


def keras_callbacks(out: Path, phase: str, patience: int) -> list:
    return [
        keras.callbacks.BackupAndRestore(str(out / "checkpoints" / phase)),
        keras.callbacks.CSVLogger(str(out / f"history_{phase}.csv"), append=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
    ]


def smoothed_loss(smoothing: float):
    """Sparse cross-entropy against labels smoothed by ``smoothing``.

    Keras's sparse loss has no smoothing, so the labels are one-hot encoded
    here. Smoothing keeps the 34-label model from pushing its probabilities to
    0 and 1 on ~50 photos a label (+0.9 points of item accuracy measured); its
    probabilities are lower, which the confidence threshold has to follow.
    """

    def loss(y_true, y_pred):
        n = keras.ops.shape(y_pred)[-1]
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)

    return loss


def compile_for(model, lr: float, smoothing: float = 0.0) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=smoothed_loss(smoothing) if smoothing else "sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def phase_file(out: Path, phase: str) -> Path:
    """The weights a finished phase leaves; its presence means the phase is done."""
    return out / "checkpoints" / f"{phase}.weights.h5"


def run_phase(model, out: Path, phase: str, trainee, patience: int, **fit_args) -> None:
    """``trainee.fit(**fit_args)`` once; a finished phase is skipped on resume and its weights reloaded.

    ``trainee`` is the part being trained (head, tail or the whole model); it
    shares its layers with ``model``, whose weights are what is saved.
    """
    done = phase_file(out, phase)
    if done.exists():
        log.info("phase %s already finished; loading %s", phase, done)
        model.load_weights(done)
        return
    log.info(
        "phase %s: training %d weights", phase, sum(int(np.prod(w.shape)) for w in trainee.trainable_weights)
    )
    trainee.fit(**fit_args, callbacks=keras_callbacks(out, phase, patience))
    done.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(done)


def targets(split: Split, labels: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label index per photo, and the photo rows of each split."""
    y = np.array([labels.index(p.label) for p in split.photos])
    rows = {s: np.array([i for i, a in enumerate(split.assignment) if a == s], dtype=int) for s in SPLITS}
    return y, rows


def photo_views(split: Split, settings: TrainSettings) -> np.ndarray:
    """Cached copies per photo: ``views``, or ``small_label_views`` where its folder has few of its label.

    Per folder, not per label: trashnet-trash's 50 tray photos of ``trash`` are
    a small set of their own even though garbage12 has hundreds of ``trash``.
    """
    train = Counter((p.source, p.label) for p, s in zip(split.photos, split.assignment) if s == "train")
    return np.array(
        [
            settings.small_label_views
            if train[(p.source, p.label)] < settings.small_label_photos
            else settings.views
            for p in split.photos
        ],
        dtype=int,
    )


def epoch_repeats(views: np.ndarray, base_views: int) -> np.ndarray:
    """Showings per photo per epoch: a small label's photo once for each ``base_views`` of its copies."""
    return -(-views // base_views)


def photo_weights(split: Split, field_weight: float) -> np.ndarray:
    """Per photo: ``field_weight`` for a photo from a review folder (the bin's own camera), else 1."""
    field = [is_review_folder(source) for source in split.sources]
    return np.array([field_weight if field[p.source] else 1.0 for p in split.photos], dtype=np.float32)


def label_weights(y: np.ndarray, n_labels: int, enabled: bool) -> np.ndarray:
    """Per label: the balanced class weight over the samples ``y`` an epoch shows (ones when off).

    Index it with the samples' labels: ``label_weights(y, n, on)[y]``.
    """
    if not enabled:
        return np.ones(n_labels, np.float32)
    cw = class_weights(y, n_labels)
    return np.array([cw[c] for c in range(n_labels)], dtype=np.float32)


# Settings that change what is trained; a resumed run must not change them.
TRAINING_KEYS = (
    "mode",
    "image_size",
    "tail_blocks",
    "head_epochs",
    "head_lr",
    "finetune_epochs",
    "finetune_lr",
    "batch_size",
    "dropout",
    "label_smoothing",
    "views",
    "tray_augmentation",
    "small_label_photos",
    "small_label_views",
    "min_label_photos",
    "class_weighting",
    "field_weight",
    "seed",
    "taxonomy",
)


def same_setting(key: str, before: Any, now: Any) -> bool:
    """A taxonomy is the same file under another path too (config/ is a link into edge/shipped/)."""
    if key == "taxonomy" and before and now:
        return Path(before).resolve() == Path(now).resolve()
    return before == now


def check_resume(out: Path, settings: TrainSettings) -> None:
    """Refuse to resume checkpoints that were trained with other settings."""
    path = out / "settings.json"
    current = dataclasses.asdict(settings)
    if path.exists() and (out / "checkpoints").exists():
        before = json.loads(path.read_text())
        changed = [  # a setting added since the run began (absent before) had its default then
            f"{k} {before.get(k)!r} -> {current[k]!r}"
            for k in TRAINING_KEYS
            if k in before and not same_setting(k, before[k], current[k])
        ]
        if changed:
            raise SmartbinError(
                f"run folder {out} holds checkpoints trained with other settings ({', '.join(changed)})",
                "use another --out for these settings, or delete the folder's checkpoints/ to train again",
            )
    path.write_text(json.dumps(current, indent=2) + "\n")


class CachedBatches(keras.utils.PyDataset):
    """Cached activations in batches, reshuffled each epoch.

    Each photo is shown ``repeats[i]`` times per epoch, each time as another of
    its cached views drawn at random (a small label's photo several times, as
    several augmented copies).
    """

    def __init__(
        self, acts, offsets, views, repeats, rows, y, weights, n_labels, settings: TrainSettings
    ) -> None:
        super().__init__()
        self.acts, self.offsets, self.views, self.y, self.weights = acts, offsets, views, y, weights
        self.photos = np.repeat(rows, repeats[rows])
        self.w = label_weights(y[self.photos], n_labels, settings.class_weighting)
        self.batch_size, self.rng = settings.batch_size, np.random.default_rng(settings.seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.photos) / self.batch_size)

    def on_epoch_end(self) -> None:
        order = self.rng.permutation(self.photos)
        view = (self.rng.random(len(order)) * self.views[order]).astype(int)
        self.order, self.rows = order, self.offsets[order] + view

    def __getitem__(self, i: int):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        photos, rows = self.order[sl], self.rows[sl]
        sort = np.argsort(rows)  # memory-mapped rows read faster in order
        photos, rows = photos[sort], rows[sort]
        return self.acts[rows], self.y[photos], self.w[self.y[photos]] * self.weights[photos]


def train_cached(model, split: Split, labels: list[str], settings: TrainSettings, out: Path):
    from host_training.model import cut_layer_name, set_trainable, split_model

    spec = InputSpec(settings.image_size, settings.image_size)
    front, tail = split_model(model, settings.tail_blocks)
    views = photo_views(split, settings)
    offsets = view_offsets(views)
    # the tray augmentation draws other copies: in the keys when on; off, the keys are those of earlier runs
    tray = [AUGMENTATION_VERSION] if settings.tray_augmentation else []
    key = cache_key(
        settings.image_size,
        cut_layer_name(model, settings.tail_blocks),
        spec.to_dict(),
        views.tolist(),
        settings.seed,
        [p.sha256 for p in split.photos],
        *tray,
    )
    files = [split.file(p) for p in split.photos]
    shas = [p.sha256 for p in split.photos]
    front_key = cache_key(
        settings.image_size,
        cut_layer_name(model, settings.tail_blocks),
        spec.to_dict(),
        weights_digest(front),
        *tray,
    )
    reuse = sorted(Path(settings.base_run, "cache").glob("*")) if settings.base_run else []
    timing: dict[str, float] = {}
    with stage(out, timing, "feature_cache_s"):
        acts = cached_activations(
            front,
            files,
            spec,
            out / "cache" / key,
            views,
            settings.batch_size,
            augmentation(settings.seed, settings.tray_augmentation),
            shas,
            front_key,
            reuse,
        )
    timing["feature_cache_photos"] = int(offsets[-1])

    y, rows = targets(split, labels)
    weights = photo_weights(split, settings.field_weight)
    first_view = offsets[:-1]

    pool = model.get_layer("pool").output
    head = keras.Model(pool, model.output)
    train = rows["train"]
    with stage(out, timing, "head_s"):
        set_trainable(model, 0)
        compile_for(head, settings.head_lr, settings.label_smoothing)
        fit: dict = {}
        if not phase_file(out, "head").exists():
            # Phase 1 sees every cached view of every training photo once per epoch, pooled.
            cut = cut_layer_name(model, settings.tail_blocks)
            pairs = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in train])
            y_train = np.repeat(y[train], views[train])
            w_train = np.repeat(weights[train], views[train])
            val_pooled = pooled_features(model, cut, acts, first_view[rows["val"]])
            fit = {
                "x": pooled_features(model, cut, acts, pairs),
                "y": y_train,
                "sample_weight": w_train
                * label_weights(y_train, len(labels), settings.class_weighting)[y_train],
                "validation_data": (val_pooled, y[rows["val"]]),
            }
        run_phase(
            model,
            out,
            "head",
            head,
            patience=5,
            epochs=settings.head_epochs,
            batch_size=settings.batch_size,
            shuffle=True,
            verbose=2,
            **fit,
        )

    if settings.tail_blocks > 0 and settings.finetune_epochs > 0:
        with stage(out, timing, "finetune_s"):
            set_trainable(model, settings.tail_blocks)
            compile_for(tail, settings.finetune_lr, settings.label_smoothing)
            repeats = epoch_repeats(views, settings.views)
            batches = CachedBatches(acts, offsets, views, repeats, train, y, weights, len(labels), settings)
            run_phase(
                model,
                out,
                "finetune",
                tail,
                patience=2,
                x=batches,
                validation_data=(np.asarray(acts[first_view[rows["val"]]]), y[rows["val"]]),
                epochs=settings.finetune_epochs,
                verbose=1,
            )
    return timing


def train_full(model, split: Split, labels: list[str], settings: TrainSettings, out: Path):
    """The workstation path: photos through tf.data with full augmentation, two phases."""
    import tensorflow as tf

    from host_training.model import set_trainable

    spec = InputSpec(settings.image_size, settings.image_size)
    y, rows = targets(split, labels)
    # A small label's photos are repeated (each time through the random augmentation), as in cached mode.
    repeats = epoch_repeats(photo_views(split, settings), settings.views)
    train = np.repeat(rows["train"], repeats[rows["train"]])
    timing: dict[str, float] = {}
    with stage(out, timing, "load_s"):
        pixels = {
            s: np.concatenate(
                list(prepared_batches([split.file(split.photos[i]) for i in rows[s]], spec, 256))
            )
            for s in ("train", "val")
        }
    # pixels["train"] holds rows["train"] in order; repeat its rows as ``train`` repeats the photos
    train_pixels = pixels["train"][np.repeat(np.arange(len(rows["train"])), repeats[rows["train"]])]
    w = label_weights(y[train], len(labels), settings.class_weighting)[y[train]]
    w = w * photo_weights(split, settings.field_weight)[train]
    augment = augmentation(settings.seed, settings.tray_augmentation)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_pixels, y[train], w))
        .shuffle(4096, seed=settings.seed)
        .batch(settings.batch_size)
        .map(
            lambda x, t, sw: (augment(tf.cast(x, tf.float32), training=True), t, sw),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((pixels["val"], y[rows["val"]])).batch(settings.batch_size)
    phases = [("head", 0, settings.head_epochs, settings.head_lr, 5)]
    if settings.finetune_epochs > 0 and settings.tail_blocks != 0:
        blocks = None if settings.tail_blocks < 0 else settings.tail_blocks
        phases.append(("finetune", blocks, settings.finetune_epochs, settings.finetune_lr, 3))
    for phase, blocks, epochs, lr, patience in phases:
        with stage(out, timing, f"{phase}_s"):
            set_trainable(model, blocks)
            compile_for(model, lr, settings.label_smoothing)
            run_phase(
                model,
                out,
                phase,
                model,
                patience,
                x=train_ds,
                validation_data=val_ds,
                epochs=epochs,
                shuffle=False,  # train_ds shuffles itself
                verbose=1,
            )
    return timing


def distribution_strategy(mode: str):
    """Mixed precision on GPUs that support it; MirroredStrategy across several GPUs."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus and mode == "full":
        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fit_calibration(
    classifier: Classifier, split: Split, labels: list[str], taxonomy: Taxonomy, settings: TrainSettings
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """The temperature of the int8 model, fitted on its own val probabilities (as the bin computes them).

    Returns model.json's ``calibration`` block, the val scores before and after (for the report) and the
    calibrated val probabilities (the OOD threshold is fitted on them, see :func:`fit_unknown`).
    Fitted on val, never on test, so the test figures stay an honest measure of it.
    """
    spec = InputSpec(settings.image_size, settings.image_size)
    val = split.subset("val")
    probs = []
    with tqdm(total=len(val), desc="fitting the temperature on val", unit="photo", dynamic_ncols=True) as bar:
        for pixels in prepared_batches([split.file(p) for p in val], spec, 64):
            probs.append(predict_int8(classifier, pixels, bar.update, uncalibrated=True))
    raw = np.concatenate(probs)
    truth = [p.label for p in val]
    true_idx = np.array([labels.index(label) for label in truth])
    # rounded first: the T written to model.json is the T every figure below is computed with
    temperature = round(fit_temperature(raw, true_idx), 4)
    if not T_RANGE[0] * 1.01 < temperature < T_RANGE[1] * 0.99:
        log.warning(
            "the temperature %.4g is at the edge of its search range %s: %d val photos are too few "
            "(or all right) to calibrate on",
            temperature,
            T_RANGE,
            len(val),
        )
    scores = {
        "before": calibration_scores(raw, truth, labels, taxonomy),
        "after": calibration_scores(calibrated(raw, temperature), truth, labels, taxonomy),
    }
    block = {
        "temperature": temperature,
        "method": "temperature scaling of the int8 model's probabilities: softmax(log(p) / temperature)",
        "fitted_on": "val",
        "photos": len(val),
        "ece_bins": ECE_BINS,
        "val_ece": {
            level: {when: round(scores[when][level]["ece"], 5) for when in ("before", "after")}
            for level in ("item", "bin")
        },
        "val_nll": {
            "before": round(negative_log_likelihood(raw, true_idx), 5),
            "after": round(negative_log_likelihood(raw, true_idx, temperature), 5),
        },
    }
    log.info(
        "temperature %.4g fitted on %d val photos: item ECE %.4f -> %.4f",
        temperature,
        len(val),
        block["val_ece"]["item"]["before"],
        block["val_ece"]["item"]["after"],
    )
    return block, scores, calibrated(raw, temperature)


def fit_unknown(
    probs: np.ndarray, split: Split, labels: list[str], taxonomy: Taxonomy, settings: TrainSettings
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """model.json's ``ood`` block (host_training/ood_fit.py) from the calibrated int8 val probabilities,
    and its account for the report; None when ``ood_max_held`` is 0 or val has no waste photo."""
    if not settings.ood_max_held:
        log.info("ood_max_held is 0: no ood block, no item is held as unknown")
        return None
    val = split.subset("val")
    fitted = fit_ood(
        probs,
        [p.label for p in val],
        [split.source_name(p) for p in val],
        labels,
        taxonomy,
        settings.ood_max_held,
    )
    if fitted is None:
        log.warning("no waste photos in the val split: no ood block")
        return None
    block, account = fitted
    log.info(
        "ood: %s below %.4g is unknown (at most %.0f%% of each folder's val waste held): %s",
        block["score"],
        block["threshold"],
        100 * settings.ood_max_held,
        block["chosen_by"],
    )
    return block, account


def evaluate(
    model, bundle_dir: Path, split: Split, labels: list[str], taxonomy: Taxonomy, settings: TrainSettings
) -> dict[str, Any]:
    """Float Keras and int8 LiteRT on the same prepared test photos, both at the bundle's temperature."""
    import tensorflow as tf

    spec = InputSpec(settings.image_size, settings.image_size)
    test = split.subset("test")
    true = np.array([labels.index(p.label) for p in test])
    classifier = Classifier(load_bundle(bundle_dir, taxonomy), threads=settings.threads)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    float_raw, int8_raw = [], []
    with tqdm(total=len(test), desc="testing float and int8", unit="photo", dynamic_ncols=True) as bar:
        for pixels in prepared_batches([split.file(p) for p in test], spec, 64):
            float_raw.append(call(tf.constant(pixels, tf.float32)).numpy())
            int8_raw.append(predict_int8(classifier, pixels, bar.update, uncalibrated=True))
    float_raw, int8_raw = np.concatenate(float_raw), np.concatenate(int8_raw)
    # int8 as the bin computes it; float at the same temperature, so that the two compare
    float_probs, int8_probs = calibrated(float_raw, classifier.temperature), classifier.calibrate(int8_raw)

    np.savez_compressed(
        bundle_dir.parent / "test_predictions.npz",
        float=float_probs,
        int8=int8_probs,
        float_uncalibrated=float_raw,
        int8_uncalibrated=int8_raw,
    )

    truth = [p.label for p in test]
    result: dict[str, Any] = {"split": "test", "n": len(test), "runtime": classifier.runtime}
    result["calibration"] = {
        "temperature": classifier.temperature,
        "test": {
            name: {
                "before": calibration_scores(raw, truth, labels, taxonomy),
                "after": calibration_scores(probs, truth, labels, taxonomy),
            }
            for name, raw, probs in (("float", float_raw, float_probs), ("int8", int8_raw, int8_probs))
        },
    }
    for name, probs in (("float", float_probs), ("int8", int8_probs)):
        result[name] = score_predictions(probs, truth, labels, taxonomy)
    result["parity"] = parity(float_probs, int8_probs, true)
    # Each folder on its own: one big folder's accuracy must not hide a small folder's failures.
    sources = np.array([split.source_name(p) for p in test])
    # the four-bin figures score every waste photo's bin as if none were held; what the bin would hold
    # (a never-tip label that wins or reaches its hold_above, or the ood rule) is counted beside them
    result["held"] = held_summary(int8_probs, truth, sources, labels, taxonomy, classifier.bundle.ood)
    result["folders"] = {}
    for folder in dict.fromkeys(sources):
        mine = np.nonzero(sources == folder)[0]
        result["folders"][folder] = {
            "n": len(mine),
            **{
                name: score_predictions(probs[mine], [truth[i] for i in mine], labels, taxonomy)
                for name, probs in (("float", float_probs), ("int8", int8_probs))
            },
        }
    return result


def preview_augmentation(split: Split, settings: TrainSettings, path: Path, photos: int = 6) -> None:
    """A few training photos beside augmented copies of them: what the model is shown, to look at."""
    if path.exists():
        return
    train = split.subset("train")
    chosen = train[:: max(1, len(train) // photos)][:photos]
    spec = InputSpec(settings.image_size, settings.image_size)
    pixels = load_prepared([split.file(p) for p in chosen], spec)
    preview(pixels, path, settings.seed, tray=settings.tray_augmentation)
    log.info("augmented copies of %d training photos: %s", len(chosen), path)


def check_labels(folders: list[str], taxonomy: Taxonomy, taxonomy_file: str) -> Taxonomy:
    """The taxonomy to train for: ``taxonomy`` and the new items labelled in review folders with their bin.

    Labels the taxonomy does not map and no labelling page gave a bin are
    refused, before an hour of hashing and training.
    """
    taught: dict[str, str] = {}
    for folder in folders:
        if is_review_folder(folder):
            for label, bin_id in review_labels(folder).bins.items():
                if taxonomy.uncovered([label]) and label not in taught:
                    if bin_id not in taxonomy.bins:
                        raise SmartbinError(
                            f"review folder {folder}: new item {label!r} is labelled for bin {bin_id!r}, "
                            f"which taxonomy {taxonomy_file} does not have",
                            f"label it again with one of: {', '.join(taxonomy.bin_ids)} (smartbin review "
                            f"{folder})",
                        )
                    taught[label] = bin_id
        unknown = [label for label in taxonomy.uncovered(folder_labels(folder)) if label not in taught]
        if unknown:
            raise SmartbinError(
                f"label folders {unknown} in {folder} are not in taxonomy {taxonomy_file}",
                f"add each under 'items:' in {taxonomy_file} with its bin (one of "
                f"{', '.join(taxonomy.bin_ids)}), e.g. '{unknown[0]}: {taxonomy.default_bin}', "
                "or list it under 'ignore:'",
            )
    photographed = {label for folder in folders for label in folder_labels(folder)} | set(taught)
    missing = taxonomy.never_tip_missing(photographed)
    if missing:
        log.warning(
            "taxonomy %s never tips %s, but no folder has photos of them: this model will not know them, "
            "and its bundle holds only what it knows (add photos of them, e.g. ../shared/datasets/not-waste)",
            taxonomy_file,
            ", ".join(missing),
        )
        taxonomy = taxonomy.holding_only(photographed)
    if not taught:
        return taxonomy
    log.info("new items from review folders: %s", ", ".join(f"{k} ({v})" for k, v in sorted(taught.items())))
    return dataclasses.replace(
        taxonomy.with_items(taught),
        description=f"{taxonomy.description}; taught from review folders: {', '.join(sorted(taught))}",
    )


def write_taxonomy(taxonomy: Taxonomy, path: Path) -> None:
    """The taxonomy a model was trained for, as a file ``model.taxonomy`` can point at."""
    text = yaml.safe_dump(taxonomy.to_dict(), allow_unicode=True, sort_keys=False)
    header = "# The taxonomy this model was trained for, written by smartbin-train.\n"
    path.write_text(header + text, encoding="utf-8")


def tool_versions() -> dict[str, str]:
    import tensorflow as tf

    return {
        "smartbin": edge.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def default_model_id(settings: TrainSettings) -> str:
    data = "+".join(Path(d).name for d in settings.data)
    return f"{data}-mnv2-{dt.date.today():%Y%m%d}"


def run(settings: TrainSettings) -> Path:
    """Train, evaluate, quantise and export; returns the bundle folder."""
    from host_training import report
    from host_training.model import build_classifier, resolve_weights

    if not settings.data:
        raise SmartbinError("no training data given", "pass --data FOLDER (one sub-folder per label)")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, settings)
    taxonomy = check_labels(settings.data, load_taxonomy(settings.taxonomy), settings.taxonomy)
    if settings.base_run and not Path(settings.base_run, "cache").is_dir():
        raise SmartbinError(
            f"base run {settings.base_run} has no cached features (no cache/ folder)",
            "give the run folder of an earlier cached-mode run (its --out), or leave --base-run out",
        )
    weights = resolve_weights(settings.weights)
    timing: dict[str, float] = {}
    with stage(out, timing, "split_s"):
        split = prepare_split(settings, out)
    labels = split.labels
    for name in SPLITS:
        if not split.subset(name):
            raise SmartbinError(
                f"the {name} split is empty ({len(split.photos)} photos in all)",
                "add photos: each split needs at least one near-duplicate group",
            )
    export_subset(split, "test", out / "test_split")
    log.info("split: %s", {s: sum(c.values()) for s, c in split.counts().items()})
    preview_augmentation(split, settings, out / "augmented_views.png")

    keras.utils.set_random_seed(settings.seed)
    strategy = distribution_strategy(settings.mode)
    with strategy.scope():
        model = build_classifier(len(labels), weights, settings.image_size, settings.dropout)
        trainer = train_cached if settings.mode == "cached" else train_full
        timing.update(trainer(model, split, labels, settings, out))

    keras.mixed_precision.set_global_policy("float32")
    spec = InputSpec(settings.image_size, settings.image_size)
    with stage(out, timing, "quantise_s"):
        train_photos = split.subset("train")
        step = max(1, len(train_photos) // settings.calibration_photos)
        calibration = load_prepared([split.file(p) for p in train_photos[::step]], spec)
        tflite = convert(model, calibration[: settings.calibration_photos])

    meta = bundle_meta(
        model_id=settings.model_id or default_model_id(settings),
        labels=labels,
        spec=spec,
        pixel_scaling="inside the model: x / 127.5 - 1 (MobileNetV2)",
        architecture="MobileNetV2 1.0 ImageNet + global average pooling + dropout "
        f"{settings.dropout} + softmax",
        taxonomy=taxonomy,
        data={
            "fingerprint": split.fingerprint(),
            "sources": [Path(s).name for s in split.sources],
            "provenance": {Path(s).name: report.provenance(Path(s)) for s in split.sources},
            "counts": split.counts(),
        },
        tools=tool_versions(),
    )
    candidate = out / "int8-candidate"
    write_bundle(candidate, tflite, meta)  # no calibration block yet: its classifier gives the model's own
    cls = Classifier(load_bundle(candidate), threads=settings.threads)
    details = cls.interpreter.get_input_details()[0], cls.interpreter.get_output_details()[0]
    meta["input"]["quantization"] = dict(zip(("scale", "zero_point"), map(float, details[0]["quantization"])))
    meta["output"]["quantization"] = dict(
        zip(("scale", "zero_point"), map(float, details[1]["quantization"]))
    )
    with stage(out, timing, "temperature_s"):
        meta["calibration"], val_scores, val_probs = fit_calibration(cls, split, labels, taxonomy, settings)
        unknown = fit_unknown(val_probs, split, labels, taxonomy, settings)
    if unknown is not None:
        meta["ood"] = unknown[0]
    write_bundle(candidate, tflite, meta)

    with stage(out, timing, "evaluate_s"):
        result = evaluate(model, candidate, split, labels, taxonomy, settings)
    if unknown is not None:
        test = split.subset("test")
        test_probs = np.load(out / "test_predictions.npz")["int8"]
        truth = [p.label for p in test]
        result["ood"] = {
            **unknown[1],
            "test": result["held"],
            "tradeoff": {
                **unknown[1]["tradeoff"],
                "test": tradeoff_curve(test_probs, truth, labels, taxonomy, unknown[0]["score"]),
            },
        }
    result["calibration"] = {
        **{k: v for k, v in meta["calibration"].items() if k not in ("val_ece", "val_nll")},
        **result["calibration"],
        "val": {"int8": val_scores},
    }
    timing["total_s"] = sum(v for k, v in timing.items() if k.endswith("_s"))
    meta["metrics"] = report.bundle_metrics(result)

    rep = report.write(out, settings, split, result, meta, timing)
    check = result["parity"]
    if parity_gate_failures(check, settings):
        raise ParityError(
            f"int8 model fails the parity check: top-1 agreement {check['agreement']:.2%} "
            f"(minimum {settings.min_agreement:.2%}), accuracy drop {check['drop_points']:.2f} "
            f"points (maximum {settings.max_int8_drop:.2f}); no bundle written, see {rep}",
            "calibrate on more photos (--calibration-photos), or relax --min-agreement / "
            "--max-int8-drop if you accept the loss",
        )
    bundle_dir = out / "bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    write_bundle(bundle_dir, tflite, meta)
    write_taxonomy(taxonomy, bundle_dir / "taxonomy.yaml")
    report.attach(out, bundle_dir, split)
    shutil.rmtree(candidate)
    if settings.float16:
        (out / "model_fp16.tflite").write_bytes(convert(model, calibration, "float16"))
    return bundle_dir
