"""Random augmentation and MixUp of training batches, as stateless TensorFlow ops.

Every random number comes from a stateless op (``tf.random.stateless_*``) keyed by an explicit
seed, a shape ``(2,)`` integer tensor. So the output is a pure function of the images, the
configuration and the seed: it does not depend on global RNG state, on how many times a
function was traced, or on which tf.data thread runs it. The ops used (stateless RNG,
``ImageProjectiveTransformV3``, depthwise convolution, gather) are deterministic on CPU and run
under ``tf.config.experimental.enable_op_determinism()``.

Augmentation of one image, with its own random draw per image of the batch:

1. photometric, each step clipped to [0, 255] as a PIL ``ImageEnhance`` step on a uint8 image
   would be: brightness ``x * b``; contrast ``mean + c * (x - mean)`` around the image's mean;
   sharpness ``s * x + (1 - s) * smooth(x)``, with PIL's 3x3 SMOOTH kernel, so 1 leaves the image
   unchanged, below 1 blurs and above 1 sharpens;
2. geometric, one bilinear resampling of a composed affine map about the image centre: flips,
   zoom (the same factor on both axes), horizontal shear, rotation, then shift. Pixels that come
   from outside the image are 0, black like air on CT.

The photometric steps come first so that the black fill keeps the value 0 whatever the
contrast factor.
"""

import math
from dataclasses import dataclass, fields
from typing import Any

import tensorflow as tf

PIXEL_MAX = 255.0

# PIL's ImageFilter.SMOOTH, the blur that ImageEnhance.Sharpness blends against.
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))
_SMOOTH_KERNEL_SUM = 13.0

_RANGE_FIELDS = ("zoom", "brightness", "contrast", "sharpness")


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes of the random augmentation; each sample draws uniformly within them.

    Attributes:
        rotation_degrees: angle drawn from ``[-rotation_degrees, rotation_degrees]`` degrees.
        shift: shift along each axis drawn from ``[-shift, shift]``, a fraction of the image's
            width or height.
        shear: horizontal shear factor (the tangent of the shear angle) drawn from
            ``[-shear, shear]``; a pixel ``d`` rows below the centre moves ``shear * d`` columns right.
        zoom: ``(low, high)`` scale factor of the content; above 1 enlarges, below 1 shrinks.
        horizontal_flip: mirror left-right with probability 1/2.
        vertical_flip: mirror top-bottom with probability 1/2.
        brightness: ``(low, high)`` multiplicative factor of the pixel values.
        contrast: ``(low, high)`` factor of the deviation from the image's mean value.
        sharpness: ``(low, high)`` factor as in PIL ``ImageEnhance.Sharpness``.
        enabled: when false, ``augment_batch`` only converts the images to float32.
    """

    rotation_degrees: float = 30.0
    shift: float = 0.2
    shear: float = 0.1
    zoom: tuple[float, float] = (0.8, 1.2)
    horizontal_flip: bool = True
    vertical_flip: bool = True
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.5, 1.8)
    sharpness: tuple[float, float] = (0.5, 2.2)
    enabled: bool = True

    def __post_init__(self):
        _check_number("rotation_degrees", self.rotation_degrees, 0.0, 180.0)
        _check_number("shift", self.shift, 0.0, 1.0)
        _check_number("shear", self.shear, 0.0, 1.0)
        for name in _RANGE_FIELDS:
            # YAML gives lists; a tuple keeps the frozen configuration hashable.
            object.__setattr__(self, name, _check_range(name, getattr(self, name)))
        if self.zoom[0] <= 0:
            raise ValueError(f"augment.zoom must be positive, got {list(self.zoom)!r}.")
        for name in ("horizontal_flip", "vertical_flip", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"augment.{name} must be true or false, got {getattr(self, name)!r}.")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "AugmentConfig":
        """Build a configuration from the augmentation section of ``params.yaml``.

        Missing keys take the defaults above.

        Raises:
            ValueError: if a key is not an augmentation parameter, or a value is invalid.
        """
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(section) - set(names))
        if unknown:
            raise ValueError(f"Unknown augmentation parameters {unknown}; expected some of {names}.")
        return cls(**section)


@dataclass(frozen=True)
class AugmentDraws:
    """Random parameters of one batch's augmentation, one value per sample.

    Attributes:
        rotation_degrees: float32 ``(B,)``.
        shift_x: float32 ``(B,)``, fraction of the width; positive moves the content right.
        shift_y: float32 ``(B,)``, fraction of the height; positive moves the content down.
        shear: float32 ``(B,)``, horizontal shear factor.
        zoom: float32 ``(B,)``, scale factor of the content.
        flip_horizontal: bool ``(B,)``.
        flip_vertical: bool ``(B,)``.
        brightness: float32 ``(B,)``.
        contrast: float32 ``(B,)``.
        sharpness: float32 ``(B,)``.
    """

    rotation_degrees: tf.Tensor
    shift_x: tf.Tensor
    shift_y: tf.Tensor
    shear: tf.Tensor
    zoom: tf.Tensor
    flip_horizontal: tf.Tensor
    flip_vertical: tf.Tensor
    brightness: tf.Tensor
    contrast: tf.Tensor
    sharpness: tf.Tensor

    @classmethod
    def identity(cls, batch_size: int) -> "AugmentDraws":
        """Return draws that leave every image of a batch unchanged."""
        zeros = tf.zeros([batch_size], tf.float32)
        ones = tf.ones([batch_size], tf.float32)
        no = tf.zeros([batch_size], tf.bool)
        return cls(zeros, zeros, zeros, zeros, ones, no, no, ones, ones, ones)


def draw_augmentation(config: AugmentConfig, batch_size: tf.Tensor | int, seed: tf.Tensor) -> AugmentDraws:
    """Draw each sample's augmentation parameters uniformly within the configured magnitudes.

    Each parameter has its own seed split from ``seed``, so changing one magnitude does not
    change the draws of the others.

    Args:
        config: the magnitudes.
        batch_size: number of samples ``B``, a Python int or a scalar int32 tensor.
        seed: shape ``(2,)`` int32 or int64 tensor, a stateless RNG seed.
    """
    keys = tf.random.experimental.stateless_split(seed, num=10)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])

    def uniform(index: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, keys[index], minval=low, maxval=high, dtype=tf.float32)

    def coin(index: int, enabled: bool) -> tf.Tensor:
        return tf.logical_and(enabled, uniform(index, 0.0, 1.0) < 0.5)

    return AugmentDraws(
        rotation_degrees=uniform(0, -config.rotation_degrees, config.rotation_degrees),
        shift_x=uniform(1, -config.shift, config.shift),
        shift_y=uniform(2, -config.shift, config.shift),
        shear=uniform(3, -config.shear, config.shear),
        zoom=uniform(4, *config.zoom),
        flip_horizontal=coin(5, config.horizontal_flip),
        flip_vertical=coin(6, config.vertical_flip),
        brightness=uniform(7, *config.brightness),
        contrast=uniform(8, *config.contrast),
        sharpness=uniform(9, *config.sharpness),
    )


def apply_augmentation(images: tf.Tensor, draws: AugmentDraws) -> tf.Tensor:
    """Apply the photometric then the geometric steps of the module docstring.

    Args:
        images: ``(B, H, W, C)`` values in [0, 255], any real dtype.
        draws: one set of parameters per sample.

    Returns:
        ``(B, H, W, C) float32`` in [0, 255].
    """
    images = tf.cast(images, tf.float32)
    images = adjust_brightness(images, draws.brightness)
    images = adjust_contrast(images, draws.contrast)
    images = adjust_sharpness(images, draws.sharpness)
    images = affine_transform(images, draws)
    return tf.clip_by_value(images, 0.0, PIXEL_MAX)


def augment_batch(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Augment each image of a batch with its own random draw.

    Args:
        images: ``(B, H, W, C)`` values in [0, 255], uint8 or float.
        config: the magnitudes; with ``enabled`` false the images are only cast.
        seed: shape ``(2,)`` int32 or int64 tensor; the same seed gives the same output.

    Returns:
        ``(B, H, W, C) float32`` in [0, 255].
    """
    if not config.enabled:
        return tf.cast(images, tf.float32)
    draws = draw_augmentation(config, tf.shape(images)[0], seed)
    return apply_augmentation(images, draws)


def adjust_brightness(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Multiply each float32 ``(B, H, W, C)`` image by its factor, ``(B,)``, and clip to [0, 255]."""
    return tf.clip_by_value(images * _per_sample(factors), 0.0, PIXEL_MAX)


def adjust_contrast(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Scale each float32 ``(B, H, W, C)`` image's deviation from its mean by its factor, ``(B,)``.

    The mean is over all pixels and channels of the image, as in PIL ``ImageEnhance.Contrast``;
    the result is clipped to [0, 255].
    """
    means = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    factors = _per_sample(factors)
    # A factor of exactly 1 returns the input bit for bit in this form.
    return tf.clip_by_value(factors * images + (1.0 - factors) * means, 0.0, PIXEL_MAX)


def adjust_sharpness(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Blend each float32 ``(B, H, W, C)`` image with its PIL SMOOTH blur; factors are ``(B,)``.

    As in PIL ``ImageEnhance.Sharpness``, the one-pixel border keeps its values, because the
    3x3 blur is undefined there. The result is clipped to [0, 255].
    """
    channels = images.shape[-1]
    kernel = tf.constant(_SMOOTH_KERNEL, tf.float32) / _SMOOTH_KERNEL_SUM
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smooth_interior = tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="VALID")
    blur_change = tf.pad(smooth_interior - images[:, 1:-1, 1:-1, :], [[0, 0], [1, 1], [1, 1], [0, 0]])
    smooth = images + blur_change

    factors = _per_sample(factors)
    return tf.clip_by_value(factors * images + (1.0 - factors) * smooth, 0.0, PIXEL_MAX)


def affine_transform(images: tf.Tensor, draws: AugmentDraws) -> tf.Tensor:
    """Resample each float32 ``(B, H, W, C)`` image through its affine map, bilinear, fill 0.

    The map sends an input pixel ``p`` to ``centre + shift + R S Z F (p - centre)``, with ``F``
    the flips, ``Z`` the zoom, ``S`` the horizontal shear and ``R`` the rotation. Pixel
    coordinates are (column, row) with rows growing downwards, so a positive angle turns the
    image clockwise as displayed. Identity draws return the input exactly.
    """
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    transforms = _output_to_input_transforms(draws, height, width)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def mixup_weights(batch_size: tf.Tensor | int, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw MixUp's weight and partner for each sample of a batch.

    The weight ``lambda ~ Beta(alpha, alpha)`` is ``g1 / (g1 + g2)`` with ``g1, g2`` independent
    ``Gamma(alpha)`` draws. The partners are a random permutation of the batch, so a sample may
    be its own partner.

    Args:
        batch_size: number of samples ``B``, a Python int or a scalar int32 tensor.
        alpha: Beta concentration, positive.
        seed: shape ``(2,)`` int32 or int64 tensor.

    Returns:
        ``lambdas``, float32 ``(B,)`` in [0, 1], and ``partners``, int32 ``(B,)``.
    """
    if not alpha > 0:
        raise ValueError(f"MixUp alpha must be positive to draw weights, got {alpha!r}.")

    keys = tf.random.experimental.stateless_split(seed, num=3)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])
    # g1 / (g1 + g2) = sigmoid(log g1 - log g2), computed from logs because for alpha below about
    # 0.05 float32 Gamma draws hit the smallest normal float and tie.
    log_ratio = _log_gamma_sample(shape, alpha, keys[0]) - _log_gamma_sample(shape, alpha, keys[1])
    lambdas = tf.sigmoid(log_ratio)

    partners = tf.argsort(tf.random.stateless_uniform(shape, keys[2]), stable=True)
    return lambdas, tf.cast(partners, tf.int32)


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mix each sample of a batch with a partner from the same batch (MixUp).

    Sample ``i`` becomes ``lambda_i * x_i + (1 - lambda_i) * x_partner(i)``, and its label the
    same blend of the two labels, with the weights and partners of ``mixup_weights``.

    Args:
        images: ``(B, H, W, C)``, any real dtype.
        labels: ``(B,)`` or ``(B, 1)``, any real dtype; the input pipeline passes ``(B, 1)``.
        alpha: Beta concentration; 0 or below returns the batch unmixed.
        seed: shape ``(2,)`` int32 or int64 tensor.

    Returns:
        ``images`` as float32 ``(B, H, W, C)`` and ``labels`` as float32 in their input shape.
    """
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels, tf.float32)
    if labels.shape.rank not in (1, 2):
        raise ValueError(f"MixUp labels must have shape (B,) or (B, 1), got {labels.shape}.")
    if not alpha > 0:
        return images, labels

    lambdas, partners = mixup_weights(tf.shape(images)[0], alpha, seed)
    image_weights = _per_sample(lambdas)
    label_weights = tf.reshape(lambdas, [-1] + [1] * (labels.shape.rank - 1))

    mixed_images = image_weights * images + (1.0 - image_weights) * tf.gather(images, partners)
    mixed_labels = label_weights * labels + (1.0 - label_weights) * tf.gather(labels, partners)
    return mixed_images, mixed_labels


def _log_gamma_sample(shape: tf.Tensor, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    # Log of a Gamma(alpha) draw, using Gamma(alpha) = Gamma(alpha + 1) * U^(1 / alpha) in law;
    # the log stays finite when the draw itself is below float32's range.
    gamma_key, uniform_key = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shifted = tf.random.stateless_gamma(shape, gamma_key, alpha=alpha + 1.0, dtype=tf.float32)
    # 1 - U lies in (0, 1], so its log is finite.
    uniform = 1.0 - tf.random.stateless_uniform(shape, uniform_key, dtype=tf.float32)
    return tf.math.log(shifted) + tf.math.log(uniform) / alpha


def _output_to_input_transforms(draws: AugmentDraws, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    # ImageProjectiveTransformV3 samples output pixel q at input point M q + b, so it needs the
    # inverse of the forward map: M = F Z^-1 S^-1 R^-1, b = centre - M (centre + shift).
    angles = draws.rotation_degrees * (math.pi / 180.0)
    cos, sin = tf.cos(angles), tf.sin(angles)
    zeros, ones = tf.zeros_like(angles), tf.ones_like(angles)

    inverse_rotation = _matrices(cos, sin, -sin, cos)
    inverse_shear = _matrices(ones, -draws.shear, zeros, ones)
    flip_x = tf.where(draws.flip_horizontal, -1.0, 1.0)
    flip_y = tf.where(draws.flip_vertical, -1.0, 1.0)
    flip_over_zoom = _matrices(flip_x / draws.zoom, zeros, zeros, flip_y / draws.zoom)
    matrices = flip_over_zoom @ inverse_shear @ inverse_rotation

    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    source_x = centre_x + draws.shift_x * width
    source_y = centre_y + draws.shift_y * height
    offset_x = centre_x - matrices[:, 0, 0] * source_x - matrices[:, 0, 1] * source_y
    offset_y = centre_y - matrices[:, 1, 0] * source_x - matrices[:, 1, 1] * source_y

    return tf.stack(
        [matrices[:, 0, 0], matrices[:, 0, 1], offset_x, matrices[:, 1, 0], matrices[:, 1, 1], offset_y, zeros, zeros],
        axis=1,
    )


def _matrices(m00: tf.Tensor, m01: tf.Tensor, m10: tf.Tensor, m11: tf.Tensor) -> tf.Tensor:
    # Stack (B,) entries into (B, 2, 2) matrices.
    return tf.reshape(tf.stack([m00, m01, m10, m11], axis=1), [-1, 2, 2])


def _per_sample(values: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(values, tf.float32), [-1, 1, 1, 1])


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"augment.{name} must be a number from {low:g} to {high:g}, got {value!r}.")


def _check_range(name: str, value: Any) -> tuple[float, float]:
    is_pair = isinstance(value, (list, tuple)) and len(value) == 2
    if not is_pair or any(isinstance(item, bool) or not isinstance(item, (int, float)) for item in value):
        raise ValueError(f"augment.{name} must be a [low, high] pair of numbers, got {value!r}.")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)) or not 0 <= low <= high:
        raise ValueError(f"augment.{name} must satisfy 0 <= low <= high, got {value!r}.")
    return low, high
