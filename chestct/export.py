"""Export the trained classifier to every serving format and check that the exports agree.

``export_all`` writes the formats in ``FORMATS``. ``compare_exports`` runs each export (see
``chestct.runtimes.load_runner``) on the same images as the Keras model, and
``check_tolerances`` rejects an export whose probabilities drift too far from the Keras ones.

Every TFLite file keeps the SavedModel's unknown batch dimension, so one file serves any batch
size once the interpreter's input is resized.
"""

import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chestct.digests import path_sha256
from chestct.runtimes import Runner

# Export format -> file or directory name inside the output directory.
FORMATS = {
    "keras": "model.keras",
    "h5": "model.h5",
    "saved_model": "saved_model",
    "tflite_float32": "model_float32.tflite",
    "tflite_dynamic_range": "model_dynamic_range.tflite",
    "tflite_float16": "model_float16.tflite",
    # Written only when export_all receives representative images.
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}

# Formats that compute in float32 and so should match the Keras model up to rounding.
FLOAT_FORMATS = ("keras", "h5", "saved_model", "tflite_float32", "onnx")
# Formats that store weights at reduced precision but compute activations in float32.
QUANTISED_FORMATS = ("tflite_dynamic_range", "tflite_float16")
# Formats that also compute activations in int8, within ranges calibrated on sample images.
INTEGER_FORMATS = ("tflite_int8",)

# tf2onnx 1.17 defaults to opset 15. Pinning the opset keeps the file the same when tf2onnx
# changes its default.
ONNX_OPSET = 17


class ToleranceExceededError(ValueError):
    """An export's probabilities differ from the Keras model's by more than the tolerance."""


def export_all(
    model: keras.Model, out_dir: str | Path, representative_images: np.ndarray | None = None
) -> dict[str, Path]:
    """Write ``model`` in every format of ``FORMATS`` into ``out_dir``.

    Args:
        model: a built Keras model with one float32 image input with an unknown batch size.
        out_dir: output directory, created if missing. Existing exports in it are replaced.
        representative_images: ``(N, S, S, 1)`` images in [0, 255] that calibrate the activation
            ranges of a full-integer TFLite model. None skips ``tflite_int8``.

    Returns:
        Export format -> path of the written file or SavedModel directory, in ``FORMATS`` order.

    Raises:
        ValueError: if ``representative_images`` is not a non-empty ``(N, S, S, 1)`` array of
            finite values.
    """
    if representative_images is not None:
        representative_images = _check_representative_images(representative_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {format: out_dir / name for format, name in FORMATS.items()}
    if representative_images is None:
        # A full-integer model left by an earlier export would no longer match this model.
        paths.pop("tflite_int8").unlink(missing_ok=True)

    model.save(paths["keras"])
    # Keras 3.15 logs that HDF5 is a legacy format. The file is still written for consumers
    # that only read HDF5.
    model.save(paths["h5"])

    saved_model = paths["saved_model"]
    # tf.saved_model.save overwrites files but leaves stale ones from an earlier export.
    if saved_model.exists():
        shutil.rmtree(saved_model)
    model.export(saved_model, format="tf_saved_model", verbose=False)

    _write_tflite(paths["tflite_float32"], saved_model)
    _write_tflite(paths["tflite_dynamic_range"], saved_model, optimize=True)
    _write_tflite(paths["tflite_float16"], saved_model, optimize=True, supported_types=[tf.float16])
    if representative_images is not None:
        _write_tflite(
            paths["tflite_int8"],
            saved_model,
            optimize=True,
            representative_dataset=_representative_dataset(representative_images),
            supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8],
        )

    with warnings.catch_warnings():
        # Keras' tf2onnx patch for NumPy 2 probes np.object, which NumPy 2.4 warns about.
        warnings.filterwarnings("ignore", message=r"In the future `np\.object`", category=FutureWarning)
        model.export(paths["onnx"], format="onnx", verbose=False, opset_version=ONNX_OPSET)
    return paths


def _write_tflite(
    path: Path,
    saved_model: Path,
    optimize: bool = False,
    supported_types: list | None = None,
    representative_dataset: Callable[[], Iterator[list[np.ndarray]]] | None = None,
    supported_ops: list | None = None,
) -> None:
    # Converting from the SavedModel keeps its (None, S, S, 1) input signature, so the TFLite
    # input has shape_signature [-1, S, S, 1] and accepts any batch size after a resize.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if optimize:
        # Without a representative dataset, Optimize.DEFAULT gives dynamic-range quantisation:
        # int8 weights, float activations. With one, it quantises the activations too.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if supported_types:
        converter.target_spec.supported_types = supported_types
    if representative_dataset is not None:
        converter.representative_dataset = representative_dataset
    if supported_ops:
        converter.target_spec.supported_ops = supported_ops
    path.write_bytes(converter.convert())


def export_manifest(exported: dict[str, Path], weights_file: str, weights_sha256: str) -> dict:
    """Describe the exports of one weights file, for consumers that must check they belong together.

    Args:
        exported: export format -> path, as ``export_all`` returns it.
        weights_file: path of the weights the exports were made from, as ``threshold.json``
            names it.
        weights_sha256: SHA-256 of that weights file.

    Returns:
        ``weights_file``, ``weights_sha256`` and, per format, the export's file or directory
        name and its SHA-256 (``chestct.digests.path_sha256``).
    """
    formats = {format: {"path": Path(path).name, "sha256": path_sha256(path)} for format, path in exported.items()}
    return {"weights_file": weights_file, "weights_sha256": weights_sha256, "formats": formats}


def _representative_dataset(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate():
        for index in range(len(images)):
            yield [images[index : index + 1]]

    return generate


def _check_representative_images(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 1 or len(images) == 0:
        raise ValueError(f"representative_images must have shape (N, S, S, 1) with N >= 1, got {images.shape}.")
    if not np.isfinite(images).all():
        raise ValueError("representative_images must be finite, got NaN or infinite values.")
    return images


def compare_exports(
    reference_probs: np.ndarray, runners: dict[str, Runner], images: np.ndarray, threshold: float
) -> dict[str, dict[str, float | int]]:
    """Compare each export's probabilities on ``images`` with the Keras model's.

    A decision is "cancer" when the probability is at least ``threshold``.

    Args:
        reference_probs: ``(N,)`` probabilities of the Keras model on ``images``.
        runners: export format -> loaded runner.
        images: ``(N, S, S, 1)`` images in [0, 255].
        threshold: decision threshold, from 0 to 1.

    Returns:
        Export format -> ``max_abs_difference`` and ``mean_abs_difference`` of the
        probabilities, and ``decision_flips``, the number of images whose decision differs
        from the Keras model's.

    Raises:
        ValueError: if ``threshold`` is outside [0, 1], or the reference does not hold one
            probability per image.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}.")
    reference = np.asarray(reference_probs, dtype=np.float64).ravel()
    if len(reference) != len(images):
        raise ValueError(f"reference_probs has {len(reference)} probabilities for {len(images)} images.")

    reference_decisions = reference >= threshold
    comparison = {}
    for format, runner in runners.items():
        probs = runner.predict(images).astype(np.float64)
        if probs.shape != reference.shape:
            raise ValueError(f"{format} returned {probs.shape[0]} probabilities for {len(images)} images.")
        difference = np.abs(probs - reference)
        comparison[format] = {
            "max_abs_difference": float(difference.max()) if len(difference) else 0.0,
            "mean_abs_difference": float(difference.mean()) if len(difference) else 0.0,
            "decision_flips": int(np.count_nonzero((probs >= threshold) != reference_decisions)),
        }
    return comparison


def check_tolerances(
    comparison: dict[str, dict[str, float | int]],
    float_tolerance: float,
    quantised_tolerance: float,
    integer_tolerance: float | None = None,
) -> None:
    """Raise if any export's maximum probability difference exceeds the tolerance of its kind.

    ``FLOAT_FORMATS`` get ``float_tolerance``, ``QUANTISED_FORMATS`` get
    ``quantised_tolerance`` and ``INTEGER_FORMATS`` get ``integer_tolerance``, or
    ``quantised_tolerance`` when it is None. A NaN difference always fails.

    Raises:
        ToleranceExceededError: naming every format over its tolerance, with its difference.
        ValueError: if a tolerance is negative or not finite, or a format is of no known kind.
    """
    if integer_tolerance is None:
        integer_tolerance = quantised_tolerance
    tolerances = {"float": float_tolerance, "quantised": quantised_tolerance, "integer": integer_tolerance}
    for kind, tolerance in tolerances.items():
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < np.inf:
            raise ValueError(f"{kind}_tolerance must be a finite number of at least 0, got {tolerance!r}.")

    kinds = {
        **dict.fromkeys(FLOAT_FORMATS, "float"),
        **dict.fromkeys(QUANTISED_FORMATS, "quantised"),
        **dict.fromkeys(INTEGER_FORMATS, "integer"),
    }
    failures = []
    for format, result in comparison.items():
        if format not in kinds:
            raise ValueError(f"No tolerance for export format {format!r}; expected one of {list(kinds)}.")
        kind = kinds[format]
        difference = result["max_abs_difference"]
        # Written as "not <=" so that a NaN difference fails too.
        if not difference <= tolerances[kind]:
            failures.append(
                f"{format}: max absolute probability difference {difference:.3g} "
                f"exceeds the {kind} tolerance {tolerances[kind]:.3g}"
            )

    if failures:
        raise ToleranceExceededError(
            "Exports disagree with the Keras model: "
            + "; ".join(failures)
            + ". Inspect those exports, or raise the tolerance if the difference is acceptable."
        )
