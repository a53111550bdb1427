"""Tests of chestct.model: configuration, architecture, freezing and training a tiny model."""

from dataclasses import replace

import keras
import numpy as np
import pytest

from chestct import model as model_module
from chestct.layers import BackboneNormalization, ChannelAttention, SpatialAttention
from chestct.losses import BinaryFocalLoss
from chestct.model import (
    ModelConfig,
    backbone_of,
    build_model,
    compile_model,
    freeze_backbone,
    resolve_weights,
    unfreeze_top,
)
from tests.datasets import MOBILENET_V2_035_WEIGHTS

MOBILENET_035 = MOBILENET_V2_035_WEIGHTS
needs_weights = pytest.mark.skipif(not MOBILENET_035.is_file(), reason=f"{MOBILENET_035} not found")

# The smallest of the three backbones at the smallest input that keras.applications accepts,
# so that tests stay fast.
TINY = ModelConfig(image_size=32, backbone="mobilenetv2", alpha=0.35, weights="none", dense_units=(16, 8))


def random_images(count: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 1)).astype("float32")


def count_weights(weights) -> int:
    return sum(int(np.prod(weight.shape)) for weight in weights)


def batch_norm_layers(model: keras.Model) -> list:
    return [layer for layer in backbone_of(model).layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.fixture
def tiny_model() -> keras.Model:
    """Return a new tiny model, for tests that train it or change what is trainable."""
    keras.utils.set_random_seed(0)
    return build_model(TINY)


@pytest.fixture(scope="module")
def shared_model() -> keras.Model:
    """Return one tiny model shared by the tests that only read it."""
    keras.utils.set_random_seed(0)
    return build_model(TINY)


# --- ModelConfig ----------------------------------------------------------------------------


def test_config_from_params_reads_model_section():
    section = {"backbone": "mobilenetv2", "alpha": 0.5, "weights": "none", "dense_units": [64], "extra": 1}

    config = ModelConfig.from_params(section, image_size=96)

    assert config.image_size == 96
    assert config.backbone == "mobilenetv2"
    assert config.alpha == 0.5
    assert config.dense_units == (64,)
    assert config.attention is True
    assert config.l2 == 1.5e-3


def test_config_treats_null_weights_as_none():
    config = ModelConfig(image_size=32, weights=None)

    assert config.weights == "none"
    assert resolve_weights(config.weights) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 16, "preprocess.image_size must be an integer from 32"),
        ("image_size", 64.0, "preprocess.image_size"),
        ("backbone", "resnet50", "model.backbone must be one of"),
        ("alpha", 0, "model.alpha must be positive"),
        ("alpha", "wide", "model.alpha must be a finite number"),
        ("weights", 3, "model.weights must be"),
        ("attention", "yes", "model.attention must be true or false"),
        ("attention_ratio", 0, "model.attention_ratio must be an integer"),
        ("spatial_kernel", 4, "model.spatial_kernel must be odd"),
        ("spatial_kernel", 0, "model.spatial_kernel must be an integer"),
        ("dense_units", (512, 0), "model.dense_units must be a list of positive integers"),
        ("dense_units", "512", "model.dense_units"),
        ("dropout", 1.0, "model.dropout must be at least 0 and less than 1"),
        ("dropout", -0.1, "model.dropout"),
        ("l2", -1e-3, "model.l2 must be at least 0"),
        ("l2", float("nan"), "model.l2 must be a finite number"),
    ],
)
def test_config_rejects_invalid_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **{field: value})


def test_config_rejects_mobilenet_alpha_without_imagenet_weights():
    with pytest.raises(ValueError, match="model.alpha must be one of"):
        ModelConfig(image_size=32, backbone="mobilenetv2", alpha=0.6, weights="imagenet")


def test_config_accepts_any_alpha_without_pretrained_weights():
    assert replace(TINY, alpha=0.6).alpha == 0.6


def test_config_rejects_missing_weights_file(tmp_path):
    missing = tmp_path / "missing.h5"

    with pytest.raises(FileNotFoundError, match="model.weights file .*missing.h5 not found"):
        replace(TINY, weights=str(missing))


def test_relative_weights_path_resolves_against_repo_root(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.h5").write_bytes(b"")
    monkeypatch.setattr(model_module, "REPO_ROOT", tmp_path)

    assert resolve_weights("weights/backbone.h5") == str(tmp_path / "weights" / "backbone.h5")


# --- build_model ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "mode"),
    [("densenet121", "torch"), ("mobilenetv2", "tf"), ("efficientnetb0", "none")],
)
def test_build_model_for_each_backbone(backbone, mode):
    config = ModelConfig(image_size=32, backbone=backbone, alpha=0.35, weights="none", dense_units=(8,))

    model = build_model(config)
    probabilities = model.predict(random_images(2), verbose=0)

    assert model.input_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 1)
    assert model.inputs[0].name == "image"
    assert model.layers[-1].name == "cancer_probability"
    assert isinstance(backbone_of(model), keras.Model)
    assert model.get_layer("backbone_normalization").mode == mode
    assert probabilities.shape == (2, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_build_model_freezes_backbone(shared_model):
    attention = 1280 * (1280 // 8) * 2 + 7 * 7 * 2
    head = (1280 * 16 + 16) + 2 * 16 + (16 * 8 + 8) + 2 * 8 + (8 + 1)

    assert backbone_of(shared_model).trainable is False
    assert backbone_of(shared_model).trainable_weights == []
    assert count_weights(shared_model.trainable_weights) == attention + head


def test_build_model_without_attention(shared_model):
    plain = build_model(replace(TINY, attention=False))

    names = [layer.name for layer in plain.layers]
    assert "channel_attention" not in names
    assert "spatial_attention" not in names
    assert not any(isinstance(layer, (ChannelAttention, SpatialAttention)) for layer in plain.layers)
    assert shared_model.count_params() - plain.count_params() == 1280 * 160 * 2 + 7 * 7 * 2


def test_build_model_head_layers(shared_model):
    head = [layer.name for layer in shared_model.layers[shared_model.layers.index(backbone_of(shared_model)) + 1 :]]

    assert head == [
        "channel_attention",
        "spatial_attention",
        "global_average_pooling",
        "head_dense_1",
        "head_batch_norm_1",
        "head_dropout_1",
        "head_dense_2",
        "head_batch_norm_2",
        "head_dropout_2",
        "cancer_probability",
    ]
    assert shared_model.get_layer("head_dropout_1").rate == 0.5
    assert shared_model.get_layer("head_dense_1").kernel_regularizer.l2 == pytest.approx(1.5e-3)
    assert shared_model.get_layer("cancer_probability").kernel_regularizer.l2 == pytest.approx(1.5e-3)


@pytest.mark.parametrize("extension", ["keras", "h5"])
def test_model_survives_save_and_load(shared_model, tmp_path, extension):
    images = random_images(2)
    path = tmp_path / f"model.{extension}"

    shared_model.save(path)
    restored = keras.models.load_model(path)

    assert isinstance(restored.get_layer("backbone_normalization"), BackboneNormalization)
    np.testing.assert_array_equal(restored.predict(images, verbose=0), shared_model.predict(images, verbose=0))


@needs_weights
def test_local_weights_file_loads_into_backbone():
    random_model = build_model(TINY)
    pretrained = build_model(replace(TINY, weights=str(MOBILENET_035)))

    first_kernel = backbone_of(pretrained).get_layer("Conv1").kernel
    random_kernel = backbone_of(random_model).get_layer("Conv1").kernel

    assert first_kernel.shape == random_kernel.shape
    assert not np.allclose(np.asarray(first_kernel), np.asarray(random_kernel))
    # ImageNet-trained batch normalisation has moved away from its initial unit variance.
    assert not np.allclose(np.asarray(batch_norm_layers(pretrained)[0].moving_variance), 1.0)


# --- Freezing -------------------------------------------------------------------------------


def test_unfreeze_top_unfreezes_upper_layers(tiny_model):
    layers = backbone_of(tiny_model).layers
    window = len(layers) // 2

    unfrozen = unfreeze_top(tiny_model, 0.5)

    upper = layers[len(layers) - window :]
    expected = [layer for layer in upper if not isinstance(layer, keras.layers.BatchNormalization)]
    assert len(layers) == 154
    assert unfrozen == len(expected) == 51
    assert all(layer.trainable for layer in expected)
    assert not any(layer.trainable for layer in layers[: len(layers) - window])


def test_unfreeze_top_keeps_batch_norm_frozen(tiny_model):
    unfreeze_top(tiny_model, 1.0)

    assert batch_norm_layers(tiny_model)
    assert not any(layer.trainable for layer in batch_norm_layers(tiny_model))
    assert all(layer.trainable_weights == [] for layer in batch_norm_layers(tiny_model))


@pytest.mark.parametrize(("fraction", "expected_window"), [(0.0, 0), (0.1, 15), (0.29, 44), (1.0, 154)])
def test_unfreeze_top_rounds_window_down(tiny_model, fraction, expected_window):
    layers = backbone_of(tiny_model).layers
    upper = layers[len(layers) - expected_window :] if expected_window else []
    expected = sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in upper)

    assert unfreeze_top(tiny_model, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "half", None])
def test_unfreeze_top_rejects_invalid_fraction(shared_model, fraction):
    with pytest.raises(ValueError, match="fraction must be"):
        unfreeze_top(shared_model, fraction)


def test_freeze_backbone_undoes_unfreeze(tiny_model):
    unfreeze_top(tiny_model, 1.0)

    freeze_backbone(tiny_model)

    assert backbone_of(tiny_model).trainable_weights == []


def test_fine_tuning_keeps_batch_norm_statistics(tiny_model):
    unfreeze_top(tiny_model, 1.0)
    compile_model(tiny_model, learning_rate=1e-2)
    statistics = [np.asarray(layer.moving_mean).copy() for layer in batch_norm_layers(tiny_model)]
    last_conv = backbone_of(tiny_model).get_layer("Conv_1")
    conv_before = np.asarray(last_conv.kernel).copy()

    tiny_model.fit(random_images(8), np.array([[0.0], [1.0]] * 4), epochs=1, batch_size=8, verbose=0)

    assert not np.allclose(np.asarray(last_conv.kernel), conv_before)
    for layer, before in zip(batch_norm_layers(tiny_model), statistics, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), before, err_msg=layer.name)


# --- compile_model and training -------------------------------------------------------------


def test_compile_model_sets_loss_optimizer_and_metrics(tiny_model):
    compile_model(tiny_model, learning_rate=3e-4, alpha=0.4, gamma=1.0)

    results = tiny_model.evaluate(random_images(4), np.array([[0.0], [1.0], [1.0], [0.0]]), verbose=0, return_dict=True)

    assert isinstance(tiny_model.loss, BinaryFocalLoss)
    assert (tiny_model.loss.alpha, tiny_model.loss.gamma) == (0.4, 1.0)
    assert isinstance(tiny_model.optimizer, keras.optimizers.Adam)
    assert float(tiny_model.optimizer.learning_rate) == pytest.approx(3e-4)
    assert set(results) == {"loss", "auc", "precision", "recall", "binary_accuracy"}


@pytest.mark.parametrize("learning_rate", [0, -1e-3, "fast"])
def test_compile_model_rejects_invalid_learning_rate(shared_model, learning_rate):
    with pytest.raises(ValueError, match="learning_rate must be"):
        compile_model(shared_model, learning_rate)


def bright_square_images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(count, 32, 32, 1)`` noise images, odd ones with a white 8 x 8 square, and labels."""
    images = rng.uniform(0, 100, (count, 32, 32, 1)).astype("float32")
    labels = (np.arange(count) % 2).astype("float32")
    for index in np.flatnonzero(labels):
        row, column = rng.integers(4, 20, size=2)
        images[index, row : row + 8, column : column + 8, 0] = 255.0
    return images, labels[:, None]


@needs_weights
def test_tiny_model_learns_bright_square():
    # A frozen random backbone gives near-zero features (see ModelConfig.weights), so phase 1
    # needs pretrained weights to learn anything.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = bright_square_images(128, rng)
    valid_images, valid_labels = bright_square_images(64, rng)
    config = replace(TINY, weights=str(MOBILENET_035), dense_units=(32,), dropout=0.2)
    model = build_model(config)
    compile_model(model, learning_rate=1e-3, alpha=0.5)

    history = model.fit(
        images, labels, epochs=4, batch_size=16, validation_data=(valid_images, valid_labels), verbose=0
    ).history

    assert history["loss"][-1] < history["loss"][0]
    assert history["val_auc"][-1] > 0.9
