"""Load an exported classifier in any format behind one ``predict`` interface.

Every runner takes ``(N, S, S, 1)`` float32 grey values in [0, 255], the input of the Keras
model from ``chestct.model.build_model``, and returns the ``(N,)`` cancer probabilities. The
runtimes are Keras (``.keras`` and legacy ``.h5``), TensorFlow (a SavedModel directory and its
``serving_default`` signature), LiteRT (``.tflite``) and ONNX Runtime (``.onnx``).

TensorFlow, LiteRT and ONNX Runtime are imported only when a runner for them is loaded, so
loading one format does not pay for the others.
"""

import os
from pathlib import Path

import numpy as np

# Runtime name -> how a path in that format looks, for error messages.
RUNTIMES = {
    "keras": "a .keras file",
    "h5": "a .h5 file",
    "saved_model": "a SavedModel directory containing saved_model.pb",
    "tflite": "a .tflite file",
    "onnx": "an .onnx file",
}

# Export format (chestct.export.FORMATS) -> runtime that loads it. load_runner accepts both.
FORMAT_RUNTIMES = {
    "keras": "keras",
    "h5": "h5",
    "saved_model": "saved_model",
    "tflite_float32": "tflite",
    "tflite_dynamic_range": "tflite",
    "tflite_float16": "tflite",
    "tflite_int8": "tflite",
    "onnx": "onnx",
}

_SUFFIX_RUNTIMES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite", ".onnx": "onnx"}

DEFAULT_BATCH_SIZE = 32


def detect_format(path: str | Path) -> str:
    """Return the runtime name in ``RUNTIMES`` for ``path``, from its suffix or SavedModel layout.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``path`` is neither a known file type nor a SavedModel directory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Exported model {path} not found.")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
    elif path.suffix.lower() in _SUFFIX_RUNTIMES:
        return _SUFFIX_RUNTIMES[path.suffix.lower()]

    expected = ", ".join(RUNTIMES.values())
    raise ValueError(f"Cannot detect the model format of {path}: expected one of {expected}.")


class Runner:
    """An exported classifier that predicts cancer probabilities in batches.

    Subclasses implement ``_predict_batch``, which maps one ``(B, S, S, 1)`` float32 batch to
    ``B`` probabilities in any shape that ravels to ``(B,)``.
    """

    def __init__(self, path: Path, runtime: str, batch_size: int = DEFAULT_BATCH_SIZE):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.path = path
        self.runtime = runtime
        self.batch_size = batch_size
        # Side of the square input the model was exported for; subclasses read it from the file.
        self.image_size: int | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predict ``(N,)`` float32 cancer probabilities for ``(N, S, S, 1)`` images in [0, 255].

        Raises:
            ValueError: if ``images`` is not a 4-D array with one channel, or its size is not
                the model's input size.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[-1] != 1:
            raise ValueError(f"images must have shape (N, S, S, 1), got {images.shape}.")
        # Some runtimes (TFLite, SavedModel) would otherwise accept another size and return
        # plausible but meaningless probabilities.
        if self.image_size is not None and images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.path} expects {self.image_size}x{self.image_size} images, got "
                f"{images.shape[1]}x{images.shape[2]}; preprocess with the same image_size as in training."
            )

        batches = [
            np.asarray(self._predict_batch(images[start : start + self.batch_size]), dtype=np.float32).ravel()
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.float32)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class KerasRunner(Runner):
    """A ``.keras`` or ``.h5`` model loaded with ``keras.models.load_model``."""

    def __init__(self, path: Path, runtime: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(path, runtime, batch_size)
        import keras

        # The chestct package registers its custom layers when Keras is imported. compile=False
        # skips restoring the loss and optimizer, which inference does not use.
        self.model = keras.models.load_model(path, compile=False)
        self.image_size = _known_size(self.model.input_shape[1])

    def _predict_batch(self, batch):
        return self.model.predict_on_batch(batch)


class SavedModelRunner(Runner):
    """A SavedModel directory, run through its ``serving_default`` signature."""

    def __init__(self, path: Path, runtime: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(path, runtime, batch_size)
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        if "serving_default" not in self.loaded.signatures:
            raise ValueError(f"SavedModel {path} has no serving_default signature.")
        self.signature = self.loaded.signatures["serving_default"]
        self.input_name = _single_name(path, "input", list(self.signature.structured_input_signature[1]))
        self.output_name = _single_name(path, "output", list(self.signature.structured_outputs))
        self.image_size = _known_size(self.signature.structured_input_signature[1][self.input_name].shape[1])

    def _predict_batch(self, batch):
        outputs = self.signature(**{self.input_name: self._tf.constant(batch)})
        return outputs[self.output_name].numpy()


class TFLiteRunner(Runner):
    """A ``.tflite`` model run by the LiteRT interpreter, resized to each batch size.

    TensorFlow 2.21 deprecates ``tf.lite.Interpreter`` in favour of ``ai_edge_litert`` and
    warns on every construction, so this runner uses ``ai_edge_litert.interpreter``.
    """

    def __init__(self, path: Path, runtime: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(path, runtime, batch_size)
        from ai_edge_litert.interpreter import Interpreter

        # The interpreter defaults to one thread (ai_edge_litert 2.3), which leaves the other
        # cores idle.
        self.interpreter = Interpreter(model_path=str(path), num_threads=usable_cpu_count())
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        _single_name(path, "input", [detail["name"] for detail in inputs])
        _single_name(path, "output", [detail["name"] for detail in outputs])
        self.input_detail, self.output_detail = inputs[0], outputs[0]
        for role, detail in (("input", self.input_detail), ("output", self.output_detail)):
            if detail["dtype"] != np.float32:
                raise ValueError(
                    f"TFLite model {path} has a {np.dtype(detail['dtype']).name} {role}; "
                    "this runner supports float32 input and output only."
                )
        self._allocated_batch = None
        self.image_size = _known_size(self.input_detail["shape_signature"][1])

    def _predict_batch(self, batch):
        # A model converted with an unknown batch size still allocates for batch 1, so each new
        # batch size needs a resize followed by a fresh allocation.
        if self._allocated_batch != len(batch):
            self.interpreter.resize_tensor_input(self.input_detail["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self._allocated_batch = len(batch)
        self.interpreter.set_tensor(self.input_detail["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_detail["index"])


class ONNXRunner(Runner):
    """An ``.onnx`` model run by ONNX Runtime on the CPU."""

    def __init__(self, path: Path, runtime: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(path, runtime, batch_size)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # By default ONNX Runtime starts one pinned thread per physical core (its threading
        # guide), even where taskset or a container allows fewer cores.
        options.intra_op_num_threads = usable_cpu_count()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = _single_name(path, "input", [node.name for node in self.session.get_inputs()])
        _single_name(path, "output", [node.name for node in self.session.get_outputs()])
        self.image_size = _known_size(self.session.get_inputs()[0].shape[1])

    def _predict_batch(self, batch):
        return self.session.run(None, {self.input_name: batch})[0]


_RUNNER_CLASSES = {
    "keras": KerasRunner,
    "h5": KerasRunner,
    "saved_model": SavedModelRunner,
    "tflite": TFLiteRunner,
    "onnx": ONNXRunner,
}


def load_runner(path: str | Path, format: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Runner:
    """Load the exported model at ``path`` for prediction.

    Args:
        path: a model file, or a SavedModel directory.
        format: a runtime name (``RUNTIMES``) or an export format (``chestct.export.FORMATS``).
            None detects the runtime from ``path`` with ``detect_format``.
        batch_size: number of images passed to the runtime at a time.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the format is unknown or cannot be detected, or the model does not have
            exactly one input and one output.
    """
    path = Path(path)
    if format is None:
        runtime = detect_format(path)
    elif format in FORMAT_RUNTIMES:
        runtime = FORMAT_RUNTIMES[format]
    elif format in RUNTIMES:
        runtime = format
    else:
        known = sorted(set(RUNTIMES) | set(FORMAT_RUNTIMES))
        raise ValueError(f"Unknown model format {format!r}; expected one of {known} or None to detect it.")

    if not path.exists():
        raise FileNotFoundError(f"Exported model {path} not found.")
    return _RUNNER_CLASSES[runtime](path, runtime, batch_size)


def load_runners(paths: dict[str, str | Path], batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Runner]:
    """Load one runner per export format, as ``export_all`` returns the paths."""
    return {format: load_runner(path, format, batch_size) for format, path in paths.items()}


def usable_cpu_count() -> int:
    """Return the number of CPUs this process may run on, from its affinity mask where the OS has one."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _known_size(dimension) -> int | None:
    # Unknown dimensions appear as None, -1 or a symbolic name, depending on the runtime.
    return int(dimension) if isinstance(dimension, (int, np.integer)) and dimension > 0 else None


def _single_name(path: Path, role: str, names: list[str]) -> str:
    if len(names) != 1:
        raise ValueError(f"Exported model {path} must have exactly one {role}, got {len(names)}: {names}.")
    return names[0]
