"""One training run: split -> train (two phases) -> evaluate -> quantise -> report -> bundle.

Every stage leaves its result in the run folder, so a stopped run started
again with the same ``--out`` resumes: the split is reused, the feature cache
continues from its last batch, and each phase restarts from its last epoch
(Keras ``BackupAndRestore``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
from tqdm import tqdm

import edge
from edge.bundle import load_bundle, write_bundle
from edge.classifier import Classifier
from edge.errors import SmartbinError
from edge.evaluation import score_predictions
from edge.preprocess import InputSpec
from edge.taxonomy import Taxonomy, load_taxonomy
from host_training.data import SPLITS, Split, class_weights, export_subset, make_split
from host_training.features import cache_key, cached_activations, load_prepared, prepared_batches
from host_training.quantize import convert, parity, predict_int8
from host_training.settings import TrainSettings

log = logging.getLogger(__name__)


class ParityError(SmartbinError):
    """int8 strays too far from float: the run fails loudly and writes no bundle."""


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
    )
    split.save(path)
    return split


def keras_callbacks(out: Path, phase: str, patience: int) -> list:
    return [
        keras.callbacks.BackupAndRestore(str(out / "checkpoints" / phase)),
        keras.callbacks.CSVLogger(str(out / f"history_{phase}.csv"), append=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
    ]


def compile_for(model, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def run_phase(model, out: Path, phase: str, trainee, patience: int, **fit_args) -> None:
    """``trainee.fit(**fit_args)`` once; a finished phase is skipped on resume and its weights reloaded.

    ``trainee`` is the part being trained (head, tail or the whole model); it
    shares its layers with ``model``, whose weights are what is saved.
    """
    done = out / "checkpoints" / f"{phase}.weights.h5"
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


def targets(split: Split, labels: list[str], settings: TrainSettings):
    """Label index per photo, photo rows per split, and each photo's class weight."""
    y = np.array([labels.index(p.label) for p in split.photos])
    rows = {s: np.array([i for i, a in enumerate(split.assignment) if a == s]) for s in SPLITS}
    w = np.ones(len(y), np.float32)
    if settings.class_weighting:
        cw = class_weights(y[rows["train"]], len(labels))
        w = np.array([cw[c] for c in y], dtype=np.float32)
    return y, rows, w


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
    "views",
    "class_weighting",
    "seed",
    "taxonomy",
)


def check_resume(out: Path, settings: TrainSettings) -> None:
    """Refuse to resume checkpoints that were trained with other settings."""
    path = out / "settings.json"
    current = asdict(settings)
    if path.exists() and (out / "checkpoints").exists():
        before = json.loads(path.read_text())
        changed = [
            f"{k} {before.get(k)!r} -> {current[k]!r}" for k in TRAINING_KEYS if before.get(k) != current[k]
        ]
        if changed:
            raise SmartbinError(
                f"run folder {out} holds checkpoints trained with other settings ({', '.join(changed)})",
                "use another --out for these settings, or delete the folder's checkpoints/ to train again",
            )
    path.write_text(json.dumps(current, indent=2) + "\n")


class CachedBatches(keras.utils.PyDataset):
    """Cached activations in batches; each photo shows one random view per epoch."""

    def __init__(self, acts, rows, y, weights, batch_size: int, seed: int) -> None:
        super().__init__()
        self.acts, self.rows, self.y, self.w = acts, rows, y, weights
        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(self.rows)
        self.views = self.rng.integers(0, self.acts.shape[1], len(self.rows))

    def __getitem__(self, i: int):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        rows, views = self.order[sl], self.views[sl]
        sort = np.argsort(rows)  # memory-mapped rows read faster in order
        rows, views = rows[sort], views[sort]
        return self.acts[rows, views], self.y[rows], self.w[rows]


def train_cached(model, split: Split, labels: list[str], settings: TrainSettings, out: Path):
    from host_training.model import cut_layer_name, set_trainable, split_model

    spec = InputSpec(settings.image_size, settings.image_size)
    front, tail = split_model(model, settings.tail_blocks)
    views = settings.views
    key = cache_key(
        settings.image_size,
        cut_layer_name(model, settings.tail_blocks),
        spec.to_dict(),
        views,
        settings.seed,
        [p.sha256 for p in split.photos],
    )
    files = [split.file(p) for p in split.photos]
    t0 = time.monotonic()
    acts = cached_activations(
        front, files, spec, out / "cache" / key, views, settings.batch_size, augmentation(settings.seed)
    )
    timing = {"feature_cache_s": time.monotonic() - t0, "feature_cache_photos": len(files) * views}

    y, rows, w = targets(split, labels, settings)

    pool = model.get_layer("pool").output
    if settings.tail_blocks == 0:
        pooled = acts
    else:
        to_pool = keras.Model(model.get_layer(cut_layer_name(model, settings.tail_blocks)).output, pool)
        flat = acts.reshape(-1, *acts.shape[2:])
        pooled = to_pool.predict(flat, batch_size=256, verbose=0).reshape(len(files), views, -1)
    head = keras.Model(pool, model.output)

    t0 = time.monotonic()
    x_train = pooled[rows["train"]].reshape(-1, pooled.shape[-1])
    y_train = np.repeat(y[rows["train"]], views)
    w_train = np.repeat(w[rows["train"]], views)
    set_trainable(model, 0)
    compile_for(head, settings.head_lr)
    run_phase(
        model,
        out,
        "head",
        head,
        patience=5,
        x=x_train,
        y=y_train,
        sample_weight=w_train,
        validation_data=(pooled[rows["val"], 0], y[rows["val"]]),
        epochs=settings.head_epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=2,
    )
    timing["head_s"] = time.monotonic() - t0

    if settings.tail_blocks > 0 and settings.finetune_epochs > 0:
        t0 = time.monotonic()
        set_trainable(model, settings.tail_blocks)
        compile_for(tail, settings.finetune_lr)
        batches = CachedBatches(acts, rows["train"], y, w, settings.batch_size, settings.seed)
        run_phase(
            model,
            out,
            "finetune",
            tail,
            patience=2,
            x=batches,
            validation_data=(np.asarray(acts[rows["val"], 0]), y[rows["val"]]),
            epochs=settings.finetune_epochs,
            verbose=1,
        )
        timing["finetune_s"] = time.monotonic() - t0
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
    y, rows, w = targets(split, labels, settings)

    t0 = time.monotonic()
    pixels = {
        s: np.concatenate(list(prepared_batches([split.file(split.photos[i]) for i in rows[s]], spec, 256)))
        for s in ("train", "val")
    }
    timing = {"load_s": time.monotonic() - t0}
    augment = augmentation(settings.seed)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((pixels["train"], y[rows["train"]], w[rows["train"]]))
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
        t0 = time.monotonic()
        set_trainable(model, blocks)
        compile_for(model, lr)
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
        timing[f"{phase}_s"] = time.monotonic() - t0
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

    truth = [p.label for p in test]
    result: dict[str, Any] = {"split": "test", "n": len(test), "runtime": classifier.runtime}
    for name, probs in (("float", float_probs), ("int8", int8_probs)):
        result[name] = score_predictions(probs, truth, labels, taxonomy)
    result["parity"] = parity(float_probs, int8_probs, true)
    return result


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
    started = time.monotonic()
    taxonomy = load_taxonomy(settings.taxonomy)
    weights = resolve_weights(settings.weights)
    split = prepare_split(settings, out)
    labels = split.labels
    missing = taxonomy.uncovered(labels)
    if missing:
        raise SmartbinError(
            f"labels {missing} are not in taxonomy {settings.taxonomy}",
            "map each label to a bin under 'items:' (or list it under 'ignore:') before training",
        )
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
        timing = trainer(model, split, labels, settings, out)

    keras.mixed_precision.set_global_policy("float32")
    t0 = time.monotonic()
    spec = InputSpec(settings.image_size, settings.image_size)
    train_photos = split.subset("train")
    step = max(1, len(train_photos) // settings.calibration_photos)
    calibration = load_prepared([split.file(p) for p in train_photos[::step]], spec)
    tflite = convert(model, calibration[: settings.calibration_photos])
    timing["quantise_s"] = time.monotonic() - t0

    meta = {
        "model_id": settings.model_id or default_model_id(settings),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": labels,
        "input": {**spec.to_dict(), "dtype": "uint8", "value_range": [0, 255]},
        "preprocessing": {
            "steps": [
                "decode to BGR (OpenCV)",
                f"{spec.resize}",
                f"resize to {spec.width}x{spec.height} ({spec.interpolation})",
                "BGR to RGB",
            ],
            "pixel_scaling": "inside the model: x / 127.5 - 1 (MobileNetV2)",
        },
        "output": {"dtype": "uint8", "activation": "softmax"},
        "architecture": f"MobileNetV2 1.0 ImageNet + global average pooling + dropout "
        f"{settings.dropout} + softmax",
        "taxonomy": taxonomy.to_dict(),
        "data": {
            "fingerprint": split.fingerprint(),
            "sources": [Path(s).name for s in split.sources],
            "counts": split.counts(),
        },
        "tools": tool_versions(),
    }
    candidate = out / "int8-candidate"
    write_bundle(candidate, tflite, meta)
    cls = Classifier(load_bundle(candidate))
    details = cls.interpreter.get_input_details()[0], cls.interpreter.get_output_details()[0]
    meta["input"]["quantization"] = dict(zip(("scale", "zero_point"), map(float, details[0]["quantization"])))
    meta["output"]["quantization"] = dict(
        zip(("scale", "zero_point"), map(float, details[1]["quantization"]))
    )

    t0 = time.monotonic()
    result = evaluate(model, candidate, split, labels, taxonomy, settings)
    timing["evaluate_s"] = time.monotonic() - t0
    timing["total_s"] = time.monotonic() - started
    meta["metrics"] = report.bundle_metrics(result)

    rep = report.write(out, settings, split, result, meta, timing)
    check = result["parity"]
    if check["agreement"] < settings.min_agreement or check["drop_points"] > settings.max_int8_drop:
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
    report.attach(out, bundle_dir, split)
    shutil.rmtree(candidate)
    if settings.float16:
        (out / "model_fp16.tflite").write_bytes(convert(model, calibration, "float16"))
    return bundle_dir
