import numpy as np
import pytest

from edge.errors import SmartbinError
from edge.model.preprocess import InputSpec, center_square, dequantize, prepare, quantize


def test_center_crop_keeps_the_middle_square():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255
    assert center_square(frame).shape == (100, 100, 3)
    assert center_square(frame).min() == 255


def test_prepare_converts_bgr_to_rgb_and_resizes():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0] = 200  # blue in OpenCV's BGR
    out = prepare(frame, InputSpec(224, 224))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[..., 2].min() == 200 and out[..., 0].max() == 0
    bgr = prepare(frame, InputSpec(224, 224, color_order="BGR", resize="stretch"))
    assert bgr[..., 0].min() == 200


def test_prepare_refuses_grey_frames():
    with pytest.raises(SmartbinError, match="expected"):
        prepare(np.zeros((10, 10), np.uint8), InputSpec())


def test_quantize_follows_tflite_affine_rule():
    pixels = np.array([0, 100, 255], np.uint8)
    assert quantize(pixels, 1.0, 0, np.uint8) is pixels
    q = quantize(pixels, 2.0, -128, np.int8)
    assert q.tolist() == [-128, -78, 0]
    assert dequantize(q, 2.0, -128).tolist() == [0.0, 100.0, 256.0]
    assert quantize(pixels, 0.5, 0, np.uint8).tolist() == [0, 200, 255]  # clipped


def test_unknown_spec_values_are_refused():
    with pytest.raises(SmartbinError, match="resize"):
        InputSpec.from_dict({"resize": "zoom"})
    with pytest.raises(SmartbinError, match="colour"):
        InputSpec.from_dict({"color_order": "YUV"})
