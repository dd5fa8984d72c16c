"""Frame -> model input, identical on the workstation and on the bin.

The trainer calls :func:`prepare` on every photo, so the model only ever sees
what the edge will feed it. Pixel scaling (MobileNetV2's ``x/127.5 - 1``) is a
layer inside the model, so the bundle's input is plain 0..255 RGB pixels and
the quantisation parameters come from the model itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from edge.errors import SmartbinError

RESIZE_MODES = ("center_crop", "stretch")
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class InputSpec:
    """How a BGR frame becomes the model's input image."""

    width: int = 224
    height: int = 224
    color_order: str = "RGB"
    resize: str = "center_crop"
    interpolation: str = "area"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        spec = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if spec.color_order not in ("RGB", "BGR"):
            raise SmartbinError(f"unknown colour order {spec.color_order!r}", "use RGB or BGR")
        if spec.resize not in RESIZE_MODES:
            raise SmartbinError(f"unknown resize mode {spec.resize!r}", f"use one of {RESIZE_MODES}")
        if spec.interpolation not in INTERPOLATIONS:
            raise SmartbinError(
                f"unknown interpolation {spec.interpolation!r}", f"use one of {list(INTERPOLATIONS)}"
            )
        return spec


def center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def prepare(frame_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A BGR uint8 frame -> ``(height, width, 3)`` uint8 in the spec's colour order."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise SmartbinError(
            f"frame has shape {frame_bgr.shape}, expected (height, width, 3)",
            "give a colour image",
        )
    image = center_square(frame_bgr) if spec.resize == "center_crop" else frame_bgr
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(image, (spec.width, spec.height), interpolation=INTERPOLATIONS[spec.interpolation])
    if spec.color_order == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def quantize(pixels: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float (or uint8) pixel values -> the model's integer input, as TFLite defines it."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return pixels.astype(dtype)
    if scale == 1.0 and zero_point == 0 and pixels.dtype == dtype:
        return pixels
    info = np.iinfo(dtype)
    q = np.round(pixels.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if values.dtype.kind == "f" or scale == 0:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero_point) * scale
