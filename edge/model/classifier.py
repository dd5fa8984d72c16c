"""Classifier: a bundle's TFLite model behind a pure ``frame -> item probabilities``.

The interpreter is LiteRT (``ai-edge-litert``); ``tflite-runtime`` serves old
32-bit images where LiteRT has no wheel, and ``tf.lite`` is the last resort on
a workstation. TensorFlow is never imported when either runtime is present.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge.config import ModelConfig
from edge.errors import SmartbinError
from edge.model.bundle import Bundle, load_bundle
from edge.model.calibration import calibrated
from edge.model.preprocess import dequantize, prepare, quantize
from edge.model.taxonomy import load_taxonomy
from edge.paths import DEFAULT_BUNDLE

RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


def interpreter_class() -> tuple[Any, str]:
    """The first TFLite interpreter class that imports, and its package name."""
    for module_name, package in RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "Interpreter"):  # TensorFlow >= 2.20 moved it out, to LiteRT
            return module.Interpreter, package
    raise SmartbinError(
        "no TFLite interpreter is installed",
        "pip install 'smartbin[edge]' (ai-edge-litert); on 32-bit Pi OS use "
        "pip install tflite-runtime 'numpy<2'",
    )


@contextlib.contextmanager
def runtime_info_hidden() -> Iterator[None]:
    """Leave out the runtime's own ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``

    LiteRT and tflite-runtime print it from C++ straight to file descriptor 2, past Python and its
    logging, so fd 2 goes to a temporary file meanwhile; what else lands there is written back after.
    Shown with debug logging (``smartbin -v``).
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to guard
        yield
        return
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                caught.seek(0)
                kept = [line for line in caught.read().splitlines(True) if not line.startswith(b"INFO: ")]
                os.write(2, b"".join(kept))
    finally:
        os.close(saved)


def open_interpreter(model_path: Path, threads: int | None = None) -> tuple[Any, str]:
    cls, package = interpreter_class()
    try:
        with runtime_info_hidden():
            interpreter = cls(model_path=str(model_path), num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise SmartbinError(
            f"{package} cannot load {model_path}: {exc}",
            "the model file is damaged or was built for another runtime; export it again",
        ) from None
    return interpreter, package


class Classifier:
    """Item probabilities for one frame, prepared exactly as the trainer prepared photos."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        self.bundle = bundle
        self.labels = bundle.labels
        self.spec = bundle.input_spec
        self.temperature = bundle.temperature
        self.interpreter, self.runtime = open_interpreter(bundle.model_path, threads)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self._in_q = inp["quantization"]
        self._out_q = out["quantization"]
        expected = (1, self.spec.height, self.spec.width, 3)
        if tuple(inp["shape"]) != expected:
            raise SmartbinError(
                f"model {bundle.model_path} takes input {tuple(inp['shape'])}, but model.json "
                f"says {expected}",
                "the bundle's files do not belong together; export it again",
            )
        if int(out["shape"][-1]) != len(self.labels):
            raise SmartbinError(
                f"model {bundle.model_path} has {out['shape'][-1]} outputs for {len(self.labels)} labels",
                "the bundle's files do not belong together; export it again",
            )

    def input_tensor(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The exact tensor the model is fed for this frame (batch of one)."""
        return self.tensor_from_pixels(prepare(frame_bgr, self.spec))

    def tensor_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Prepared ``(h, w, 3)`` uint8 pixels -> the model's input tensor."""
        scale, zero_point = self._in_q
        return quantize(pixels, scale, zero_point, self.input_dtype)[np.newaxis]

    def uncalibrated_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """The model's own (dequantised) probabilities, before the bundle's temperature."""
        self.interpreter.set_tensor(self._in_index, tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._out_index)[0]
        return dequantize(raw, *self._out_q)

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The bundle's temperature applied: the one place any runtime's output is calibrated."""
        return calibrated(probabilities, self.temperature)

    def predict_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Calibrated item probabilities for a tensor from :meth:`tensor_from_pixels`."""
        return self.calibrate(self.uncalibrated_tensor(tensor))

    def predict(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Item probabilities, in the order of ``self.labels``."""
        return self.predict_tensor(self.input_tensor(frame_bgr))


def load_classifier(
    cfg: ModelConfig, bundle: str | None = None, taxonomy: str | None = None, threads: int | None = None
) -> Classifier:
    """The configured bundle (or the shipped default), checked against the configured taxonomy."""
    taxonomy = taxonomy or cfg.taxonomy
    chosen = load_taxonomy(taxonomy) if taxonomy else None
    return Classifier(
        load_bundle(bundle or cfg.bundle or DEFAULT_BUNDLE, chosen), threads=threads or cfg.threads
    )
