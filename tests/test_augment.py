"""The tray-camera augmentation: an item on a plain photo background is laid on a tray, smaller."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras", reason="training extra not installed: pip install 'smartbin[train]'")

from host_training.augment import (  # noqa: E402
    ColourCast,
    JpegQuality,
    TrayScene,
    augmentation,
    object_mask,
    preview,
)


def studio_photo(size: int = 64, background: int = 245) -> np.ndarray:
    """A red square on a plain white background, as most web photos of an item are."""
    photo = np.full((1, size, size, 3), background, np.float32)
    photo[0, 20:44, 20:44] = (200, 30, 30)
    return photo


def test_a_plain_background_is_keyed_out_and_the_item_kept():
    mask = np.asarray(object_mask(studio_photo()))[0, ..., 0]
    assert mask[32, 32] > 0.99
    assert mask[5, 5] < 0.01


def test_a_busy_background_keeps_the_whole_photo():
    noisy = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    assert np.asarray(object_mask(noisy)).min() == pytest.approx(1.0)


def test_the_tray_scene_lays_the_item_smaller_on_a_tray_and_leaves_no_white_card():
    scene = np.asarray(TrayScene(rate=1.0, scale=(0.5, 0.5), seed=3)(studio_photo(), training=True))[0]
    red = (scene[..., 0] > 150) & (scene[..., 1] < 90)
    assert 0 < red.sum() < 24 * 24  # the item is there, and smaller
    white = (scene > 235).all(axis=-1)
    assert white.sum() < 20  # the studio background did not come along


def test_the_tray_scene_at_rate_zero_and_at_inference_changes_nothing():
    photo = studio_photo()
    assert np.array_equal(np.asarray(TrayScene(rate=0.0, seed=1)(photo, training=True)), photo)
    assert np.array_equal(np.asarray(TrayScene(rate=1.0, seed=1)(photo, training=False)), photo)


def test_colour_cast_and_jpeg_stay_in_range_and_keep_the_shape():
    photo = studio_photo()
    for layer in (ColourCast(seed=0), JpegQuality(seed=0)):
        out = np.asarray(layer(photo, training=True))
        assert out.shape == photo.shape
        assert out.min() >= 0 and out.max() <= 255


def test_the_pipeline_runs_in_tf_data_as_the_full_mode_uses_it():
    import tensorflow as tf

    augment = augmentation(0)
    photos = np.repeat(studio_photo().astype(np.uint8), 4, axis=0)
    batches = tf.data.Dataset.from_tensor_slices(photos).batch(2)
    out = [b.numpy() for b in batches.map(lambda x: augment(tf.cast(x, tf.float32), training=True))]
    assert [b.shape for b in out] == [(2, 64, 64, 3)] * 2
    assert not np.array_equal(out[0][0], photos[0])


def test_the_preview_is_a_picture(tmp_path):
    path = preview(studio_photo().astype(np.uint8), tmp_path / "views.png", copies=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_tray_the_pipeline_is_the_shipped_models_recipe():
    names = [type(layer).__name__ for layer in augmentation(0, tray=False).layers]
    assert names == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomBrightness",
        "RandomContrast",
        "RandomSaturation",
        "RandomGaussianBlur",
    ]
    assert {"TrayScene", "ColourCast", "JpegQuality"} <= {type(x).__name__ for x in augmentation(0).layers}


def test_a_run_resumed_with_the_tray_augmentation_switched_is_refused(tmp_path):
    import dataclasses

    from edge.errors import SmartbinError
    from host_training.settings import load_settings
    from host_training.train import check_resume

    before = load_settings("household34", {"data": ["photos"], "out": str(tmp_path)})
    check_resume(tmp_path, before)
    (tmp_path / "checkpoints").mkdir()
    check_resume(tmp_path, before)  # the same settings resume
    with pytest.raises(SmartbinError, match="tray_augmentation False -> True"):
        check_resume(tmp_path, dataclasses.replace(before, tray_augmentation=True))
