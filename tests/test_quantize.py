"""The TFLite conversion of a trained model, and the int8 predictions the parity gate compares with float.

A tiny Keras model stands in for MobileNetV2: what is checked is what each kind of conversion gives the
bin's runtime (the tensor types it reads and writes), not how well the model classifies."""

import numpy as np
import pytest

from edge.model.bundle import load_bundle
from edge.model.classifier import Classifier, open_interpreter
from host_training.quantize import convert, predict_int8
from tests.conftest import SHIPPED


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3)).astype(np.float32)


def tensor_types(tflite: bytes, tmp_path) -> tuple[str, str, set[str]]:
    """The input's and the output's dtype, and the dtypes of all the model's tensors."""
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite)
    interpreter, _ = open_interpreter(path)
    dtype = lambda detail: np.dtype(detail["dtype"]).name  # noqa: E731
    return (
        dtype(interpreter.get_input_details()[0]),
        dtype(interpreter.get_output_details()[0]),
        {dtype(t) for t in interpreter.get_tensor_details()},
    )


def test_int8_takes_and_gives_uint8_and_computes_in_int8(tiny_model, tmp_path):
    tflite = convert(tiny_model, pixels(8))
    assert convert(tiny_model, pixels(8), "int8") == tflite  # the default kind
    inp, out, inside = tensor_types(tflite, tmp_path)
    assert (inp, out) == ("uint8", "uint8")
    assert "int8" in inside and "float32" not in inside and "float16" not in inside


def test_float16_keeps_float_input_and_output_with_half_precision_weights(tiny_model, tmp_path):
    inp, out, inside = tensor_types(convert(tiny_model, pixels(8), "float16"), tmp_path)
    assert (inp, out) == ("float32", "float32")
    assert "float16" in inside and not {"int8", "uint8"} & inside


def test_float32_is_the_keras_model_as_it_is(tiny_model, tmp_path):
    inp, out, inside = tensor_types(convert(tiny_model, None, "float32"), tmp_path)
    assert (inp, out) == ("float32", "float32")
    assert not {"int8", "uint8", "float16"} & inside


def test_predict_int8_gives_the_edge_classifiers_probabilities_photo_by_photo():
    classifier = Classifier(load_bundle(SHIPPED))
    spec = classifier.spec
    photos = np.random.default_rng(1).integers(0, 256, (3, spec.height, spec.width, 3)).astype(np.uint8)
    steps = []
    probs = predict_int8(classifier, photos, steps.append)
    assert probs.dtype == np.float32 and probs.shape == (3, len(classifier.labels))
    for photo, row in zip(photos, probs):
        np.testing.assert_array_equal(row, classifier.predict_tensor(classifier.tensor_from_pixels(photo)))
    assert steps == [1, 1, 1]  # the progress bar moves one photo at a time
