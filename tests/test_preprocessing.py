import numpy as np
import pytest

from chestct.preprocessing import (
    PreprocessConfig,
    apply_clahe,
    crop_uniform_borders,
    pad_to_square,
    preprocess_image,
    resize_square,
)


def framed_image(frame_value: int = 0, frame: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    inner = rng.integers(40, 220, size=(30, 50), dtype=np.uint8)
    return np.pad(inner, frame, constant_values=frame_value)


@pytest.mark.parametrize("frame_value", [0, 255, 128])
def test_crop_removes_uniform_frame(frame_value):
    image = framed_image(frame_value)

    cropped = crop_uniform_borders(image, tolerance=10)

    assert cropped.shape == (30, 50)


def test_crop_tolerates_noise_within_tolerance():
    image = framed_image()
    image[0, ::3] = 6

    cropped = crop_uniform_borders(image, tolerance=10)

    assert cropped.shape == (30, 50)


def test_crop_keeps_rows_above_tolerance():
    image = framed_image()
    image[0, 3] = 200

    cropped = crop_uniform_borders(image, tolerance=10)

    assert cropped.shape[0] == 30 + 7


def test_crop_keeps_fully_uniform_image():
    image = np.full((20, 30), 17, dtype=np.uint8)

    assert crop_uniform_borders(image, tolerance=0).shape == (20, 30)


def test_pad_centres_on_black_square():
    image = np.full((10, 30), 200, dtype=np.uint8)

    padded = pad_to_square(image)

    assert padded.shape == (30, 30)
    assert (padded[:10] == 0).all()
    assert (padded[10:20] == 200).all()
    assert (padded[20:] == 0).all()


@pytest.mark.parametrize("keep_aspect_ratio", [True, False])
@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (40, 20), (64, 64), (1, 900)])
def test_resize_square_gives_requested_size(shape, keep_aspect_ratio):
    image = np.zeros(shape, dtype=np.uint8)

    assert resize_square(image, 64, keep_aspect_ratio).shape == (64, 64)


def test_resize_square_keeps_aspect_ratio_with_black_bars():
    image = np.full((100, 200), 200, dtype=np.uint8)

    resized = resize_square(image, 64)

    assert (resized[:16] == 0).all()
    assert (resized[16:48] == 200).all()
    assert (resized[48:] == 0).all()


def test_resize_square_stretches_without_aspect_ratio():
    image = np.full((100, 200), 200, dtype=np.uint8)

    assert (resize_square(image, 64, keep_aspect_ratio=False) == 200).all()


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(1)
    image = (100 + rng.integers(0, 10, size=(64, 64))).astype(np.uint8)

    equalised = apply_clahe(image, clip_limit=4.0, tile_grid=4)

    assert equalised.std() > 2 * image.std()


def test_clahe_clip_limit_bounds_contrast_gain():
    rng = np.random.default_rng(1)
    image = (100 + rng.integers(0, 10, size=(64, 64))).astype(np.uint8)

    gentle = apply_clahe(image, clip_limit=1.0, tile_grid=4)
    strong = apply_clahe(image, clip_limit=8.0, tile_grid=4)

    assert gentle.std() < strong.std()


def test_clahe_is_not_global_equalisation():
    # Two halves with different brightness: adaptive equalisation treats them separately, so
    # each half gets stretched on its own, unlike one global histogram.
    rng = np.random.default_rng(2)
    left = 30 + rng.integers(0, 8, size=(64, 32))
    right = 200 + rng.integers(0, 8, size=(64, 32))
    image = np.hstack([left, right]).astype(np.uint8)

    equalised = apply_clahe(image, clip_limit=40.0, tile_grid=2)

    assert equalised[:, :32].std() > 3 * image[:, :32].std()


def test_preprocess_image_shape_and_dtype():
    config = PreprocessConfig(image_size=48)

    result = preprocess_image(framed_image(), config)

    assert result.shape == (48, 48)
    assert result.dtype == np.uint8


def test_preprocess_image_is_deterministic():
    config = PreprocessConfig(image_size=48)

    first = preprocess_image(framed_image(), config)
    second = preprocess_image(framed_image(), config)

    assert np.array_equal(first, second)


def test_preprocess_without_steps_is_plain_resize():
    config = PreprocessConfig(image_size=32, crop_borders=False, keep_aspect_ratio=False, clahe=False)
    image = np.full((64, 64), 90, dtype=np.uint8)

    assert (preprocess_image(image, config) == 90).all()


@pytest.mark.parametrize(
    "image", [np.zeros((0, 5), np.uint8), np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.float32)]
)
def test_preprocess_image_rejects_bad_arrays(image):
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(image, PreprocessConfig(image_size=16))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 0),
        ("image_size", "256"),
        ("image_size", 25.5),
        ("crop_tolerance", -1),
        ("clahe_clip_limit", 0),
        ("clahe_clip_limit", "2"),
        ("clahe_clip_limit", float("inf")),
        ("clahe_tile_grid", 0),
        ("clahe", "yes"),
    ],
)
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=field):
        PreprocessConfig(**{field: value})


def test_config_from_params_ignores_other_keys():
    config = PreprocessConfig.from_params({"image_size": 64, "workers": 2})

    assert config.image_size == 64
