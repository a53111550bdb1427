import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance
from scipy import stats

from chestct.augment import (
    AugmentConfig,
    AugmentDraws,
    apply_augmentation,
    augment_batch,
    draw_augmentation,
    mixup,
    mixup_weights,
)

SEED = tf.constant([3, 4], tf.int64)


def still_config(**changes) -> AugmentConfig:
    """An enabled configuration whose draws are all the identity, except for ``changes``."""
    still = AugmentConfig(
        rotation_degrees=0.0,
        shift=0.0,
        shear=0.0,
        zoom=(1.0, 1.0),
        horizontal_flip=False,
        vertical_flip=False,
        brightness=(1.0, 1.0),
        contrast=(1.0, 1.0),
        sharpness=(1.0, 1.0),
    )
    return dataclasses.replace(still, **changes)


def with_draws(batch_size: int, **values) -> AugmentDraws:
    """Identity draws with some parameters set to the same value for every sample."""
    filled = {name: tf.fill([batch_size], value) for name, value in values.items()}
    return dataclasses.replace(AugmentDraws.identity(batch_size), **filled)


def random_images(count: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 1), dtype=np.uint8)


def single_pixel(size: int, row: int, col: int) -> np.ndarray:
    image = np.zeros((1, size, size, 1), np.uint8)
    image[0, row, col, 0] = 200
    return image


def test_config_defaults():
    config = AugmentConfig()

    assert config.rotation_degrees == 30
    assert config.shift == 0.2
    assert config.shear == 0.1
    assert config.zoom == (0.8, 1.2)
    assert config.horizontal_flip is True
    assert config.vertical_flip is True
    assert config.enabled is True
    assert config.brightness == (0.8, 1.2)
    assert config.contrast == (0.5, 1.8)
    assert config.sharpness == (0.5, 2.2)


def test_config_from_params_converts_lists():
    config = AugmentConfig.from_params({"zoom": [0.9, 1.1], "rotation_degrees": 10, "enabled": False})

    assert config.zoom == (0.9, 1.1)
    assert config.rotation_degrees == 10
    assert config.enabled is False
    assert config.brightness == AugmentConfig().brightness


def test_config_from_params_rejects_unknown_key():
    with pytest.raises(ValueError, match="rotation_degree"):
        AugmentConfig.from_params({"rotation_degree": 10})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rotation_degrees", -1),
        ("rotation_degrees", 181),
        ("rotation_degrees", "30"),
        ("rotation_degrees", float("nan")),
        ("shift", 1.5),
        ("shear", -0.1),
        ("shear", True),
        ("zoom", (0.0, 1.2)),
        ("zoom", (1.2, 0.8)),
        ("zoom", 1.2),
        ("brightness", (0.8,)),
        ("brightness", (-0.1, 1.0)),
        ("contrast", (0.5, float("inf"))),
        ("sharpness", ("a", 2.0)),
        ("horizontal_flip", 1),
        ("vertical_flip", "yes"),
        ("enabled", None),
    ],
)
def test_config_rejects_invalid_value(name, value):
    with pytest.raises(ValueError, match=f"augment\\.{name} "):
        AugmentConfig(**{name: value})


@pytest.mark.parametrize("fill", [0, 255, None])
def test_augment_keeps_dtype_shape_and_range(fill):
    images = random_images() if fill is None else np.full((16, 32, 32, 1), fill, np.uint8)
    strong = AugmentConfig(brightness=(0.0, 3.0), contrast=(0.0, 3.0), sharpness=(0.0, 5.0))

    for config in (AugmentConfig(), strong):
        output = augment_batch(images, config, SEED)

        assert output.dtype == tf.float32
        assert output.shape == images.shape
        assert float(tf.reduce_min(output)) >= 0.0
        assert float(tf.reduce_max(output)) <= 255.0


def test_augment_same_seed_same_output():
    images = random_images()

    first = augment_batch(images, AugmentConfig(), SEED).numpy()
    second = augment_batch(images, AugmentConfig(), tf.constant([3, 4], tf.int64)).numpy()
    other = augment_batch(images, AugmentConfig(), tf.constant([3, 5], tf.int64)).numpy()

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_augment_draws_differ_between_samples():
    images = np.repeat(random_images(count=1), 8, axis=0)

    output = augment_batch(images, AugmentConfig(), SEED).numpy()

    for index in range(1, 8):
        assert not np.array_equal(output[0], output[index])


def test_augment_still_config_returns_input():
    images = random_images()

    np.testing.assert_array_equal(augment_batch(images, still_config(), SEED).numpy(), images.astype(np.float32))


def test_augment_disabled_returns_input():
    images = random_images()

    output = augment_batch(images, AugmentConfig(enabled=False), SEED)

    assert output.dtype == tf.float32
    np.testing.assert_array_equal(output.numpy(), images.astype(np.float32))


def test_draws_stay_within_magnitudes():
    config = AugmentConfig()

    draws = draw_augmentation(config, 512, SEED)

    for name, low, high in [
        ("rotation_degrees", -30, 30),
        ("shift_x", -0.2, 0.2),
        ("shift_y", -0.2, 0.2),
        ("shear", -0.1, 0.1),
        ("zoom", 0.8, 1.2),
        ("brightness", 0.8, 1.2),
        ("contrast", 0.5, 1.8),
        ("sharpness", 0.5, 2.2),
    ]:
        values = getattr(draws, name).numpy()
        assert values.min() >= low, name
        assert values.max() <= high, name
        # Uniform draws over the whole range, not a constant.
        assert values.max() - values.min() > 0.9 * (high - low), name
    for name in ("flip_horizontal", "flip_vertical"):
        share = getattr(draws, name).numpy().mean()
        assert 0.4 < share < 0.6, name


def test_brightness_multiplies():
    images = np.full((2, 16, 16, 1), 100, np.uint8)

    output = augment_batch(images, still_config(brightness=(1.2, 1.2)), SEED).numpy()

    np.testing.assert_allclose(output, 120.0, atol=1e-4)


def test_contrast_scales_around_mean():
    images = np.full((1, 16, 16, 1), 100, np.uint8)
    images[:, :, 8:] = 200

    output = augment_batch(images, still_config(contrast=(2.0, 2.0)), SEED).numpy()

    np.testing.assert_allclose(output[:, :, :8], 50.0, atol=1e-3)
    np.testing.assert_allclose(output[:, :, 8:], 250.0, atol=1e-3)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 2.2])
def test_sharpness_matches_pil(factor):
    images = random_images(count=2)

    output = augment_batch(images, still_config(sharpness=(factor, factor)), SEED).numpy()

    for image, result in zip(images, output, strict=True):
        expected = ImageEnhance.Sharpness(Image.fromarray(image[..., 0])).enhance(factor)
        # PIL rounds its blurred image to uint8 before blending, so a factor f away from 1
        # differs by up to about |1 - f| grey levels.
        np.testing.assert_allclose(result[..., 0], np.asarray(expected, np.float32), atol=abs(1 - factor) + 0.51)


def test_horizontal_flip_mirrors():
    images = random_images(count=2)

    output = apply_augmentation(images, with_draws(2, flip_horizontal=True)).numpy()

    np.testing.assert_array_equal(output, images[:, :, ::-1].astype(np.float32))


def test_vertical_flip_mirrors():
    images = random_images(count=2)

    output = apply_augmentation(images, with_draws(2, flip_vertical=True)).numpy()

    np.testing.assert_array_equal(output, images[:, ::-1].astype(np.float32))


def test_flip_config_flips_some_samples():
    images = np.repeat(random_images(count=1), 16, axis=0)

    output = augment_batch(images, still_config(horizontal_flip=True), SEED).numpy()

    mirrored = [np.array_equal(result, images[0, :, ::-1]) for result in output]
    unchanged = [np.array_equal(result, images[0]) for result in output]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert any(mirrored)
    assert any(unchanged)


def test_rotation_turns_clockwise():
    images = random_images(count=2, size=17)

    output = apply_augmentation(images, with_draws(2, rotation_degrees=90.0)).numpy()

    clockwise = np.rot90(images, k=-1, axes=(1, 2)).astype(np.float32)
    np.testing.assert_allclose(output, clockwise, atol=0.05)


def test_shift_moves_content_by_fraction():
    images = random_images(count=1, size=16)

    output = apply_augmentation(images, with_draws(1, shift_x=0.25, shift_y=-0.125)).numpy()

    # 0.25 of 16 columns right, 0.125 of 16 rows up; the uncovered strips are black.
    np.testing.assert_array_equal(output[0, :14, 4:], images[0, 2:, :12].astype(np.float32))
    assert not output[0, :, :4].any()
    assert not output[0, 14:, :].any()


def test_zoom_scales_offsets_from_centre():
    enlarged = apply_augmentation(single_pixel(17, 8, 10), with_draws(1, zoom=2.0)).numpy()[0, ..., 0]
    shrunk = apply_augmentation(np.full((1, 17, 17, 1), 200, np.uint8), with_draws(1, zoom=0.5)).numpy()[0, ..., 0]

    # Two columns right of the centre (8, 8) becomes four.
    assert enlarged[8, 12] == pytest.approx(200.0)
    assert enlarged[8, 10] == pytest.approx(0.0)
    # Shrinking leaves a black frame, the fill for points outside the image.
    assert shrunk[8, 8] == pytest.approx(200.0)
    assert shrunk[0, 0] == 0.0
    assert shrunk[8, 0] == 0.0


def test_shear_shifts_rows_proportionally():
    image = single_pixel(17, 12, 8)

    output = apply_augmentation(image, with_draws(1, shear=0.5)).numpy()[0, ..., 0]

    # Four rows below the centre row 8, so 0.5 * 4 = 2 columns right.
    assert output[12, 10] == pytest.approx(200.0)
    assert output[12, 8] == pytest.approx(0.0)


def test_mixup_weights_in_unit_interval():
    lambdas, partners = mixup_weights(64, 0.4, SEED)

    assert lambdas.dtype == tf.float32
    assert float(tf.reduce_min(lambdas)) >= 0.0
    assert float(tf.reduce_max(lambdas)) <= 1.0
    assert sorted(partners.numpy().tolist()) == list(range(64))


@pytest.mark.parametrize("alpha", [0.01, 0.4, 2.0])
def test_mixup_weights_follow_beta(alpha):
    lambdas = mixup_weights(4000, alpha, SEED)[0].numpy()

    # Compare cumulative shares rather than run a KS test, because for a small alpha float32
    # rounds many weights to exactly 1 and the test assumes no ties.
    for point in (0.1, 0.5, 0.9):
        share = np.mean(lambdas <= point)
        assert share == pytest.approx(stats.beta(alpha, alpha).cdf(point), abs=0.03), point


def test_mixup_blends_images_and_labels():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.float32)[:, None]
    # Every pixel of an image is its own value, so the mixed value recovers the blend.
    values = np.arange(8, dtype=np.float32) * 10 + 5
    images = np.broadcast_to(values[:, None, None, None], (8, 4, 4, 1))

    mixed_images, mixed_labels = mixup(images, labels, 0.4, SEED)
    lambdas, partners = mixup_weights(8, 0.4, SEED)
    lambdas, partners = lambdas.numpy(), partners.numpy()

    expected_images = lambdas * values + (1 - lambdas) * values[partners]
    expected_labels = lambdas * labels[:, 0] + (1 - lambdas) * labels[partners, 0]
    expected_image_array = np.broadcast_to(expected_images[:, None, None, None], (8, 4, 4, 1))
    np.testing.assert_allclose(mixed_images.numpy(), expected_image_array, rtol=1e-6)
    np.testing.assert_allclose(mixed_labels.numpy()[:, 0], expected_labels, rtol=1e-6)
    assert mixed_labels.shape == (8, 1)


def test_mixup_label_matches_image_encoding():
    labels = np.array([0, 1] * 8, np.float32)
    images = np.repeat(labels * 255, 9).reshape(16, 3, 3, 1).astype(np.uint8)

    mixed_images, mixed_labels = mixup(images, labels, 1.0, SEED)

    assert mixed_labels.shape == (16,)
    np.testing.assert_allclose(mixed_images.numpy()[:, 1, 1, 0] / 255.0, mixed_labels.numpy(), atol=1e-6)
    # Some samples must be true blends, or the check above would pass with no mixing at all.
    assert np.any((mixed_labels.numpy() > 0.05) & (mixed_labels.numpy() < 0.95))


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_mixup_alpha_not_positive_disables(alpha):
    images = random_images(count=4)
    labels = np.array([[0], [1], [1], [0]], np.int64)

    mixed_images, mixed_labels = mixup(images, labels, alpha, SEED)

    assert mixed_images.dtype == tf.float32
    assert mixed_labels.dtype == tf.float32
    np.testing.assert_array_equal(mixed_images.numpy(), images.astype(np.float32))
    np.testing.assert_array_equal(mixed_labels.numpy(), labels.astype(np.float32))


def test_mixup_rejects_label_rank():
    with pytest.raises(ValueError, match="labels"):
        mixup(random_images(count=2), np.zeros((2, 1, 1)), 0.4, SEED)
