"""Benchmark the training input pipeline against training on in-memory tensors.

For one model configuration, prints in one run:

- batches per second of ``balanced_training_dataset`` alone (sampling, augmentation, MixUp);
- training steps per second fed by that pipeline;
- training steps per second of the same model fed one in-memory batch of the same shapes,
  repeated, which costs next to nothing to produce;
- their ratio, the share of training speed that the real pipeline keeps (1.0 means the
  pipeline costs training no time).

With ``--determinism-cost`` it also times training with and without TensorFlow's op
determinism, each in a fresh process, because op determinism cannot be switched off again.

The images are random uint8 arrays of the preprocessed shape, so no dataset is needed.

Usage:
    python benchmarks/train_input.py --config cpu
    python benchmarks/train_input.py --config densenet121 --steps 5
"""

import argparse
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from chestct.augment import AugmentConfig
from chestct.input_pipeline import balanced_training_dataset
from chestct.model import ModelConfig, build_model, compile_model
from chestct.paths import REPO_ROOT

MOBILENET_WEIGHTS = (
    REPO_ROOT.parent / "shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
)
CONFIGS = {
    "cpu": {"image_size": 160, "backbone": "mobilenetv2", "alpha": 0.35},
    "densenet121": {"image_size": 224, "backbone": "densenet121", "alpha": 1.0},
}


def make_model(name: str) -> keras.Model:
    """Build and compile the phase 1 model of a named configuration, without downloads."""
    settings = CONFIGS[name]
    weights = str(MOBILENET_WEIGHTS) if name == "cpu" and MOBILENET_WEIGHTS.is_file() else "none"
    model = build_model(ModelConfig(**settings, weights=weights))
    compile_model(model, learning_rate=1e-4)
    return model


def random_split(size: int, count: int = 613) -> tuple[np.ndarray, np.ndarray]:
    """Return random uint8 images ``(count, size, size, 1)`` and labels with 148 normals."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, size, size, 1), dtype=np.uint8)
    labels = (np.arange(count) >= 148).astype(np.int64)
    return images, labels


def batches_per_second(dataset: tf.data.Dataset, batches: int) -> float:
    """Time how fast a dataset produces batches, after a warm-up."""
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def steps_per_second(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> float:
    """Time training steps: one warm-up epoch of ``steps`` steps, then one timed epoch."""
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)


def measure(name: str, batch_size: int, steps: int) -> dict:
    """Measure the pipeline alone, training fed by it, and training fed in-memory tensors."""
    size = CONFIGS[name]["image_size"]
    images, labels = random_split(size)
    pipeline = balanced_training_dataset(images, labels, batch_size, AugmentConfig(), 0.2, seed=0)

    first_images, first_labels = next(iter(pipeline))
    in_memory = tf.data.Dataset.from_tensors((first_images, first_labels)).repeat()

    model = make_model(name)
    results = {"pipeline_batches_per_s": batches_per_second(pipeline, max(20, steps))}
    results["in_memory_steps_per_s"] = steps_per_second(model, in_memory, steps)
    results["pipeline_steps_per_s"] = steps_per_second(model, pipeline, steps)
    results["ratio"] = results["pipeline_steps_per_s"] / results["in_memory_steps_per_s"]
    return results


def determinism_cost(name: str, batch_size: int, steps: int) -> dict:
    """Time training on in-memory tensors with and without op determinism, in fresh processes."""
    rates = {}
    for setting in ("off", "on"):
        command = [sys.executable, __file__, "--config", name, "--batch-size", str(batch_size)]
        command += ["--steps", str(steps), "--training-run", setting]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rates[setting] = json.loads(output.strip().splitlines()[-1])["in_memory_steps_per_s"]
    return {"steps_per_s_without": rates["off"], "steps_per_s_with": rates["on"], "ratio": rates["on"] / rates["off"]}


def training_run(name: str, batch_size: int, steps: int, op_determinism: bool) -> None:
    """Print in-memory training steps per second as JSON, for ``determinism_cost``."""
    keras.utils.set_random_seed(0)
    if op_determinism:
        tf.config.experimental.enable_op_determinism()
    images, labels = random_split(CONFIGS[name]["image_size"], count=batch_size)
    batch = (tf.cast(images, tf.float32), tf.cast(labels, tf.float32)[:, None])
    rate = steps_per_second(make_model(name), tf.data.Dataset.from_tensors(batch).repeat(), steps)
    print(json.dumps({"in_memory_steps_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="model configuration")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--determinism-cost", action="store_true", help="also time op determinism on and off")
    parser.add_argument("--training-run", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.training_run:
        training_run(args.config, args.batch_size, args.steps, args.training_run == "on")
        return

    print(f"config {args.config} {CONFIGS[args.config]}, batch {args.batch_size}, {os.cpu_count()} CPUs")
    results = measure(args.config, args.batch_size, args.steps)
    print(f"input pipeline alone:          {results['pipeline_batches_per_s']:8.2f} batches/s")
    print(f"training, in-memory tensors:   {results['in_memory_steps_per_s']:8.2f} steps/s")
    print(f"training, real input pipeline: {results['pipeline_steps_per_s']:8.2f} steps/s")
    print(f"ratio real / in-memory:        {results['ratio']:8.2f}")

    if args.determinism_cost:
        cost = determinism_cost(args.config, args.batch_size, args.steps)
        print(f"training without op determinism: {cost['steps_per_s_without']:8.2f} steps/s")
        print(f"training with op determinism:    {cost['steps_per_s_with']:8.2f} steps/s")
        print(f"ratio with / without:            {cost['ratio']:8.2f}")


if __name__ == "__main__":
    main()
