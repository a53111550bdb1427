import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestct.augment import AugmentConfig
from chestct.input_pipeline import balanced_training_dataset, default_steps_per_epoch, validation_dataset
from chestct.paths import REPO_ROOT

OFF = AugmentConfig(enabled=False)


def indexed_split(labels: list[int], size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel is the image's index, so a batch shows which images it drew."""
    indices = np.arange(len(labels), dtype=np.uint8)
    images = np.broadcast_to(indices[:, None, None, None], (len(labels), size, size, 1)).copy()
    return images, np.array(labels, np.int64)


def drawn_indices(batch_images: tf.Tensor) -> np.ndarray:
    return batch_images.numpy()[:, 0, 0, 0].astype(np.int64)


def first_batches(dataset: tf.data.Dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


# 12 normal, 4 cancer: the imbalance the balanced sampling corrects.
IMBALANCED_LABELS = [0] * 12 + [1] * 4


def test_balanced_batches_half_each_class():
    images, labels = indexed_split(IMBALANCED_LABELS)
    dataset = balanced_training_dataset(images, labels, 8, OFF, 0.0, seed=1)

    for batch_images, batch_labels in dataset.take(10):
        assert batch_images.shape == (8, 8, 8, 1)
        assert batch_labels.shape == (8, 1)
        assert batch_images.dtype == tf.float32
        assert batch_labels.dtype == tf.float32
        assert int(tf.reduce_sum(batch_labels)) == 4
        # Each label belongs to the image it came with.
        np.testing.assert_array_equal(labels[drawn_indices(batch_images)], batch_labels.numpy()[:, 0])


def test_balanced_batches_mix_positions():
    images, labels = indexed_split(IMBALANCED_LABELS)
    dataset = balanced_training_dataset(images, labels, 8, OFF, 0.0, seed=1)

    first_label_per_batch = [float(batch_labels[0, 0]) for _, batch_labels in dataset.take(20)]

    assert 0.0 in first_label_per_batch
    assert 1.0 in first_label_per_batch


def test_balanced_sampling_covers_minority():
    images, labels = indexed_split([0] * 14 + [1] * 2)
    dataset = balanced_training_dataset(images, labels, 8, OFF, 0.0, seed=2)

    drawn = np.concatenate([drawn_indices(batch_images) for batch_images, _ in dataset.take(10)])

    # 40 cancer draws from 2 images: each is drawn many times.
    cancer_counts = np.bincount(drawn[labels[drawn] == 1], minlength=16)[14:]
    assert cancer_counts.sum() == 40
    assert cancer_counts.min() >= 10
    assert len(set(drawn[labels[drawn] == 0])) >= 10


def test_balanced_dataset_same_seed_same_batches():
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    labels = np.array(IMBALANCED_LABELS)

    first = first_batches(balanced_training_dataset(images, labels, 8, AugmentConfig(), 0.4, seed=5), 3)
    second = first_batches(balanced_training_dataset(images, labels, 8, AugmentConfig(), 0.4, seed=5), 3)
    other = first_batches(balanced_training_dataset(images, labels, 8, AugmentConfig(), 0.4, seed=6), 3)

    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(first[0][0], other[0][0])
    # Successive batches draw afresh.
    assert not np.array_equal(first[0][0], first[1][0])


def test_balanced_dataset_augmented_in_range():
    images = np.full((16, 32, 32, 1), 255, np.uint8)
    images[:8] = 0
    dataset = balanced_training_dataset(images, np.array([0, 1] * 8), 8, AugmentConfig(), 0.4, seed=3)

    for batch_images, batch_labels in dataset.take(3):
        assert float(tf.reduce_min(batch_images)) >= 0.0
        assert float(tf.reduce_max(batch_images)) <= 255.0
        assert float(tf.reduce_min(batch_labels)) >= 0.0
        assert float(tf.reduce_max(batch_labels)) <= 1.0


def test_keras_fit_continues_batches_across_epochs():
    images, labels = indexed_split(IMBALANCED_LABELS)
    dataset = balanced_training_dataset(images, labels, 4, OFF, 0.0, seed=4)
    expected = [drawn_indices(batch_images).tolist() for batch_images, _ in dataset.take(6)]
    seen = []

    class RecordingModel(keras.Model):
        def train_step(self, data):
            seen.append(drawn_indices(data[0]).tolist())
            return {"loss": tf.constant(0.0)}

    inputs = keras.Input((8, 8, 1))
    model = RecordingModel(inputs, keras.layers.Flatten()(inputs))
    model.compile(run_eagerly=True)
    model.fit(dataset, epochs=2, steps_per_epoch=3, shuffle=False, verbose=0)

    assert seen == expected


def test_balanced_dataset_under_op_determinism(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    labels = np.array(IMBALANCED_LABELS)
    expected = first_batches(balanced_training_dataset(images, labels, 8, AugmentConfig(), 0.4, seed=5), 2)
    # Op determinism cannot be switched off again in a process, so it runs in a fresh one.
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import tensorflow as tf
        from chestct.augment import AugmentConfig
        from chestct.input_pipeline import balanced_training_dataset

        tf.config.experimental.enable_op_determinism()
        images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
        labels = np.array([0] * 12 + [1] * 4)
        dataset = balanced_training_dataset(images, labels, 8, AugmentConfig(), 0.4, seed=5)
        arrays = [array.numpy() for batch in dataset.take(2) for array in batch]
        np.savez(sys.argv[1], *arrays)
        """
    )
    output = tmp_path / "batches.npz"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", script, str(output)], check=True, env=environment, timeout=120)
    with np.load(output) as saved:
        arrays = [saved[f"arr_{index}"] for index in range(4)]

    for (expected_images, expected_labels), index in zip(expected, (0, 2), strict=True):
        np.testing.assert_array_equal(arrays[index], expected_images)
        np.testing.assert_array_equal(arrays[index + 1], expected_labels)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"batch_size": 7}, "train.batch_size must be even"),
        ({"batch_size": 0}, "train.batch_size must be a positive integer"),
        ({"batch_size": 8.0}, "train.batch_size"),
        ({"mixup_alpha": float("nan")}, "augment.mixup_alpha"),
        ({"mixup_alpha": "0.4"}, "augment.mixup_alpha"),
        ({"seed": -1}, "seed"),
        ({"augment_config": {"enabled": False}}, "augment_config"),
        ({"labels": np.zeros(16, np.int64)}, "no cancer image"),
        ({"labels": np.ones(16, np.int64)}, "no normal image"),
        ({"labels": np.full(16, 2)}, "labels must be 0"),
        ({"labels": np.zeros(15, np.int64)}, "labels must have shape"),
        ({"images": np.zeros((16, 8, 8, 1), np.float32)}, "images must be"),
        ({"images": np.zeros((16, 8, 8), np.uint8)}, "images must be"),
    ],
)
def test_balanced_dataset_rejects_invalid_argument(changes, match):
    images, labels = indexed_split(IMBALANCED_LABELS)
    arguments = {
        "images": images,
        "labels": labels,
        "batch_size": 8,
        "augment_config": OFF,
        "mixup_alpha": 0.0,
        "seed": 1,
        **changes,
    }

    with pytest.raises(ValueError, match=match):
        balanced_training_dataset(**arguments)


def test_validation_dataset_in_order_unaltered():
    images = np.random.default_rng(1).integers(0, 256, (10, 16, 16, 1), dtype=np.uint8)
    labels = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0])

    batches = first_batches(validation_dataset(images, labels, 4), 10)

    assert [len(batch_images) for batch_images, _ in batches] == [4, 4, 2]
    all_images = np.concatenate([batch_images for batch_images, _ in batches])
    all_labels = np.concatenate([batch_labels for _, batch_labels in batches])
    np.testing.assert_array_equal(all_images, images.astype(np.float32))
    np.testing.assert_array_equal(all_labels, labels[:, None].astype(np.float32))
    assert batches[0][0].dtype == np.float32
    assert batches[0][1].dtype == np.float32


def test_validation_dataset_repeats_identically():
    images, labels = indexed_split(IMBALANCED_LABELS)
    dataset = validation_dataset(images, labels, 5)

    first = first_batches(dataset, 4)
    second = first_batches(dataset, 4)

    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_validation_dataset_rejects_batch_size(batch_size):
    images, labels = indexed_split(IMBALANCED_LABELS)

    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        validation_dataset(images, labels, batch_size)


@pytest.mark.parametrize(
    ("n_train", "batch_size", "factor", "expected"),
    [(613, 32, 2.0, 39), (64, 32, 2.0, 4), (65, 32, 1.0, 3), (1, 32, 2.0, 1)],
)
def test_default_steps_per_epoch(n_train, batch_size, factor, expected):
    assert default_steps_per_epoch(n_train, batch_size, factor) == expected


@pytest.mark.parametrize(
    ("n_train", "batch_size", "factor", "match"),
    [(0, 32, 2.0, "n_train"), (613, 0, 2.0, "batch_size"), (613, 32, 0.0, "factor"), (613, 32, float("inf"), "factor")],
)
def test_default_steps_per_epoch_rejects(n_train, batch_size, factor, match):
    with pytest.raises(ValueError, match=match):
        default_steps_per_epoch(n_train, batch_size, factor)
