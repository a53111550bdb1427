"""tf.data input pipelines: class-balanced, augmented training batches and plain validation batches.

The training dataset is infinite, and batch ``k`` is a pure function of the arrays, the
configuration, the base seed and ``k``. Its RNG seed is ``stateless_fold_in([seed, 0], k)``,
split into one seed each for the class draws, the order within the batch, the augmentation
and MixUp. Every random op is stateless, and the parallel ``map`` keeps its input order
(``deterministic=True``). So the sequence of batches is the same in every run with the same
seed, whatever the number of threads, and also under
``tf.config.experimental.enable_op_determinism()``. TensorFlow's stateless RNG promises the same
numbers on the same hardware only, and they may change between TensorFlow versions.

Train with ``model.fit(dataset, epochs=..., steps_per_epoch=default_steps_per_epoch(...))``.
Keras 3.15 (``EpochIterator``) keeps one iterator over an infinite dataset across epochs, so
epoch ``e`` receives batches ``e * steps_per_epoch`` to ``(e + 1) * steps_per_epoch - 1``, and
no epoch repeats another's draws.
"""

import math
from typing import Any

import numpy as np
import tensorflow as tf

from chestct.augment import AugmentConfig, augment_batch, mixup

NORMAL_LABEL = 0
CANCER_LABEL = 1

# Number of seeds split from one step's seed: normal draws, cancer draws, order, augmentation, MixUp.
_STEP_SEEDS = 5


def balanced_training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augment_config: AugmentConfig,
    mixup_alpha: float,
    seed: int,
) -> tf.data.Dataset:
    """Build an infinite dataset of class-balanced, augmented training batches.

    Each batch contains ``batch_size / 2`` normal and ``batch_size / 2`` cancer images, each drawn
    uniformly with replacement from its class, in a random order. Then ``augment_batch`` and,
    when ``mixup_alpha`` is positive, ``mixup`` run on the batch. Fitting needs
    ``steps_per_epoch``; see the module docstring for the order of batches.

    Args:
        images: ``(N, H, W, C) uint8`` training images in [0, 255]; copied into memory once.
        labels: ``(N,)`` integer labels, 0 for normal and 1 for cancer; both must occur.
        batch_size: even number of images per batch.
        augment_config: the augmentation magnitudes.
        mixup_alpha: MixUp's Beta concentration; 0 or below disables MixUp.
        seed: base seed, a non-negative integer below 2**63.

    Returns:
        A dataset of ``(images, labels)``: float32 ``(batch_size, H, W, C)`` in [0, 255] and
        float32 ``(batch_size, 1)`` in [0, 1], which are 0 or 1 without MixUp.

    Raises:
        ValueError: if an argument is invalid; the message names it.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_arrays(images, labels)
    _check_batch_size("train.batch_size", batch_size)
    if batch_size % 2:
        raise ValueError(
            f"train.batch_size must be even so that each batch contains as many normal as cancer images, "
            f"got {batch_size!r}."
        )
    if not isinstance(augment_config, AugmentConfig):
        raise ValueError(f"augment_config must be an AugmentConfig, got {type(augment_config).__name__}.")
    _check_mixup_alpha(mixup_alpha)
    _check_seed(seed)

    for label, name in ((NORMAL_LABEL, "normal"), (CANCER_LABEL, "cancer")):
        if not np.any(labels == label):
            raise ValueError(f"The training labels contain no {name} image (label {label}); both classes are needed.")

    image_table = tf.constant(images)
    normal_indices = tf.constant(np.flatnonzero(labels == NORMAL_LABEL), tf.int64)
    cancer_indices = tf.constant(np.flatnonzero(labels == CANCER_LABEL), tf.int64)
    base_seed = tf.constant([seed, 0], tf.int64)
    half = batch_size // 2

    def make_batch(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        step_seed = tf.random.experimental.stateless_fold_in(base_seed, step)
        normal_seed, cancer_seed, order_seed, augment_seed, mixup_seed = tf.unstack(
            tf.random.experimental.stateless_split(step_seed, num=_STEP_SEEDS)
        )

        normal = _draw_with_replacement(normal_indices, half, normal_seed)
        cancer = _draw_with_replacement(cancer_indices, half, cancer_seed)
        indices = tf.concat([normal, cancer], axis=0)
        batch_labels = tf.concat([tf.fill([half, 1], float(NORMAL_LABEL)), tf.fill([half, 1], float(CANCER_LABEL))], 0)

        # Without shuffling, the first half of every batch would be normal, and MixUp would pair
        # classes by position rather than at random.
        order = tf.argsort(tf.random.stateless_uniform([batch_size], order_seed), stable=True)
        indices = tf.gather(indices, order)
        batch_labels = tf.gather(batch_labels, order)

        batch_images = augment_batch(tf.gather(image_table, indices), augment_config, augment_seed)
        return mixup(batch_images, batch_labels, mixup_alpha, mixup_seed)

    dataset = tf.data.Dataset.counter(start=0, step=1, dtype=tf.int64)
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Build a dataset of a fixed split, in order, without resampling or augmentation.

    Args:
        images: ``(N, H, W, C) uint8`` images in [0, 255]; copied into memory once.
        labels: ``(N,)`` integer labels, 0 or 1.
        batch_size: images per batch; the last batch contains the remainder.

    Returns:
        A finite dataset of ``(images, labels)``: float32 ``(b, H, W, C)`` with the original
        values and float32 ``(b, 1)``.

    Raises:
        ValueError: if an argument is invalid; the message names it.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_arrays(images, labels)
    _check_batch_size("batch_size", batch_size)

    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(images), tf.constant(labels)))
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def default_steps_per_epoch(n_train: int, batch_size: int, factor: float = 2.0) -> int:
    """Return ``ceil(factor * n_train / batch_size)``, steps that cover ``factor`` times the training set.

    Balanced sampling with replacement draws the majority class less often than it occurs, so
    an epoch of ``n_train`` draws leaves many of its images out. An image of a class that makes
    up a share ``p`` of the set is drawn in an epoch with probability about
    ``1 - exp(-factor / (2 p))``. For the 76 % cancer share of the Kaggle training split and a
    factor of 2 that is 0.73.

    Raises:
        ValueError: if an argument is not positive.
    """
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be a positive integer, got {n_train!r}.")
    _check_batch_size("train.batch_size", batch_size)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
        raise ValueError(f"factor must be a positive number, got {factor!r}.")
    return math.ceil(factor * n_train / batch_size)


def _draw_with_replacement(pool: tf.Tensor, count: int, seed: tf.Tensor) -> tf.Tensor:
    positions = tf.random.stateless_uniform([count], seed, minval=0, maxval=tf.size(pool, tf.int64), dtype=tf.int64)
    return tf.gather(pool, positions)


def _to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)[:, None]


def _check_arrays(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or len(images) == 0 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a non-empty (N, H, W, C) uint8 array, got shape {images.shape} and dtype {images.dtype}."
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({len(images)},) to match the images, got {labels.shape}.")
    if not np.isin(labels, (NORMAL_LABEL, CANCER_LABEL)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (cancer), got values {sorted(set(np.unique(labels)))}.")


def _check_batch_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_mixup_alpha(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"augment.mixup_alpha must be a finite number (0 or below disables MixUp), got {value!r}.")


def _check_seed(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {value!r}.")
