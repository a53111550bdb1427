"""Tests of chestct.gradcam: the model split, Grad-CAM heat maps, overlays and PNG encoding."""

import base64
import io

import keras
import numpy as np
import pytest
from PIL import Image

from chestct.gradcam import (
    GradCam,
    as_image_batch,
    class_activation_maps,
    encode_png,
    gradcam,
    overlay,
    png_data_url,
    split_at_backbone,
    upsample_heatmap,
)
from chestct.layers import BackboneNormalization, ChannelAttention, GrayscaleToRGB, SpatialAttention
from chestct.model import ModelConfig, build_model, compile_model
from tests.datasets import MOBILENET_V2_035_WEIGHTS

needs_weights = pytest.mark.skipif(
    not MOBILENET_V2_035_WEIGHTS.is_file(), reason=f"{MOBILENET_V2_035_WEIGHTS} not found"
)

TINY = ModelConfig(image_size=32, backbone="mobilenetv2", alpha=0.35, weights="none", dense_units=(8,))


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 1)).astype("float32")


def square_images(rng: np.random.Generator, count: int, size: int, side: int):
    """Draw noise images, every second one with a bright ``side`` x ``side`` square.

    The squares sit on a grid of ``side`` pixels. Returns ``(N, size, size, 1)`` float32 images,
    ``(N,)`` labels and, per image, the square's ``(top, left)`` corner or None.
    """
    images = rng.uniform(0, 160, (count, size, size)).astype("float32")
    labels = np.zeros(count, dtype="float32")
    corners = []
    for index in range(count):
        if index % 2:
            corners.append(None)
            continue
        row, col = rng.integers(0, size // side, 2) * side
        images[index, row : row + side, col : col + side] = rng.uniform(220, 255, (side, side))
        labels[index] = 1
        corners.append((int(row), int(col)))
    return images[..., None], labels, corners


def conv_square_detector(size: int) -> keras.Model:
    """Build a model shaped like build_model's, whose "backbone" is three strided convolutions.

    Its 8 x 8 feature map (at 64 px) has a receptive field of 15 px, so each cell depends only on
    its own part of the image.
    """
    backbone_input = keras.Input((size, size, 3))
    x = backbone_input
    for _ in range(3):
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    backbone = keras.Model(backbone_input, x, name="backbone")

    inputs = keras.Input((size, size, 1), name="image")
    x = GrayscaleToRGB(name="grayscale_to_rgb")(inputs)
    x = BackboneNormalization("tf", name="backbone_normalization")(x)
    x = backbone(x, training=False)
    x = ChannelAttention(4, name="channel_attention")(x)
    x = SpatialAttention(3, name="spatial_attention")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    x = keras.layers.Dense(16, "relu", name="head_dense_1")(x)
    outputs = keras.layers.Dense(1, "sigmoid", dtype="float32", name="cancer_probability")(x)
    return keras.Model(inputs, outputs, name="square_detector")


def argmax_inside_square(heatmap: np.ndarray, corner: tuple[int, int], side: int) -> bool:
    row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    return corner[0] <= row < corner[0] + side and corner[1] <= col < corner[1] + side


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(TINY)


@pytest.fixture(scope="module")
def square_detector_64() -> keras.Model:
    """Return an untrained conv_square_detector; its random features are non-zero everywhere."""
    keras.utils.set_random_seed(0)
    return conv_square_detector(64)


# --- Localisation on trained models -------------------------------------------------------


def test_heatmap_locates_square_with_conv_backbone():
    size, side = 64, 16
    keras.utils.set_random_seed(0)
    images, labels, _ = square_images(np.random.default_rng(0), 256, size, side)
    model = conv_square_detector(size)
    # Trained end to end, because frozen random convolutions give features too weak for the head
    # to separate the classes in a few epochs (the probabilities stay near 0.4).
    compile_model(model, learning_rate=1e-2)
    model.fit(images, labels, batch_size=32, epochs=10, verbose=0)

    held_out, held_out_labels, corners = square_images(np.random.default_rng(1), 32, size, side)
    positives = np.flatnonzero(held_out_labels == 1)
    result = GradCam(model)(held_out[positives])

    assert result.feature_size == (8, 8)
    for heatmap, probability, index in zip(result.heatmaps, result.probabilities, positives, strict=True):
        assert probability > 0.5, f"image {index}: square missed, p={probability:.3f}"
        assert argmax_inside_square(heatmap, corners[index], side), f"image {index}: heat map peak outside the square"


@needs_weights
def test_heatmap_locates_square_with_mobilenet():
    # 224 px gives MobileNetV2 a 7 x 7 feature map. At 128 px (4 x 4) the input gradient of every
    # cell centres near the image centre, and the peak fell beside the square in every test image.
    size, side = 224, 56
    keras.utils.set_random_seed(0)
    images, labels, _ = square_images(np.random.default_rng(0), 192, size, side)
    # A linear head without weight decay localises best. With a 16-unit dense layer or with L2 of
    # 1.5e-3, 11 to 16 of 16 peaks fell inside the square, depending on the held-out images.
    config = ModelConfig(
        image_size=size,
        backbone="mobilenetv2",
        alpha=0.35,
        weights=str(MOBILENET_V2_035_WEIGHTS),
        dense_units=(),
        l2=0.0,
    )
    model = build_model(config)
    compile_model(model, learning_rate=1e-2)
    model.fit(images, labels, batch_size=32, epochs=5, verbose=0)

    held_out, held_out_labels, corners = square_images(np.random.default_rng(1), 32, size, side)
    positives = np.flatnonzero(held_out_labels == 1)
    result = GradCam(model)(held_out[positives])
    inside = [
        argmax_inside_square(heatmap, corners[index], side)
        for heatmap, index in zip(result.heatmaps, positives, strict=True)
    ]

    assert result.feature_size == (7, 7)
    assert (result.probabilities > 0.5).all(), result.probabilities
    # 48 of 48 peaks fell inside the square on three held-out sets (2-core x86 CPU, TensorFlow
    # 2.21). The bound leaves room for other CPUs' rounding, which can move a close peak.
    assert sum(inside) >= 14, f"{sum(inside)} of {len(inside)} heat map peaks inside the square"


# --- Split at the backbone ----------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["mobilenetv2", "densenet121", "efficientnetb0"])
@pytest.mark.parametrize("attention", [True, False])
def test_split_reproduces_model(backbone, attention):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(image_size=32, backbone=backbone, weights="none", attention=attention))
    images = random_images(4, 32)

    features, classifier = split_at_backbone(model)
    feature_maps = features(images, training=False)
    _, probabilities = classifier(feature_maps, training=False)
    result = GradCam(model)(images)

    expected = np.asarray(model(images, training=False))
    np.testing.assert_allclose(np.asarray(probabilities), expected, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, expected.ravel(), atol=1e-5)
    assert feature_maps.shape[1:] == model.get_layer("backbone").output.shape[1:]
    assert result.heatmaps.shape == (4, 32, 32)
    assert result.heatmaps.dtype == np.float32
    assert result.heatmaps.min() >= 0.0
    assert result.heatmaps.max() <= 1.0


def test_split_shares_model_weights(square_detector_64):
    features, classifier = split_at_backbone(square_detector_64)

    model_weights = {id(weight) for weight in square_detector_64.weights}
    split_weights = {id(weight) for weight in features.weights + classifier.weights}

    assert split_weights == model_weights


def test_logits_match_probabilities(square_detector_64):
    result = GradCam(square_detector_64)(random_images(6, 64))

    np.testing.assert_allclose(1 / (1 + np.exp(-result.logits)), result.probabilities, atol=1e-6)


# --- Heat maps -----------------------------------------------------------------------------


def test_heatmaps_scaled_to_unit_peak(square_detector_64):
    result = GradCam(square_detector_64)(random_images(5, 64))

    assert result.heatmaps.shape == (5, 64, 64)
    assert result.heatmaps.dtype == np.float32
    assert result.probabilities.shape == (5,)
    assert result.probabilities.dtype == np.float32
    assert result.feature_size == (8, 8)
    assert np.isfinite(result.heatmaps).all()
    assert result.heatmaps.min() >= 0.0
    np.testing.assert_allclose(result.heatmaps.max(axis=(1, 2)), 1.0)


def test_heatmaps_survive_saturated_probability(square_detector_64):
    images = random_images(3, 64)
    layer = square_detector_64.get_layer("cancer_probability")
    kernel, bias = layer.get_weights()
    reference = GradCam(square_detector_64)(images)

    # A bias of 50 rounds every probability to exactly 1.0 in float32, where the probability's
    # gradient is zero. The logit's gradient does not depend on the bias.
    layer.set_weights([kernel, bias + 50.0])
    try:
        saturated = GradCam(square_detector_64)(images)
    finally:
        layer.set_weights([kernel, bias])

    assert (saturated.probabilities == 1.0).all()
    np.testing.assert_allclose(saturated.heatmaps, reference.heatmaps, atol=1e-5)
    assert saturated.heatmaps.max() == 1.0


def test_heatmaps_zero_without_evidence(square_detector_64):
    layer = square_detector_64.get_layer("cancer_probability")
    kernel, bias = layer.get_weights()

    # A zero kernel makes the logit independent of the features, so every gradient is zero.
    layer.set_weights([np.zeros_like(kernel), bias])
    try:
        result = GradCam(square_detector_64)(random_images(2, 64))
    finally:
        layer.set_weights([kernel, bias])

    assert not np.isnan(result.heatmaps).any()
    assert (result.heatmaps == 0).all()


def test_batch_size_does_not_change_result(square_detector_64):
    images = random_images(5, 64)

    whole = GradCam(square_detector_64)(images, batch_size=32)
    in_pairs = gradcam(square_detector_64, images, batch_size=2)

    np.testing.assert_allclose(in_pairs.heatmaps, whole.heatmaps, atol=1e-5)
    np.testing.assert_allclose(in_pairs.probabilities, whole.probabilities, atol=1e-6)


def test_uint8_shapes_accepted(square_detector_64):
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    explainer = GradCam(square_detector_64)

    four_d = explainer(images[..., None].astype("float32"))
    three_d = explainer(images)
    single = explainer(images[0])

    np.testing.assert_allclose(three_d.heatmaps, four_d.heatmaps, atol=1e-6)
    assert single.heatmaps.shape == (1, 64, 64)
    np.testing.assert_allclose(single.heatmaps[0], four_d.heatmaps[0], atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_loaded_model_gives_same_heatmaps(tmp_path, square_detector_64, suffix):
    images = random_images(2, 64)
    path = tmp_path / f"model{suffix}"
    square_detector_64.save(path)
    loaded = keras.models.load_model(path, compile=False)

    expected = GradCam(square_detector_64)(images)
    result = GradCam(loaded)(images)

    np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-6)


def test_class_activation_maps_follow_definition():
    rng = np.random.default_rng(0)
    feature_maps = rng.uniform(0, 1, (2, 3, 4, 5)).astype("float32")
    gradients = rng.normal(0, 1, (2, 3, 4, 5)).astype("float32")

    maps = class_activation_maps(feature_maps, gradients)

    for image in range(2):
        weights = gradients[image].reshape(-1, 5).mean(axis=0)
        expected = np.maximum((feature_maps[image] * weights).sum(axis=-1), 0)
        np.testing.assert_allclose(maps[image], expected, rtol=1e-5, atol=1e-6)


def test_upsample_heatmap_keeps_peak_cell():
    cam = np.zeros((4, 4), dtype="float32")
    cam[2, 1] = 3.0

    heatmap = upsample_heatmap(cam, 128)

    row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    assert heatmap.shape == (128, 128)
    assert heatmap.max() == 1.0
    assert 64 <= row < 96
    assert 32 <= col < 64


def test_upsample_heatmap_zero_map_stays_zero():
    heatmap = upsample_heatmap(np.zeros((2, 2), dtype="float32"), 64)

    assert heatmap.dtype == np.float32
    assert (heatmap == 0).all()


# --- Invalid models and images --------------------------------------------------------------


def test_model_without_backbone_rejected():
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Conv2D(4, 3, name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid")(x))

    with pytest.raises(ValueError, match="no layer named 'backbone'"):
        GradCam(model)


def test_model_without_sigmoid_output_rejected():
    backbone_input = keras.Input((32, 32, 1))
    backbone = keras.Model(backbone_input, keras.layers.Conv2D(4, 3)(backbone_input), name="backbone")
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, "softmax")(x))

    with pytest.raises(ValueError, match="sigmoid"):
        GradCam(model)


def test_backbone_called_twice_rejected():
    backbone_input = keras.Input((32, 32, 1))
    backbone = keras.Model(backbone_input, keras.layers.Conv2D(4, 3, padding="same")(backbone_input), name="backbone")
    inputs = keras.Input((32, 32, 1), name="image")
    flipped = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Concatenate()([backbone(inputs), backbone(flipped)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid")(x))

    with pytest.raises(ValueError, match="calls its 'backbone' layer 2 times"):
        GradCam(model)


def test_model_with_skip_around_backbone_rejected():
    backbone_input = keras.Input((32, 32, 1))
    backbone = keras.Model(backbone_input, keras.layers.Conv2D(4, 3, padding="same")(backbone_input), name="backbone")
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Concatenate()([backbone(inputs), inputs])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid")(x))

    with pytest.raises(ValueError, match="cannot be split at its backbone"):
        split_at_backbone(model)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 32, 32, 3), dtype="float32"), "must have shape"),
        (np.zeros((2, 2, 32, 32, 1), dtype="float32"), "must have shape"),
        (np.zeros((0, 32, 32, 1), dtype="float32"), "at least one image"),
        (np.zeros((1, 32, 16, 1), dtype="float32"), "must be square"),
        (np.zeros((1, 64, 64, 1), dtype="float32"), "expects 32x32"),
        (np.full((1, 32, 32, 1), 256.0, dtype="float32"), r"in \[0, 255\]"),
        (np.full((1, 32, 32, 1), -1.0, dtype="float32"), r"in \[0, 255\]"),
        (np.full((1, 32, 32, 1), np.nan, dtype="float32"), r"in \[0, 255\]"),
        (np.zeros((1, 32, 32, 1), dtype=bool), "dtype bool"),
        (np.full((1, 32, 32, 1), "a"), "dtype <U1"),
    ],
)
def test_invalid_images_rejected(tiny_model, images, message):
    with pytest.raises(ValueError, match=message):
        GradCam(tiny_model)(images)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_invalid_batch_size_rejected(tiny_model, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        GradCam(tiny_model)(random_images(1, 32), batch_size=batch_size)


def test_as_image_batch_accepts_any_size_without_model():
    batch = as_image_batch(np.zeros((40, 40), dtype=np.uint8))

    assert batch.shape == (1, 40, 40, 1)
    assert batch.dtype == np.float32


@pytest.mark.parametrize(
    ("cam", "size", "message"),
    [
        (np.zeros((2, 2, 1)), 8, "2-D"),
        (np.full((2, 2), -1.0), 8, "non-negative"),
        (np.full((2, 2), np.inf), 8, "non-negative"),
        (np.zeros((2, 2)), 0, "size"),
    ],
)
def test_upsample_heatmap_invalid_input_rejected(cam, size, message):
    with pytest.raises(ValueError, match=message):
        upsample_heatmap(cam, size)


def test_class_activation_maps_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same"):
        class_activation_maps(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 4)))


# --- Overlay and PNG encoding --------------------------------------------------------------


def test_overlay_blends_colour_over_grey():
    gray = np.full((16, 16), 100, dtype=np.uint8)
    heatmap = np.zeros((16, 16), dtype="float32")
    heatmap[:8] = 1.0

    blended = overlay(gray, heatmap, alpha=1.0)
    grey_only = overlay(gray, heatmap, alpha=0.0)
    half = overlay(gray, heatmap, alpha=0.5)

    assert blended.shape == (16, 16, 3)
    assert blended.dtype == np.uint8
    # JET is red at 1 and blue at 0, which the channel order must keep in RGB.
    red, green, blue = blended[0, 0].astype(int)
    assert red > blue
    assert green < red
    red, green, blue = blended[-1, -1].astype(int)
    assert blue > red
    np.testing.assert_array_equal(grey_only, np.repeat(gray[:, :, None], 3, axis=2))
    expected_half = np.round(0.5 * 100 + 0.5 * blended.astype(float))
    np.testing.assert_allclose(half, expected_half, atol=1)


@pytest.mark.parametrize(
    ("gray", "heatmap", "alpha", "message"),
    [
        (np.zeros((8, 8), dtype="float32"), np.zeros((8, 8)), 0.4, "gray must be"),
        (np.zeros((8, 8, 1), dtype=np.uint8), np.zeros((8, 8, 1)), 0.4, "gray must be"),
        (np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 4)), 0.4, "heatmap must be"),
        (np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8), 0.4, "heatmap must be"),
        (np.zeros((8, 8), dtype=np.uint8), np.full((8, 8), 1.5), 0.4, r"heatmap must contain values in \[0, 1\]"),
        (np.zeros((8, 8), dtype=np.uint8), np.full((8, 8), np.nan), 0.4, r"heatmap must contain values in \[0, 1\]"),
        (np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 8)), 1.5, "alpha"),
        (np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 8)), "0.4", "alpha"),
    ],
)
def test_overlay_invalid_input_rejected(gray, heatmap, alpha, message):
    with pytest.raises(ValueError, match=message):
        overlay(gray, heatmap, alpha)


@pytest.mark.parametrize("shape", [(12, 20), (12, 20, 3)])
def test_encode_png_round_trip(shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))

    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_overlay_png_round_trip():
    gray = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    blended = overlay(gray, np.linspace(0, 1, 32 * 32, dtype="float32").reshape(32, 32))

    decoded = np.asarray(Image.open(io.BytesIO(encode_png(blended))).convert("RGB"))

    np.testing.assert_array_equal(decoded, blended)


def test_png_data_url_contains_png():
    array = np.zeros((4, 6), dtype=np.uint8)

    url = png_data_url(array)

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :]) == encode_png(array)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), dtype="float32"),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 1), dtype=np.uint8),
        np.zeros((0, 4), dtype=np.uint8),
        np.zeros(4, dtype=np.uint8),
    ],
)
def test_encode_png_invalid_array_rejected(array):
    with pytest.raises(ValueError, match="uint8 image"):
        encode_png(array)
