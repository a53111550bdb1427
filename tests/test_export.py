"""Exports in every format load back and predict what the Keras model predicts."""

from collections import Counter

import keras
import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter

from chestct.export import (
    FLOAT_FORMATS,
    FORMATS,
    INTEGER_FORMATS,
    ONNX_OPSET,
    QUANTISED_FORMATS,
    ToleranceExceededError,
    check_tolerances,
    compare_exports,
    export_all,
)
from chestct.model import ModelConfig, backbone_of, build_model, freeze_backbone
from chestct.runtimes import Runner, detect_format, load_runner, load_runners

# Maximum probability differences measured with these fixtures on an x86_64 CPU, with
# TensorFlow 2.21, ai-edge-litert 2.3.0 and ONNX Runtime 1.32:
#   calibrated MobileNetV2: keras, h5 and saved_model 0, tflite_float32 9.7e-6, onnx 7.5e-6,
#     tflite_dynamic_range 0.048, tflite_float16 0.017;
#   small CNN: float formats at most 3.6e-7, tflite_dynamic_range 9.5e-3, tflite_float16
#     1.3e-3, tflite_int8 0.098 (0.019 to 0.098 over three seeds).
# The margins allow for other CPUs, whose kernels round differently.
FLOAT_TOLERANCE = 1e-4
QUANTISED_TOLERANCE = 2e-2
INTEGER_TOLERANCE = 0.15
# The random MobileNetV2 amplifies weight rounding, so on it this loose bound only catches
# grossly broken quantised exports.
CHESTCT_QUANTISED_BOUND = 0.1

TFLITE_FORMATS = ("tflite_float32", "tflite_dynamic_range", "tflite_float16")


def _images(rng: np.random.Generator, count: int) -> np.ndarray:
    # A random brightness per image spreads the predictions more than uniform noise alone.
    noise = rng.uniform(0, 255, (count, 32, 32, 1))
    brightness = rng.uniform(0.2, 1.0, (count, 1, 1, 1))
    return (noise * brightness).astype("float32")


def _calibrated_chestct_model(calibration_images: np.ndarray) -> keras.Model:
    """Build the tiny classifier with batch normalisation statistics taken from real activations.

    With its initial statistics a random MobileNetV2 shrinks every feature to about 1e-11, and
    every probability is 0.5. One training-mode pass with momentum 0 sets each moving mean and
    variance to that layer's batch statistics, so the probabilities differ between images.
    """
    keras.utils.set_random_seed(0)
    model = build_model(
        ModelConfig(image_size=32, backbone="mobilenetv2", alpha=0.35, weights="none", dense_units=(8,))
    )
    backbone_of(model).trainable = True
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(calibration_images, training=True)
    freeze_backbone(model)
    return model


def _small_cnn(images: np.ndarray) -> keras.Model:
    """Build a shallow CNN whose logits have mean 0 and standard deviation 1.5 on ``images``.

    The calibrated MobileNetV2 amplifies weight rounding, so its quantised exports show little
    about quantisation error. This network is shallow enough to measure it. Its convolution
    kernels have at least 1024 elements, the size below which the TFLite converter leaves
    weights in float32.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(32, activation="relu")(x)
    output_layer = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, output_layer(features))

    logits = keras.Model(inputs, features).predict(images, verbose=0) @ output_layer.kernel.numpy()
    scale = 1.5 / logits.std()
    output_layer.kernel.assign(output_layer.kernel.numpy() * scale)
    output_layer.bias.assign([-logits.mean() * scale])
    return model


def _tensor_dtypes(path) -> Counter:
    interpreter = Interpreter(model_path=str(path))
    return Counter(np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details())


@pytest.fixture(scope="module")
def chestct_export(tmp_path_factory):
    rng = np.random.default_rng(0)
    model = _calibrated_chestct_model(_images(rng, 8))
    images = _images(rng, 6)
    out_dir = tmp_path_factory.mktemp("chestct_export")
    # export_all must remove a full-integer model that an earlier export left behind.
    (out_dir / FORMATS["tflite_int8"]).write_bytes(b"stale")
    paths = export_all(model, out_dir)
    reference = model.predict(images, verbose=0).ravel()
    return paths, images, reference


@pytest.fixture(scope="module")
def small_cnn_export(tmp_path_factory):
    rng = np.random.default_rng(1)
    images = _images(rng, 20)
    model = _small_cnn(images)
    paths = export_all(model, tmp_path_factory.mktemp("small_cnn_export"), representative_images=_images(rng, 16))
    reference = model.predict(images, verbose=0).ravel()
    return paths, images, reference


def test_export_all_writes_every_format(chestct_export):
    paths, _, _ = chestct_export

    assert list(paths) == [format for format in FORMATS if format != "tflite_int8"]
    assert not (paths["keras"].parent / FORMATS["tflite_int8"]).exists()
    assert (paths["saved_model"] / "saved_model.pb").is_file()
    for format, path in paths.items():
        if format != "saved_model":
            assert path.is_file(), format
            assert path.stat().st_size > 0, format


@pytest.mark.parametrize("format", ["keras", "h5", "saved_model", "tflite_float32", "onnx"])
def test_runner_rejects_other_image_size(chestct_export, format):
    paths, images, _ = chestct_export
    runner = load_runner(paths[format], format)
    size = images.shape[1]
    other = np.zeros((2, size + 8, size + 8, 1), dtype=np.float32)

    with pytest.raises(ValueError, match=f"expects {size}x{size} images"):
        runner.predict(other)


def test_onnx_export_has_unknown_batch(chestct_export):
    paths, _, _ = chestct_export
    onnx_model = onnx.load(paths["onnx"])

    assert {opset.domain: opset.version for opset in onnx_model.opset_import}[""] == ONNX_OPSET
    batch = onnx_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value


def test_calibrated_model_spreads_probabilities(chestct_export):
    _, _, reference = chestct_export

    assert reference.std() > 0.05


def test_float_exports_match_keras_model(chestct_export):
    paths, images, reference = chestct_export

    comparison = compare_exports(reference, load_runners(paths), images, threshold=0.5)

    for format in FLOAT_FORMATS:
        assert comparison[format]["max_abs_difference"] <= FLOAT_TOLERANCE, (format, comparison[format])
        assert comparison[format]["decision_flips"] == 0, (format, comparison[format])


def test_quantised_exports_stay_near_keras_model(chestct_export):
    paths, images, reference = chestct_export

    for format in QUANTISED_FORMATS:
        probs = load_runner(paths[format]).predict(images)
        assert probs.shape == (len(images),), format
        assert np.all((probs >= 0) & (probs <= 1)), (format, probs)
        assert np.abs(probs - reference).max() <= CHESTCT_QUANTISED_BOUND, (format, probs, reference)


def test_tflite_exports_store_expected_types(chestct_export):
    paths, _, _ = chestct_export

    float32_types = _tensor_dtypes(paths["tflite_float32"])
    dynamic_range_types = _tensor_dtypes(paths["tflite_dynamic_range"])
    float16_types = _tensor_dtypes(paths["tflite_float16"])

    assert float32_types["int8"] == 0
    assert float32_types["float16"] == 0
    assert dynamic_range_types["int8"] > 0
    assert float16_types["float16"] > 0
    assert paths["tflite_dynamic_range"].stat().st_size < 0.5 * paths["tflite_float32"].stat().st_size


def test_tflite_input_has_unknown_batch(chestct_export):
    paths, _, _ = chestct_export

    for format in TFLITE_FORMATS:
        signature = Interpreter(model_path=str(paths[format])).get_input_details()[0]["shape_signature"]
        assert list(signature) == [-1, 32, 32, 1], format


def test_tflite_batches_of_one_and_five_agree(chestct_export):
    paths, images, _ = chestct_export
    images = images[:5]

    for format in TFLITE_FORMATS:
        one_at_a_time = load_runner(paths[format], batch_size=1).predict(images)
        all_at_once = load_runner(paths[format], batch_size=5).predict(images)
        # A batch size of 2 leaves a last batch of 1, so the interpreter resizes between batches.
        uneven = load_runner(paths[format], batch_size=2).predict(images)
        assert one_at_a_time.shape == (5,), format
        np.testing.assert_allclose(all_at_once, one_at_a_time, atol=1e-6, err_msg=format)
        np.testing.assert_allclose(uneven, one_at_a_time, atol=1e-6, err_msg=format)


def test_representative_images_add_int8_tflite(small_cnn_export):
    paths, _, _ = small_cnn_export
    interpreter = Interpreter(model_path=str(paths["tflite_int8"]))

    assert list(paths) == list(FORMATS)
    assert _tensor_dtypes(paths["tflite_int8"])["int8"] > 0
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32


def test_small_cnn_exports_within_tolerances(small_cnn_export):
    paths, images, reference = small_cnn_export

    comparison = compare_exports(reference, load_runners(paths), images, threshold=0.5)

    assert reference.min() < 0.3
    assert reference.max() > 0.7
    for format in FLOAT_FORMATS:
        assert comparison[format]["max_abs_difference"] <= FLOAT_TOLERANCE, (format, comparison[format])
    for format in QUANTISED_FORMATS:
        assert comparison[format]["max_abs_difference"] <= QUANTISED_TOLERANCE, (format, comparison[format])
    for format in INTEGER_FORMATS:
        assert comparison[format]["max_abs_difference"] <= INTEGER_TOLERANCE, (format, comparison[format])
    check_tolerances(comparison, FLOAT_TOLERANCE, QUANTISED_TOLERANCE, INTEGER_TOLERANCE)


def test_export_all_rejects_bad_representative_images(tmp_path):
    model = _small_cnn(_images(np.random.default_rng(2), 4))

    with pytest.raises(ValueError, match="representative_images must have shape"):
        export_all(model, tmp_path, representative_images=np.zeros((4, 32, 32), "float32"))
    with pytest.raises(ValueError, match="representative_images must be finite"):
        export_all(model, tmp_path, representative_images=np.full((1, 32, 32, 1), np.nan, "float32"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.keras", "keras"),
        ("model.h5", "h5"),
        ("model.hdf5", "h5"),
        ("model_float16.tflite", "tflite"),
        ("model.ONNX", "onnx"),
    ],
)
def test_detect_format_from_suffix(tmp_path, name, expected):
    path = tmp_path / name
    path.write_bytes(b"")

    assert detect_format(path) == expected


def test_detect_format_saved_model_directory(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")

    assert detect_format(tmp_path) == "saved_model"


def test_detect_format_rejects_unknown(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")

    with pytest.raises(ValueError, match="Cannot detect the model format"):
        detect_format(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="Cannot detect the model format"):
        detect_format(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_format(tmp_path / "missing.keras")


def test_load_runner_rejects_unknown_format(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"")

    with pytest.raises(ValueError, match="Unknown model format 'pytorch'"):
        load_runner(path, format="pytorch")


class PixelRunner(Runner):
    """A runner whose probability for an image is the image's first pixel, to fake any output."""

    def __init__(self, batch_size: int = 32):
        super().__init__(path=None, runtime="fake", batch_size=batch_size)
        self.batch_sizes = []

    def _predict_batch(self, batch):
        self.batch_sizes.append(len(batch))
        return batch[:, 0, 0, 0]


def _pixel_images(probabilities) -> np.ndarray:
    images = np.zeros((len(probabilities), 2, 2, 1), "float32")
    images[:, 0, 0, 0] = probabilities
    return images


def test_runner_predicts_in_batches():
    runner = PixelRunner(batch_size=3)
    probabilities = np.linspace(0, 1, 7, dtype="float32")

    result = runner.predict(_pixel_images(probabilities))

    np.testing.assert_array_equal(result, probabilities)
    assert runner.batch_sizes == [3, 3, 1]


def test_runner_rejects_bad_input():
    runner = PixelRunner()

    assert runner.predict(np.zeros((0, 2, 2, 1))).shape == (0,)
    with pytest.raises(ValueError, match=r"images must have shape \(N, S, S, 1\)"):
        runner.predict(np.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PixelRunner(batch_size=0)


def test_compare_exports_counts_flips():
    reference = np.array([0.1, 0.49, 0.5, 0.9, 0.7])
    # The second image rises to the threshold (now cancer), and the third falls below it.
    shifted = np.array([0.1, 0.5, 0.49, 0.9, 0.72])
    images = _pixel_images(shifted)

    comparison = compare_exports(reference, {"onnx": PixelRunner(batch_size=2)}, images, threshold=0.5)

    assert comparison["onnx"]["decision_flips"] == 2
    assert comparison["onnx"]["max_abs_difference"] == pytest.approx(0.02, abs=1e-6)
    assert comparison["onnx"]["mean_abs_difference"] == pytest.approx(0.04 / 5, abs=1e-6)


def test_compare_exports_without_flips():
    reference = np.array([0.1, 0.6])

    comparison = compare_exports(reference, {"keras": PixelRunner()}, _pixel_images(reference), threshold=0.5)

    assert comparison["keras"] == {
        "max_abs_difference": pytest.approx(0.0, abs=1e-7),
        "mean_abs_difference": pytest.approx(0.0, abs=1e-7),
        "decision_flips": 0,
    }


def test_compare_exports_rejects_bad_arguments():
    images = _pixel_images([0.2, 0.4])

    with pytest.raises(ValueError, match="threshold must be a number from 0 to 1"):
        compare_exports(np.array([0.2, 0.4]), {}, images, threshold=1.5)
    with pytest.raises(ValueError, match="reference_probs has 3 probabilities for 2 images"):
        compare_exports(np.array([0.2, 0.4, 0.6]), {}, images, threshold=0.5)


def _comparison(**differences) -> dict:
    return {
        format: {"max_abs_difference": value, "mean_abs_difference": value, "decision_flips": 0}
        for format, value in differences.items()
    }


def test_check_tolerances_passes_within_limits():
    comparison = _comparison(keras=0.0, onnx=1e-5, tflite_float32=1e-5, tflite_float16=0.009, tflite_int8=0.01)

    check_tolerances(comparison, float_tolerance=1e-5, quantised_tolerance=0.01)


def test_check_tolerances_integer_tolerance():
    comparison = _comparison(tflite_dynamic_range=0.005, tflite_int8=0.08)

    check_tolerances(comparison, float_tolerance=1e-5, quantised_tolerance=0.01, integer_tolerance=0.1)
    # Without its own tolerance, the integer format falls back to the quantised one.
    with pytest.raises(ToleranceExceededError, match="tflite_int8: .* 0.08 exceeds the integer tolerance 0.01"):
        check_tolerances(comparison, float_tolerance=1e-5, quantised_tolerance=0.01)


def test_check_tolerances_names_quantised_format():
    comparison = _comparison(onnx=1e-6, tflite_float16=0.05)

    with pytest.raises(ToleranceExceededError) as error:
        check_tolerances(comparison, float_tolerance=1e-5, quantised_tolerance=0.01)

    message = str(error.value)
    assert "tflite_float16: max absolute probability difference 0.05 exceeds the quantised tolerance 0.01" in message
    assert "onnx" not in message


def test_check_tolerances_names_every_failing_format():
    comparison = _comparison(saved_model=2e-5, tflite_dynamic_range=0.5, h5=0.0)

    with pytest.raises(ToleranceExceededError) as error:
        check_tolerances(comparison, float_tolerance=1e-5, quantised_tolerance=0.01)

    message = str(error.value)
    assert "saved_model: max absolute probability difference 2e-05 exceeds the float tolerance 1e-05" in message
    assert (
        "tflite_dynamic_range: max absolute probability difference 0.5 exceeds the quantised tolerance 0.01" in message
    )
    assert "h5" not in message


def test_check_tolerances_fails_on_nan():
    with pytest.raises(ToleranceExceededError, match="onnx: max absolute probability difference nan"):
        check_tolerances(_comparison(onnx=float("nan")), float_tolerance=1.0, quantised_tolerance=1.0)


def test_check_tolerances_rejects_bad_arguments():
    with pytest.raises(ValueError, match="No tolerance for export format 'pytorch'"):
        check_tolerances(_comparison(pytorch=0.0), float_tolerance=1e-5, quantised_tolerance=0.01)
    with pytest.raises(ValueError, match="float_tolerance must be a finite number"):
        check_tolerances({}, float_tolerance=-1.0, quantised_tolerance=0.01)
    with pytest.raises(ValueError, match="quantised_tolerance must be a finite number"):
        check_tolerances({}, float_tolerance=1e-5, quantised_tolerance=float("inf"))
    with pytest.raises(ValueError, match="integer_tolerance must be a finite number"):
        check_tolerances({}, float_tolerance=1e-5, quantised_tolerance=0.01, integer_tolerance=float("nan"))
