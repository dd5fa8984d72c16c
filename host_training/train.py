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
from edge.model.classifier import Classifier
from edge.model.evaluation import score_predictions
from edge.model.preprocess import InputSpec
from edge.model.taxonomy import Taxonomy, load_taxonomy
from host_training.data import SPLITS, Split, class_weights, export_subset, make_split
from host_training.features import (
    cache_key,
    cached_activations,
    load_prepared,
    prepared_batches,
    view_offsets,
    weights_digest,
)
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


def prepare_split(settings: TrainSettings, out: Path) -> Split:
    path = out / "split.json"
    sources = [str(Path(d).resolve()) for d in settings.data]
    if path.exists():
        split = Split.load(path)
        if split.sources != sources:
            raise SmartbinError(
                f"run folder {out} holds a split of other data ({split.sources})",
                "use another --out for this data, or delete split.json to split again",
            )
        log.info("reusing the split in %s", path)
        return split
    split = make_split(
        [Path(s) for s in sources],
        tuple(settings.fractions),
        settings.seed,
        settings.phash_distance,
        settings.limit_per_class,
        settings.min_label_photos,
    )
    split.save(path)
    return split


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
    key = cache_key(
        settings.image_size,
        cut_layer_name(model, settings.tail_blocks),
        spec.to_dict(),
        views.tolist(),
        settings.seed,
        [p.sha256 for p in split.photos],
    )
    files = [split.file(p) for p in split.photos]
    shas = [p.sha256 for p in split.photos]
    front_key = cache_key(
        settings.image_size,
        cut_layer_name(model, settings.tail_blocks),
        spec.to_dict(),
        weights_digest(front),
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
            augmentation(settings.seed),
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
            if settings.tail_blocks == 0:
                pooled = acts
            else:
                cut = model.get_layer(cut_layer_name(model, settings.tail_blocks)).output
                pooled = keras.Model(cut, pool).predict(acts, batch_size=256, verbose=0)
            pairs = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in train])
            y_train = np.repeat(y[train], views[train])
            w_train = np.repeat(weights[train], views[train])
            fit = {
                "x": pooled[pairs],
                "y": y_train,
                "sample_weight": w_train
                * label_weights(y_train, len(labels), settings.class_weighting)[y_train],
                "validation_data": (pooled[first_view[rows["val"]]], y[rows["val"]]),
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


def augmentation(seed: int):
    """What a bin camera varies: position, angle, scale, light, colour, focus."""
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal_and_vertical", seed=seed),
            layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
            layers.RandomZoom((-0.2, 0.1), fill_mode="reflect", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
            layers.RandomSaturation((0.3, 0.7), value_range=(0, 255), seed=seed),
            layers.RandomGaussianBlur(factor=0.3, value_range=(0, 255), seed=seed),
        ],
        name="augment",
    )


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
    augment = augmentation(settings.seed)
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


def evaluate(
    model, bundle_dir: Path, split: Split, labels: list[str], taxonomy: Taxonomy, settings: TrainSettings
) -> dict[str, Any]:
    """Float Keras and int8 LiteRT on the same prepared test photos."""
    import tensorflow as tf

    spec = InputSpec(settings.image_size, settings.image_size)
    test = split.subset("test")
    true = np.array([labels.index(p.label) for p in test])
    classifier = Classifier(load_bundle(bundle_dir, taxonomy), threads=settings.threads)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    float_probs, int8_probs = [], []
    with tqdm(total=len(test), desc="testing float and int8", unit="photo", dynamic_ncols=True) as bar:
        for pixels in prepared_batches([split.file(p) for p in test], spec, 64):
            float_probs.append(call(tf.constant(pixels, tf.float32)).numpy())
            int8_probs.append(predict_int8(classifier, pixels, bar.update))
    float_probs, int8_probs = np.concatenate(float_probs), np.concatenate(int8_probs)

    np.savez_compressed(bundle_dir.parent / "test_predictions.npz", float=float_probs, int8=int8_probs)

    truth = [p.label for p in test]
    result: dict[str, Any] = {"split": "test", "n": len(test), "runtime": classifier.runtime}
    for name, probs in (("float", float_probs), ("int8", int8_probs)):
        result[name] = score_predictions(probs, truth, labels, taxonomy)
    result["parity"] = parity(float_probs, int8_probs, true)
    # Each folder on its own: one big folder's accuracy must not hide a small folder's failures.
    sources = np.array([split.source_name(p) for p in test])
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
    write_bundle(candidate, tflite, meta)
    cls = Classifier(load_bundle(candidate))
    details = cls.interpreter.get_input_details()[0], cls.interpreter.get_output_details()[0]
    meta["input"]["quantization"] = dict(zip(("scale", "zero_point"), map(float, details[0]["quantization"])))
    meta["output"]["quantization"] = dict(
        zip(("scale", "zero_point"), map(float, details[1]["quantization"]))
    )

    with stage(out, timing, "evaluate_s"):
        result = evaluate(model, candidate, split, labels, taxonomy, settings)
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
