"""Augmentation for a bin's tray camera: the training photos are web photos, the bin sees a tray.

A web photo is a single object that fills the frame, lit by a studio or a
flash, saved once at high quality. A bin's camera sees the item smaller, lying
somewhere on a plain tray, lit from one side by the room, through a cheap lens
with its own white balance, and its frames are compressed. The layers here
draw those differences; :func:`augmentation` is the one pipeline both training
modes use (the cached mode's augmented copies and the full mode's batches).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# Part of every feature cache's key: a cache made with other augmented copies is never reused.
AUGMENTATION_VERSION = 3

# Tray tones a bin is built with (RGB, 0-255): light and mid greys, off-white, beige, dark plastic.
TRAY_TONES = np.array(
    [[200, 200, 196], [150, 152, 150], [232, 228, 218], [196, 178, 150], [70, 72, 76], [118, 110, 100]],
    dtype=np.float32,
)


class TrayScene(keras.layers.Layer):
    """With probability ``rate``, the photo shrunk to ``scale`` and laid at a random place on a tray.

    The tray is one of :data:`TRAY_TONES`, varied a little, lit by a linear
    gradient (a lamp or a window on one side) and with faint sensor noise.
    """

    def __init__(self, rate: float = 0.5, scale=(0.45, 0.9), seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate, self.scale = rate, tuple(scale)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        images = ops.cast(images, "float32")
        shape = ops.shape(images)
        n, h, w = shape[0], shape[1], shape[2]
        hf, wf = ops.cast(h, "float32"), ops.cast(w, "float32")
        seed = self.seed_generator
        s = keras.random.uniform((n,), self.scale[0], self.scale[1], seed=seed)
        ox = keras.random.uniform((n,), 0.0, 1.0, seed=seed) * wf * (1.0 - s)
        oy = keras.random.uniform((n,), 0.0, 1.0, seed=seed) * hf * (1.0 - s)
        zeros = ops.zeros_like(s)
        # output (x, y) reads input ((x - ox) / s, (y - oy) / s): the photo shrunk, its corner at (ox, oy)
        transform = ops.stack([1 / s, zeros, -ox / s, zeros, 1 / s, -oy / s, zeros, zeros], axis=1)
        placed = ops.image.affine_transform(images, transform, fill_mode="constant", fill_value=0.0)
        mask = ops.image.affine_transform(
            object_mask(images), transform, fill_mode="constant", fill_value=0.0
        )
        tone = ops.take(
            ops.convert_to_tensor(TRAY_TONES), keras.random.randint((n,), 0, len(TRAY_TONES), seed=seed), 0
        )
        tone = tone * keras.random.uniform((n, 1), 0.85, 1.15, seed=seed)
        angle = keras.random.uniform((n,), 0.0, 2 * np.pi, seed=seed)
        strength = keras.random.uniform((n,), 0.0, 0.35, seed=seed)
        ys = ops.reshape(ops.linspace(-0.5, 0.5, h), (1, -1, 1))
        xs = ops.reshape(ops.linspace(-0.5, 0.5, w), (1, 1, -1))
        light = 1.0 + strength[:, None, None] * (
            ops.cos(angle)[:, None, None] * xs + ops.sin(angle)[:, None, None] * ys
        )
        tray = tone[:, None, None, :] * light[..., None]
        tray = tray + keras.random.normal(ops.shape(images), stddev=3.0, seed=seed)
        scene = ops.clip(placed * mask + tray * (1.0 - mask), 0.0, 255.0)
        use = ops.cast(keras.random.uniform((n, 1, 1, 1), seed=seed) < self.rate, "float32")
        return scene * use + images * (1.0 - use)

    def compute_output_shape(self, input_shape):
        return input_shape


def object_mask(images, border: int = 4, plain: float = 0.7, margin: float = 40.0):
    """Where the object is, for photos on a plain studio background; the whole photo otherwise.

    The background's colour is the median of the photo's outer ``border``
    pixels (an item touching the edge does not move it). When at least
    ``plain`` of those pixels lie within ``margin`` of it, the background is
    plain: pixels that near it are background, with a soft edge, so the item
    lies on the tray and not on a white card. A busy border keeps the whole photo.
    """
    n = ops.shape(images)[0]
    edge = ops.concatenate(
        [
            ops.reshape(images[:, :border], (n, -1, 3)),
            ops.reshape(images[:, -border:], (n, -1, 3)),
            ops.reshape(images[:, :, :border], (n, -1, 3)),
            ops.reshape(images[:, :, -border:], (n, -1, 3)),
        ],
        axis=1,
    )
    colour = ops.median(edge, axis=1)
    near = ops.sqrt(ops.sum(ops.square(edge - colour[:, None, :]), axis=-1)) < margin
    is_plain = ops.mean(ops.cast(near, "float32"), axis=1) >= plain
    distance = ops.sqrt(ops.sum(ops.square(images - colour[:, None, None, :]), axis=-1, keepdims=True))
    keyed = ops.sigmoid((distance - margin) / 6.0)
    keep_all = 1.0 - ops.cast(is_plain, "float32")[:, None, None, None]
    return keyed * (1.0 - keep_all) + keep_all


class ColourCast(keras.layers.Layer):
    """Each colour channel scaled by its own gain in ``1 ± factor``: a camera's white balance."""

    def __init__(self, factor: float = 0.12, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        n = ops.shape(images)[0]
        gains = keras.random.uniform((n, 1, 1, 3), 1 - self.factor, 1 + self.factor, seed=self.seed_generator)
        return ops.clip(ops.cast(images, "float32") * gains, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape


class JpegQuality(keras.layers.Layer):
    """Each photo compressed again as a JPEG of quality ``low``..``high``: a camera's frames."""

    def __init__(self, low: int = 40, high: int = 95, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.low, self.high, self.seed = low, high, seed or 0

    def call(self, images, training: bool = True):
        if not training:
            return images
        pixels = tf.cast(tf.clip_by_value(images, 0.0, 255.0), tf.uint8)
        seeds = tf.random.uniform((tf.shape(pixels)[0], 2), 0, 2**31 - 1, dtype=tf.int32, seed=self.seed)
        again = tf.map_fn(
            lambda args: tf.image.stateless_random_jpeg_quality(args[0], self.low, self.high, args[1]),
            (pixels, seeds),
            fn_output_signature=tf.uint8,
        )
        return tf.cast(again, tf.float32)

    def compute_output_shape(self, input_shape):
        return input_shape


def augmentation(seed: int, tray: bool = True) -> keras.Sequential:
    """What a bin camera varies: position, angle, scale, light, colour, focus; with ``tray``, also the
    item laid smaller on a tray, a white-balance cast and JPEG compression (the web photo made a frame)."""
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal_and_vertical", seed=seed),
            *([TrayScene(seed=seed)] if tray else []),  # before the turns, which blur a plain border
            layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
            layers.RandomZoom((-0.2, 0.1), fill_mode="reflect", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
            layers.RandomSaturation((0.3, 0.7), value_range=(0, 255), seed=seed),
            *([ColourCast(seed=seed)] if tray else []),
            layers.RandomGaussianBlur(factor=0.3, value_range=(0, 255), seed=seed),
            *([JpegQuality(seed=seed)] if tray else []),
        ],
        name="augment",
    )


def preview(pixels: np.ndarray, path: Path, seed: int = 0, copies: int = 5, tray: bool = True) -> Path:
    """A grid of photos (rows) and augmented copies of each (columns), to look at before training on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    augment = augmentation(seed, tray)
    rows = len(pixels)
    fig, axes = plt.subplots(rows, copies + 1, figsize=(1.6 * (copies + 1), 1.6 * rows), squeeze=False)
    for r, photo in enumerate(pixels):
        views = [photo] + [
            np.asarray(augment(photo[None].astype(np.float32), training=True))[0] for _ in range(copies)
        ]
        for c, view in enumerate(views):
            axes[r][c].imshow(np.clip(view, 0, 255).astype(np.uint8))
            axes[r][c].axis("off")
        axes[r][0].set_title("photo" if r == 0 else "", fontsize=8)
    fig.suptitle("Training photos and augmented copies (tray, light, colour, blur, JPEG)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
