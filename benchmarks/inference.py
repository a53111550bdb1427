"""Benchmark inference of the classifier in every serving format, against the machine's compute bound.

Prints, for the same images in one run:

- single-image latency (median and 90th percentile) and batch throughput of each format.
  The Keras model runs through ``model.predict`` in ``chestct.scoring.predict_probabilities``
  (the evaluate stage), a direct call ``model(x, training=False)`` and ``predict_on_batch``
  (the ``.keras`` runner of ``chestct.runtimes``). The SavedModel, TFLite and ONNX exports run
  through ``chestct.runtimes.load_runner``;
- the largest difference of each format's probabilities from Keras ``predict`` on the batch,
  so that a fast but wrong runtime shows;
- the ratio of each TFLite file's single-image latency to that of Keras ``predict`` (target at
  most 0.33);
- floating-point operations per image, counted from the model's layers, and the float32
  matrix-multiply rate of this machine in NumPy and TensorFlow. Together they give the compute
  bound on throughput, and the fastest float32 format's share of it is checked against a
  target of at least 0.75 for DenseNet121 at 224 px and batch 32.

Formats are timed alternately, call by call, so that a machine whose speed drifts affects all
of them alike. The matrix products run alone before the batch calls, between them and alone
after, and the bound is the highest of those rates. Every runtime uses all the CPU cores that
this process may run on.

The model has random weights (``weights="none"``), because timings do not depend on weight
values. ``--model-dir`` benchmarks an existing export folder, such as ``models/export``, instead.

Usage:
    python benchmarks/inference.py
    python benchmarks/inference.py --backbone mobilenetv2 --image-size 160 --formats tflite_float32 onnx
    python benchmarks/inference.py --model-dir models/export
"""

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chestct.export import FORMATS, export_all
from chestct.layers import ChannelAttention, SpatialAttention
from chestct.model import BACKBONES, ModelConfig, build_model
from chestct.runtimes import load_runner, usable_cpu_count
from chestct.scoring import predict_probabilities

# Ways to run the in-memory Keras model. They need no export.
KERAS_METHODS = ("keras_predict", "keras_call", "keras_predict_on_batch")
# Export formats this benchmark times. Keras and HDF5 files would time the same Keras model again.
EXPORT_FORMATS = ("saved_model", "tflite_float32", "tflite_dynamic_range", "tflite_float16", "onnx")
ALL_FORMATS = KERAS_METHODS + EXPORT_FORMATS
# Formats whose convolutions multiply int8 values: LiteRT's dynamic-range quantisation
# quantises the activations of ops that have quantised kernels to 8 bits before each op (LiteRT
# guide "Post-training dynamic range quantization"). The float32 matrix-multiply rate does not
# bound them.
INT8_ARITHMETIC_FORMATS = ("tflite_dynamic_range",)

# Multiply-adds per image of DenseNet121 at 224 px: OpenVINO's model zoo lists 5.724 GFLOPs for
# densenet-121, a multiply-add counted as two operations. Its 1000-class classifier, which
# this model lacks, accounts for 1.0 M of them.
PUBLISHED_DENSENET121_GMACS = 5.724 / 2

# The compute-bound target applies to this configuration.
TARGET_CONFIG = {"backbone": "densenet121", "image_size": 224, "batch_size": 32}
MAX_TFLITE_LATENCY_RATIO = 0.33
MIN_COMPUTE_BOUND_SHARE = 0.75

# Side of the square float32 matrices that measure the matrix-multiply rate: 137 GFLOP per
# product, large enough that threading and memory traffic cost little.
MATMUL_SIZE = 4096
# Fraction of the threads' cores below which the matrix products show that other processes
# took CPU time during the measurement.
BUSY_MACHINE_SHARE = 0.9


def count_multiply_adds(model: keras.Model) -> dict[str, int]:
    """Count the multiply-adds per image of the convolution and dense layers of ``model``.

    Counted layers: ``Conv2D``, ``DepthwiseConv2D``, ``SeparableConv2D``, ``Dense`` and the
    attention layers of ``chestct.layers``. Nested models (the backbone) are walked layer by
    layer. Batch normalisation, activations, pooling, concatenation and other element-wise
    layers are left out, as in the usual published counts, because they cost a few operations
    per value against hundreds per value of a convolution.

    Args:
        model: a built functional Keras model whose layers are each called once.

    Returns:
        Layer name -> multiply-adds for one image, for the layers that have any.

    Raises:
        ValueError: if a counted layer has an unknown spatial size.
    """
    counts = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            counts.update(count_multiply_adds(layer))
            continue
        macs = _layer_multiply_adds(layer)
        if macs:
            counts[layer.name] = macs
    return counts


def _layer_multiply_adds(layer: keras.layers.Layer) -> int:
    # Each output position of a convolution costs one multiply-add per kernel weight. Keras
    # kernels are (kh, kw, in / groups, out), and depthwise kernels (kh, kw, in, multiplier).
    if isinstance(layer, keras.layers.SeparableConv2D):
        kernel_size = _size(layer.depthwise_kernel.shape) + _size(layer.pointwise_kernel.shape)
        return _spatial_positions(layer, layer.output.shape) * kernel_size
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, SpatialAttention)):
        return _spatial_positions(layer, layer.output.shape) * _size(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        # A dense layer on (B, ..., in) applies its kernel at every position of the middle axes.
        return _spatial_positions(layer, layer.input.shape) * _size(layer.kernel.shape)
    if isinstance(layer, ChannelAttention):
        return _size(layer.squeeze_kernel.shape) + _size(layer.excite_kernel.shape)
    return 0


def _spatial_positions(layer: keras.layers.Layer, shape: tuple) -> int:
    middle = shape[1:-1]
    if any(side is None for side in middle):
        raise ValueError(
            f"Layer {layer.name} has an unknown spatial size {tuple(shape)}; build the model at a fixed image size."
        )
    return _size(middle)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def make_matmul_products(size: int = MATMUL_SIZE) -> dict[str, Callable[[], object]]:
    """Return functions that multiply two random ``size`` x ``size`` float32 matrices in NumPy and TensorFlow.

    NumPy runs on its BLAS library's threads (OpenBLAS in NumPy's wheels, one per core unless
    ``OPENBLAS_NUM_THREADS`` sets another count), TensorFlow on its intra-op threads.
    """
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a_tensor, b_tensor = tf.constant(a), tf.constant(b)
    return {
        "numpy": lambda: a @ b,
        # .numpy() waits for the product, should the op run asynchronously.
        "tensorflow": lambda: tf.linalg.matmul(a_tensor, b_tensor).numpy(),
    }


def make_predictors(
    model: keras.Model, export_paths: dict[str, Path], formats: list[str], batch_size: int
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Return, per format, a function from ``(N, S, S, 1)`` float32 images to ``(N,)`` probabilities.

    Args:
        model: the Keras model that the Keras methods run.
        export_paths: export format -> path, for the formats in ``EXPORT_FORMATS``.
        formats: names from ``ALL_FORMATS``, in the order to time them.
        batch_size: images per runtime call, for ``predict`` and the exported runners.
    """
    keras_methods = {
        "keras_predict": lambda images: predict_probabilities(model, images, batch_size=batch_size),
        "keras_call": lambda images: np.asarray(model(images, training=False)).ravel(),
        "keras_predict_on_batch": lambda images: np.asarray(model.predict_on_batch(images)).ravel(),
    }
    predictors = {}
    for format in formats:
        if format in keras_methods:
            predictors[format] = keras_methods[format]
        else:
            predictors[format] = load_runner(export_paths[format], format, batch_size=batch_size).predict
    return predictors


def time_alternately(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, object]]:
    """Time each function, one call of each in turn, after ``warmup`` untimed calls of each.

    Returns:
        Name -> wall-clock seconds of each timed call; name -> CPU seconds of this process
        (all its threads) over all timed calls; name -> the result of its last call.
    """
    results = {}
    for name, function in functions.items():
        for _ in range(warmup):
            results[name] = function()

    times = {name: [] for name in functions}
    cpu_times = dict.fromkeys(functions, 0.0)
    for _ in range(repeats):
        for name, function in functions.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            results[name] = function()
            times[name].append(time.perf_counter() - start)
            cpu_times[name] += time.process_time() - cpu_start
    return times, cpu_times, results


def load_model_dir(model_dir: Path, formats: list[str]) -> tuple[keras.Model, dict[str, Path]]:
    """Load the Keras model of an export folder and check that it contains the requested formats.

    Raises:
        FileNotFoundError: if ``model.keras`` or a requested export is missing.
    """
    keras_path = model_dir / FORMATS["keras"]
    if not keras_path.is_file():
        raise FileNotFoundError(f"{keras_path} not found; give a folder that export_all wrote, such as models/export.")
    paths = {format: model_dir / FORMATS[format] for format in EXPORT_FORMATS}
    missing = [str(paths[format]) for format in formats if format in paths and not paths[format].exists()]
    if missing:
        raise FileNotFoundError(f"Exports {missing} not found in {model_dir}; leave them out with --formats.")
    return keras.models.load_model(keras_path, compile=False), paths


def print_table(results: dict[str, dict], differences: dict[str, float], batch_size: int) -> None:
    """Print one row per format: single-image latency, batch throughput, cores used and probability difference."""
    print()
    header = f"{'format':<24} {'latency median':>15} {'latency p90':>12} {f'batch {batch_size}':>15} {'cores':>6}"
    print(f"{header} {'max |dp|':>9}")
    for name, throughput in results["throughput"].items():
        median = statistics.median(results["latency"][name]) * 1e3
        p90 = float(np.percentile(results["latency"][name], 90)) * 1e3
        print(
            f"{name:<24} {median:>12.1f} ms {p90:>9.1f} ms {throughput:>8.1f} images/s "
            f"{results['cores'][name]:>6.2f} {differences[name]:>9.1e}"
        )
    print("cores: CPU seconds of this process per wall-clock second of the batch calls.")
    print("max |dp|: largest difference of the batch's probabilities from keras_predict's.")


def print_latency_targets(latency: dict[str, list[float]]) -> None:
    """Print each TFLite file's single-image latency as a share of Keras ``predict``'s."""
    if "keras_predict" not in latency:
        print("\nTFLite latency target: not checked, because keras_predict was not timed.")
        return

    reference = statistics.median(latency["keras_predict"])
    print(f"\nTFLite single-image latency / keras_predict (target at most {MAX_TFLITE_LATENCY_RATIO}):")
    for name in latency:
        if name.startswith("tflite_"):
            ratio = statistics.median(latency[name]) / reference
            verdict = "pass" if ratio <= MAX_TFLITE_LATENCY_RATIO else "FAIL"
            print(f"  {name:<22} {ratio:6.3f}  {verdict}")


def print_operation_counts(model: keras.Model, config: dict) -> int:
    """Print the multiply-adds per image of the model and its backbone, and return the model's FLOPs per image."""
    model_macs = sum(count_multiply_adds(model).values())
    backbone_macs = sum(count_multiply_adds(model.get_layer("backbone")).values())

    print("\nOperations per image (multiply-adds of convolutions and dense layers, counted from the layers):")
    print(f"  whole model: {model_macs / 1e9:.3f} GMACs = {2 * model_macs / 1e9:.3f} GFLOP")
    print(f"  backbone:    {backbone_macs / 1e9:.3f} GMACs")
    if config["backbone"] == "densenet121" and config["image_size"] == 224:
        print(
            f"  published DenseNet121 at 224 px: {PUBLISHED_DENSENET121_GMACS:.3f} GMACs "
            f"(backbone / published = {backbone_macs / 1e9 / PUBLISHED_DENSENET121_GMACS:.3f})"
        )
    return 2 * model_macs


def print_compute_bound(results: dict[str, dict], flops_per_image: int, threads: int, config: dict) -> None:
    """Print the matrix-multiply rates and the share of the compute bound that the fastest formats reach.

    The target is checked on the fastest format that computes in float32, because the
    compute bound is a float32 rate. The fastest format in ``INT8_ARITHMETIC_FORMATS`` is
    shown beside it.
    """
    throughput = results["throughput"]
    bound = max(rate for phase in results["matmul"].values() for rate, _ in phase.values())
    print(f"\nfloat32 matrix multiply, {MATMUL_SIZE} x {MATMUL_SIZE}, median GFLOP/s (cores used):")
    for phase, libraries in results["matmul"].items():
        rates = "   ".join(f"{name} {rate / 1e9:6.1f} ({cores:.2f})" for name, (rate, cores) in libraries.items())
        print(f"  {phase + ':':<21} {rates}")
    print(
        f"  compute bound, the highest rate: {bound / 1e9:.1f} GFLOP/s = "
        f"{bound / flops_per_image:.1f} images/s of this model"
    )

    # A large product keeps every thread busy, so when neither library's product got nearly
    # all cores, other processes took CPU time. That lowers the bound more than the
    # throughputs, which do not keep every core busy, and so inflates the share. NOTE: with
    # no other load on 2 vCPUs, NumPy's product used 1.97-1.99 cores and TensorFlow's only
    # about 1.8-1.9, so the threshold suits NumPy's OpenBLAS and may be wrong for other BLAS builds.
    matmul_cores = min(max(cores for _, cores in phase.values()) for phase in results["matmul"].values())
    machine_busy = matmul_cores < BUSY_MACHINE_SHARE * threads
    if machine_busy:
        print(
            f"  WARNING: the matrix products ran on as few as {matmul_cores:.2f} of {threads} cores, so other "
            "processes were using the CPUs. Rerun on an idle machine to check the target."
        )

    print(f"\nshare of the compute bound at batch {config['batch_size']}:")
    float_formats = [name for name in throughput if name not in INT8_ARITHMETIC_FORMATS]
    int8_formats = [name for name in throughput if name in INT8_ARITHMETIC_FORMATS]
    for label, names in (("fastest float32 format", float_formats), ("int8 arithmetic", int8_formats)):
        if not names:
            continue
        fastest = max(names, key=throughput.get)
        rate = flops_per_image * throughput[fastest]
        print(
            f"  {label + ':':<24} {fastest}, {throughput[fastest]:.1f} images/s = {rate / 1e9:.1f} GFLOP/s, "
            f"{rate / bound:.2f} of the bound"
        )
        if names is float_formats:
            print_compute_target(rate / bound, config, machine_busy)


def print_compute_target(share: float, config: dict, machine_busy: bool) -> None:
    """Print whether the fastest float32 format reaches ``MIN_COMPUTE_BOUND_SHARE`` of the compute bound."""
    if config != TARGET_CONFIG:
        print(f"  target at least {MIN_COMPUTE_BOUND_SHARE}: not checked, because it applies to {TARGET_CONFIG}")
        return
    verdict = "pass" if share >= MIN_COMPUTE_BOUND_SHARE else "FAIL"
    if machine_busy:
        verdict += " (unreliable, because the machine was busy)"
    print(f"  target at least {MIN_COMPUTE_BOUND_SHARE}: {verdict}")


def configure_tensorflow_threads(threads: int) -> None:
    """Let TensorFlow run each op, and independent ops, on ``threads`` threads.

    Must run before TensorFlow executes its first op.
    """
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def parse_args() -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="densenet121", help="backbone of the model")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square input in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch for the throughput")
    parser.add_argument("--repeats", type=int, default=5, help="timed batch calls per format")
    parser.add_argument("--latency-repeats", type=int, default=30, help="timed single-image calls per format")
    parser.add_argument(
        "--formats", nargs="+", choices=ALL_FORMATS, default=list(ALL_FORMATS), help="formats to time, in this order"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="export folder to benchmark, such as models/export; --backbone and --image-size are then ignored",
    )
    args = parser.parse_args()

    for name in ("batch_size", "repeats", "latency_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.model_dir is not None and not args.model_dir.is_dir():
        parser.error(f"--model-dir {args.model_dir} is not a folder; give the folder that the export stage wrote.")
    # A format named twice would otherwise be timed twice under one name.
    args.formats = list(dict.fromkeys(args.formats))
    return args


def run(args: argparse.Namespace, export_dir: Path) -> None:
    """Build or load the model, time every format and print the results."""
    threads = usable_cpu_count()
    configure_tensorflow_threads(threads)

    if args.model_dir is not None:
        model, export_paths = load_model_dir(args.model_dir, args.formats)
    else:
        model = build_model(ModelConfig(image_size=args.image_size, backbone=args.backbone, weights="none"))
        start = time.perf_counter()
        export_paths = export_all(model, export_dir)
        print(f"exported to {export_dir} in {time.perf_counter() - start:.0f} s")

    image_size = model.input_shape[1]
    config = {
        "backbone": model.name.removeprefix("chestct_"),
        "image_size": image_size,
        "batch_size": args.batch_size,
    }
    print(
        f"model {model.name}, {image_size} px, batch {args.batch_size}, {threads} threads per runtime "
        f"(TensorFlow intra-op and inter-op, LiteRT, ONNX Runtime intra-op) on {os.cpu_count()} CPUs"
    )

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(args.batch_size, image_size, image_size, 1)).astype(np.float32)
    predictors = make_predictors(model, export_paths, args.formats, args.batch_size)
    reference = predict_probabilities(model, batch, batch_size=args.batch_size)

    results = measure(predictors, batch, args.repeats, args.latency_repeats)
    differences = {name: float(np.max(np.abs(output - reference))) for name, output in results["outputs"].items()}

    print_table(results, differences, args.batch_size)
    print_latency_targets(results["latency"])
    flops_per_image = print_operation_counts(model, config)
    print_compute_bound(results, flops_per_image, threads, config)


def measure(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, repeats: int, latency_repeats: int
) -> dict[str, dict]:
    """Time single-image calls, then batch calls, and float32 matrix products around and between them.

    Returns:
        ``"latency"``: format -> seconds of each single-image call.
        ``"throughput"``: format -> images per second on ``batch``.
        ``"cores"``: format -> CPU seconds of this process per wall-clock second of its batch calls.
        ``"matmul"``: phase (alone before the batch calls, between them, alone after) -> library
        -> (matrix-multiply rate in FLOP/s, cores).
        ``"outputs"``: format -> probabilities of its last batch call.
    """
    single = {name: functools.partial(predict, batch[:1]) for name, predict in predictors.items()}
    latency, _, _ = time_alternately(single, latency_repeats, warmup=3)

    products = make_matmul_products()
    batched = {name: functools.partial(predict, batch) for name, predict in predictors.items()}
    matmul = {"alone, before": time_matmul(products, repeats)}
    # Products between the batch calls see the same machine load as the formats. Products
    # alone show whether the formats' runtimes slow them down.
    between = {f"matmul_{name}": product for name, product in products.items()}
    times, cpu_times, results = time_alternately({**batched, **between}, repeats, warmup=1)
    matmul["between batch calls"] = {
        name: (_matmul_rate(times[f"matmul_{name}"]), cpu_times[f"matmul_{name}"] / sum(times[f"matmul_{name}"]))
        for name in products
    }
    matmul["alone, after"] = time_matmul(products, repeats)

    return {
        "latency": latency,
        "throughput": {name: len(batch) / statistics.median(times[name]) for name in batched},
        "cores": {name: cpu_times[name] / sum(times[name]) for name in batched},
        "matmul": matmul,
        "outputs": {name: results[name] for name in batched},
    }


def time_matmul(products: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Time the matrix products alone, alternately. Return library -> (rate in FLOP/s, cores)."""
    times, cpu_times, _ = time_alternately(products, repeats, warmup=1)
    return {name: (_matmul_rate(times[name]), cpu_times[name] / sum(times[name])) for name in products}


def _matmul_rate(times: list[float]) -> float:
    return 2 * MATMUL_SIZE**3 / statistics.median(times)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="chestct-inference-") as folder:
        try:
            run(args, Path(folder))
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
