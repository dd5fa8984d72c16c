"""MobileNetV2 + pooling + dropout + softmax, and the cut that makes CPU training practical.

The model takes 0..255 RGB pixels; MobileNetV2's ``x/127.5 - 1`` is its first
layer, so the exported TFLite model and the edge agree on the input by
construction.

For the cached path the model is cut in two at a block boundary: the frozen
*front* (computed once per photo and cached) and the trainable *tail* (the
last N inverted-residual blocks, the final 1x1 conv and the head).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from edge.errors import SmartbinError
from edge.paths import SHARED

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
LAST_BLOCK = 16


def weights_candidates() -> list[Path]:
    """Where the ImageNet weights are looked for, in order (no download: bins are offline)."""
    found = []
    if os.environ.get("SMARTBIN_WEIGHTS"):
        found.append(Path(os.environ["SMARTBIN_WEIGHTS"]))
    found += [
        SHARED / "weights" / WEIGHTS_FILE,
        Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / WEIGHTS_FILE,
    ]
    return found


def resolve_weights(path: str | Path | None) -> Path:
    if path:
        path = Path(path)
        if not path.is_file():
            raise SmartbinError(
                f"weights file {path} does not exist",
                f"pass --weights with the path of {WEIGHTS_FILE}",
            )
        return path
    for candidate in weights_candidates():
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in weights_candidates())
    raise SmartbinError(
        f"no ImageNet MobileNetV2 weights found (looked in: {looked})",
        f"pass --weights PATH/{WEIGHTS_FILE}, set SMARTBIN_WEIGHTS, or copy the file into ~/.keras/models/",
    )


def build_classifier(
    n_classes: int, weights: Path, image_size: int = 224, dropout: float = 0.5
) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="mobilenet_scaling")(inputs)
    try:
        backbone = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3),
            include_top=False,
            weights=str(weights),
            input_tensor=scaled,
        )
    except (ValueError, OSError) as exc:
        raise SmartbinError(
            f"weights file {weights} does not fit MobileNetV2 1.0 without top: {exc}",
            f"use {WEIGHTS_FILE} (width 1.0, no classifier head)",
        ) from None
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="items", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="smartbin_mobilenetv2")


def cut_layer_name(model: keras.Model, tail_blocks: int) -> str:
    """The layer whose output is cached: just before the last ``tail_blocks`` blocks.

    0 blocks cuts at the pooled features, so only the head trains.
    """
    if tail_blocks == 0:
        return "pool"
    if not 1 <= tail_blocks <= LAST_BLOCK:
        raise SmartbinError(
            f"tail_blocks = {tail_blocks} is out of range", f"use 0 (head only) to {LAST_BLOCK}"
        )
    names = [layer.name for layer in model.layers]
    first = names.index(f"block_{LAST_BLOCK + 1 - tail_blocks}_expand")
    return names[first - 1]


def split_model(model: keras.Model, tail_blocks: int) -> tuple[keras.Model, keras.Model]:
    """(front, tail) sharing the model's layers: training the tail trains the model."""
    cut = model.get_layer(cut_layer_name(model, tail_blocks)).output
    return keras.Model(model.input, cut, name="front"), keras.Model(cut, model.output, name="tail")


def set_trainable(model: keras.Model, tail_blocks: int | None) -> None:
    """Freeze all but the head and the last ``tail_blocks`` blocks (None: everything trains).

    BatchNorm layers always stay frozen, which in Keras 3 also runs them in
    inference mode: fine-tuning on small batches must not wreck their statistics.
    """
    trainable_from = None
    if tail_blocks is not None:
        names = [layer.name for layer in model.layers]
        trainable_from = names.index(cut_layer_name(model, tail_blocks)) + 1
    for i, layer in enumerate(model.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not is_bn and (trainable_from is None or i >= trainable_from)
