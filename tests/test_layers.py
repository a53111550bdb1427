"""Tests of the custom Keras objects in chestct.layers and chestct.losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestct.layers import BackboneNormalization, ChannelAttention, GrayscaleToRGB, SpatialAttention
from chestct.losses import BinaryFocalLoss, focal_loss

RNG_SEED = 0


def random_maps(shape, low=0.0, high=1.0):
    return np.random.default_rng(RNG_SEED).uniform(low, high, shape).astype("float32")


def count_params(layer) -> int:
    return sum(int(np.prod(weight.shape)) for weight in layer.weights)


# --- GrayscaleToRGB -------------------------------------------------------------------------


def test_grayscale_to_rgb_repeats_channel():
    gray = random_maps((2, 5, 7, 1), 0, 255)

    rgb = np.asarray(GrayscaleToRGB()(gray))

    assert rgb.shape == (2, 5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray[..., 0])


def test_grayscale_to_rgb_rejects_three_channels():
    with pytest.raises(ValueError, match="one input channel"):
        GrayscaleToRGB()(random_maps((1, 4, 4, 3)))


# --- BackboneNormalization ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "preprocess_input"),
    [
        ("torch", keras.applications.densenet.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("none", keras.applications.efficientnet.preprocess_input),
    ],
)
def test_normalization_matches_keras_preprocess_input(mode, preprocess_input):
    rgb = random_maps((3, 6, 5, 3), 0, 255)
    expected = preprocess_input(rgb.copy())

    normalized = np.asarray(BackboneNormalization(mode)(rgb))

    np.testing.assert_allclose(normalized, expected, rtol=1e-5, atol=1e-5)


def test_normalization_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        BackboneNormalization("caffe")


def test_normalization_config_round_trip():
    layer = BackboneNormalization("torch", name="normalize")

    restored = BackboneNormalization.from_config(layer.get_config())

    assert restored.mode == "torch"
    assert restored.name == "normalize"


# --- ChannelAttention -----------------------------------------------------------------------


def test_channel_attention_shape_and_param_count():
    layer = ChannelAttention(ratio=4)

    output = layer(random_maps((2, 3, 3, 16)))

    assert output.shape == (2, 3, 3, 16)
    assert count_params(layer) == 16 * (16 // 4) * 2
    assert len(layer.trainable_weights) == 2


def test_channel_attention_matches_numpy_squeeze_excitation():
    maps = random_maps((2, 3, 4, 8), -1, 1)
    layer = ChannelAttention(ratio=2)
    output = np.asarray(layer(maps))
    squeeze, excite = (np.asarray(weight) for weight in layer.weights)

    pooled = maps.mean(axis=(1, 2))
    hidden = np.maximum(pooled @ squeeze, 0.0)
    channel_weights = 1.0 / (1.0 + np.exp(-(hidden @ excite)))
    expected = maps * channel_weights[:, None, None, :]

    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


def test_channel_attention_rejects_ratio_above_channels():
    with pytest.raises(ValueError, match="at least ratio=8"):
        ChannelAttention(ratio=8)(random_maps((1, 2, 2, 4)))


@pytest.mark.parametrize("ratio", [0, -2, 2.0, True])
def test_channel_attention_rejects_invalid_ratio(ratio):
    with pytest.raises(ValueError, match="ratio must be a positive integer"):
        ChannelAttention(ratio=ratio)


# --- SpatialAttention -----------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_spatial_attention_shape_and_param_count(kernel_size):
    layer = SpatialAttention(kernel_size=kernel_size)

    output = layer(random_maps((2, 9, 9, 5)))

    assert output.shape == (2, 9, 9, 5)
    assert count_params(layer) == kernel_size * kernel_size * 2


def test_spatial_attention_matches_conv2d_on_mean_and_max():
    maps = random_maps((2, 6, 6, 4), -1, 1)
    layer = SpatialAttention(kernel_size=3)
    output = np.asarray(layer(maps))

    reference = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", use_bias=False)
    descriptor = np.concatenate([maps.mean(axis=-1, keepdims=True), maps.max(axis=-1, keepdims=True)], axis=-1)
    reference.build(descriptor.shape)
    reference.set_weights([np.asarray(layer.kernel)])
    expected = maps * np.asarray(reference(descriptor))

    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [0, 4, -3, 7.0])
def test_spatial_attention_rejects_invalid_kernel(kernel_size):
    with pytest.raises(ValueError, match="kernel_size must be an odd positive integer"):
        SpatialAttention(kernel_size=kernel_size)


# --- Attention in a model -------------------------------------------------------------------


def attention_model() -> keras.Model:
    """Build ``(B, 8, 8, 1)`` grey values in [0, 255] -> ``(B, 1)`` probabilities, all custom layers."""
    keras.utils.set_random_seed(RNG_SEED)
    inputs = keras.Input((8, 8, 1), name="image")
    x = GrayscaleToRGB()(inputs)
    x = BackboneNormalization("torch")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = ChannelAttention(ratio=4, name="channel_attention")(x)
    x = SpatialAttention(kernel_size=3, name="spatial_attention")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def test_summary_counts_attention_params(monkeypatch):
    # rich, which prints the summary, cuts the table to the terminal width and so drops the
    # parameter column on narrow terminals.
    monkeypatch.setenv("COLUMNS", "200")
    model = attention_model()
    lines = []

    model.summary(line_length=120, print_fn=lambda text, **kwargs: lines.append(text))

    rows = {row.split()[1]: row for row in "\n".join(lines).splitlines() if "attention (" in row}
    assert rows["channel_attention"].split()[-2] == "128"
    assert rows["spatial_attention"].split()[-2] == "18"
    conv_params = 3 * 3 * 3 * 16 + 16
    assert model.count_params() == conv_params + 128 + 18 + 16 + 1


def test_gradients_reach_attention_weights():
    model = attention_model()
    images = random_maps((4, 8, 8, 1), 0, 255)

    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True))
    attention_weights = [
        *model.get_layer("channel_attention").trainable_weights,
        *model.get_layer("spatial_attention").trainable_weights,
    ]
    gradients = tape.gradient(loss, attention_weights)

    assert len(gradients) == 3
    for weight, gradient in zip(attention_weights, gradients, strict=True):
        assert gradient is not None, weight.path
        assert np.abs(np.asarray(gradient)).max() > 0, weight.path


@pytest.mark.parametrize("extension", ["keras", "h5"])
def test_attention_model_save_load_round_trip(tmp_path, extension):
    model = attention_model()
    model.compile(optimizer="adam", loss=focal_loss(alpha=0.4, gamma=1.5))
    images = random_maps((3, 8, 8, 1), 0, 255)
    path = tmp_path / f"model.{extension}"

    model.save(path)
    restored = keras.models.load_model(path)

    np.testing.assert_array_equal(restored.predict(images, verbose=0), model.predict(images, verbose=0))
    assert isinstance(restored.get_layer("channel_attention"), ChannelAttention)
    assert restored.get_layer("channel_attention").ratio == 4
    assert restored.get_layer("spatial_attention").kernel_size == 3
    assert isinstance(restored.loss, BinaryFocalLoss)
    assert (restored.loss.alpha, restored.loss.gamma) == (0.4, 1.5)


# --- Focal loss -----------------------------------------------------------------------------


def focal_by_hand(y, p, alpha, gamma):
    """Compute ``y * FL(1, p) + (1 - y) * FL(0, p)`` with numpy, in float64."""
    positive = -alpha * (1 - p) ** gamma * np.log(p)
    negative = -(1 - alpha) * p**gamma * np.log(1 - p)
    return y * positive + (1 - y) * negative


HARD_CASES = [(1.0, 0.9), (1.0, 0.2), (0.0, 0.1), (0.0, 0.7), (1.0, 0.5), (0.0, 0.5)]
SOFT_CASES = [(0.5, 0.9), (0.3, 0.4), (0.8, 0.6), (0.1, 0.05)]


def per_sample(loss, y, p):
    loss.reduction = None
    return np.asarray(loss(np.asarray(y, "float32")[:, None], np.asarray(p, "float32")[:, None]))


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 3.5)])
def test_focal_hard_labels_match_formula(alpha, gamma):
    y, p = (np.array(column) for column in zip(*HARD_CASES, strict=True))
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    expected = -alpha_t * (1 - p_t) ** gamma * np.log(p_t)

    np.testing.assert_allclose(per_sample(focal_loss(alpha, gamma), y, p), expected, rtol=1e-5)


def test_focal_hard_labels_match_keras_focal_crossentropy():
    y, p = (np.array(column, "float32")[:, None] for column in zip(*HARD_CASES, strict=True))
    keras_loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=2.0, reduction=None)

    np.testing.assert_allclose(per_sample(focal_loss(), y[:, 0], p[:, 0]), np.asarray(keras_loss(y, p)), rtol=1e-5)


def test_focal_soft_labels_match_formula():
    y, p = (np.array(column) for column in zip(*SOFT_CASES, strict=True))

    losses = per_sample(focal_loss(0.25, 2.0), y, p)

    np.testing.assert_allclose(losses, focal_by_hand(y, p, 0.25, 2.0), rtol=1e-5)
    # y = 0.5, p = 0.9 by hand: 0.5 * 0.25 * 0.01 * -log(0.9) + 0.5 * 0.75 * 0.81 * -log(0.1).
    assert losses[0] == pytest.approx(0.69954, abs=1e-4)


def test_focal_mixup_label_is_weighted_sum_of_losses():
    p = np.array([0.2, 0.6, 0.95])
    lam = 0.3

    mixed = per_sample(focal_loss(), np.full(3, lam * 1.0 + (1 - lam) * 0.0), p)
    separate = lam * per_sample(focal_loss(), np.ones(3), p) + (1 - lam) * per_sample(focal_loss(), np.zeros(3), p)

    np.testing.assert_allclose(mixed, separate, rtol=1e-5)


def test_focal_gamma_zero_is_weighted_crossentropy():
    y, p = (np.array(column, "float32") for column in zip(*(HARD_CASES + SOFT_CASES), strict=True))
    crossentropy = keras.losses.BinaryCrossentropy(reduction=None)(y[:, None], p[:, None])

    np.testing.assert_allclose(per_sample(focal_loss(0.5, 0.0), y, p), 0.5 * np.asarray(crossentropy), rtol=1e-5)


def test_focal_per_sample_shape_and_mean_reduction():
    y = np.array([[1.0], [0.0], [0.4], [1.0], [0.0]], "float32")
    p = np.array([[0.7], [0.3], [0.5], [0.05], [0.99]], "float32")

    per_sample_losses = np.asarray(BinaryFocalLoss(reduction=None)(y, p))
    batch_loss = np.asarray(focal_loss()(y, p))

    assert per_sample_losses.shape == (5,)
    assert batch_loss.shape == ()
    assert batch_loss == pytest.approx(per_sample_losses.mean(), rel=1e-6)


def test_focal_accepts_flat_labels():
    p = np.array([[0.7], [0.3]], "float32")

    flat = np.asarray(BinaryFocalLoss(reduction=None)(np.array([1.0, 0.0]), p))
    column = np.asarray(BinaryFocalLoss(reduction=None)(np.array([[1.0], [0.0]]), p))

    np.testing.assert_array_equal(flat, column)


def test_focal_is_finite_at_certain_predictions():
    y = np.array([[1.0], [0.0], [1.0], [0.0]], "float32")
    p = np.array([[0.0], [1.0], [1.0], [0.0]], "float32")

    losses = np.asarray(BinaryFocalLoss(reduction=None)(y, p))

    assert np.all(np.isfinite(losses))
    assert losses[0] > 1.0
    assert losses[2] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("alpha", "gamma", "message"),
    [(1.5, 2.0, "alpha must be from 0.0 to 1.0"), (-0.1, 2.0, "alpha"), (0.25, -1.0, "gamma must be at least 0.0")],
)
def test_focal_rejects_invalid_parameters(alpha, gamma, message):
    with pytest.raises(ValueError, match=message):
        focal_loss(alpha, gamma)


def test_focal_deserializes_by_registered_name():
    loss = focal_loss(alpha=0.3, gamma=1.0)

    restored = keras.losses.deserialize(keras.losses.serialize(loss))

    assert isinstance(restored, BinaryFocalLoss)
    assert (restored.alpha, restored.gamma, restored.reduction) == (0.3, 1.0, "sum_over_batch_size")
