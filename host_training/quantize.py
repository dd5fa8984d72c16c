"""Full-integer TFLite conversion, calibrated on training photos prepared as the edge prepares them."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    from host_training.settings import TrainSettings


def convert(model, calibration: np.ndarray, kind: str = "int8") -> bytes:
    """``kind``: ``int8`` (uint8 in/out, int8 weights and activations), ``float16`` or ``float32``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative() -> Iterator[list[np.ndarray]]:
            for pixels in calibration:
                yield [pixels[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    # The converter prints a page of traced signatures to stdout; keep the console readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def parity(float_probs: np.ndarray, int8_probs: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and the accuracy drop (in points) from float to int8."""
    f_top, q_top = float_probs.argmax(1), int8_probs.argmax(1)
    float_acc, int8_acc = float((f_top == true).mean()), float((q_top == true).mean())
    return {
        "agreement": float((f_top == q_top).mean()),
        "float_accuracy": float_acc,
        "int8_accuracy": int8_acc,
        "drop_points": 100 * (float_acc - int8_acc),
    }


def parity_gate_failures(check: dict[str, float], settings: TrainSettings) -> list[str]:
    """The settings of the parity gate that ``check`` (from :func:`parity`) fails; empty when it passes.

    ``min_agreement``: int8 and float agree on the top item for fewer photos than this;
    ``max_int8_drop``: int8 loses more accuracy points than this. Exactly at a limit passes.
    """
    failures = []
    if check["agreement"] < settings.min_agreement:
        failures.append("min_agreement")
    if check["drop_points"] > settings.max_int8_drop:
        failures.append("max_int8_drop")
    return failures


def predict_int8(
    classifier, pixels: np.ndarray, progress: Callable | None = None, *, uncalibrated: bool = False
) -> np.ndarray:
    """The edge classifier's probabilities photo by photo; ``uncalibrated``: before the bundle's temperature
    (``classifier.calibrate`` then gives exactly what ``predict_tensor`` gives)."""
    predict = classifier.uncalibrated_tensor if uncalibrated else classifier.predict_tensor
    out = np.empty((len(pixels), len(classifier.labels)), dtype=np.float32)
    for i, image in enumerate(pixels):
        out[i] = predict(classifier.tensor_from_pixels(image))
        if progress:
            progress(1)
    return out
