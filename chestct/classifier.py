"""The trained classifier as the command line and the web service use it.

``check_model`` finds the model files in a pipeline folder and proves that they belong
together, without loading TensorFlow:

- ``models/threshold.json`` must name the SHA-256 of ``models/model.weights.h5``;
- an exported model (``--model``) must appear with the same SHA-256 in
  ``models/export/manifest.json``, and that manifest must name the same weights;
- the preprocessing and architecture parameters come from ``dvc.lock`` when it records these
  very weights, because ``params.yaml`` may have been edited since training. Without a
  ``dvc.lock`` they come from ``params.yaml``.

``Classifier`` then loads the model once and scores raw file bytes with exactly the
preprocessing of training.
"""

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ruamel.yaml import YAML, YAMLError

from chestct import paths
from chestct.digests import file_md5, file_sha256, path_sha256
from chestct.params import load_params, select_params
from chestct.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

# Digits of the model file's SHA-256 that identify a model version, as git abbreviates commits.
VERSION_DIGITS = 12

PREPROCESS_PARAMS = tuple(f"preprocess.{name}" for name in PreprocessConfig.__dataclass_fields__)
MODEL_PARAMS = tuple(
    f"model.{name}"
    for name in ("backbone", "alpha", "attention", "attention_ratio", "spatial_kernel", "dense_units", "dropout", "l2")
)
INFERENCE_PARAMS = (
    "inference.dicom_window_center",
    "inference.dicom_window_width",
    "inference.max_pixels",
    "inference.max_upload_bytes",
)

# The DVC stage whose recorded parameters describe each group of parameters.
_LOCK_STAGES = {"preprocess": PREPROCESS_PARAMS, "finetune": MODEL_PARAMS}

WEIGHTS_FORMAT = "keras_weights"


class ModelMismatchError(ValueError):
    """Model files that do not belong together, such as a threshold chosen for other weights."""


@dataclass(frozen=True)
class Prediction:
    """One image's cancer probability and the decision at the stored threshold.

    Cancer is predicted when ``probability >= threshold``, as in the evaluate stage.
    """

    probability: float
    threshold: float

    @property
    def diagnosis(self) -> str:
        return "cancer" if self.probability >= self.threshold else "normal"

    @property
    def confidence(self) -> float:
        """Probability of the predicted class: ``p`` for cancer, ``1 - p`` for normal."""
        return self.probability if self.diagnosis == "cancer" else 1.0 - self.probability


@dataclass(frozen=True)
class ModelSource:
    """Checked model files and the parameters they were trained with; see ``check_model``."""

    root: Path
    model_path: Path
    format: str
    sha256: str
    threshold: dict[str, Any]
    params: dict[str, Any]
    params_source: str
    test_metrics: dict[str, Any] | None = field(default=None)

    @property
    def version(self) -> str:
        return self.sha256[:VERSION_DIGITS]

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_params(self.params["preprocess"])

    @property
    def image_size(self) -> int:
        return self.params["preprocess"]["image_size"]


def check_model(root: str | Path = ".", model_path: str | Path | None = None) -> ModelSource:
    """Find and cross-check the model files of the pipeline folder ``root``.

    Args:
        root: the repository root, where ``params.yaml`` and ``models/`` lie.
        model_path: an exported model (``.keras``, ``.h5``, SavedModel directory, ``.tflite``
            or ``.onnx``) listed in the export manifest; None uses the trained weights,
            ``models/model.weights.h5``. A relative path is taken relative to the current
            directory, as a shell user expects.

    Raises:
        FileNotFoundError: if a required file is missing; the message names the stage to run.
        ModelMismatchError: if the files come from different pipeline runs.
        ValueError: if a file is malformed.
    """
    root = Path(root)
    threshold = _read_json(root / paths.THRESHOLD_FILE, "dvc repro evaluate")
    _check_threshold(threshold.get("threshold"), root / paths.THRESHOLD_FILE)
    weights = root / paths.MODEL_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; run `dvc repro` (or `dvc pull`) to create the model.")

    weights_sha256 = file_sha256(weights)
    if threshold.get("model_sha256") != weights_sha256:
        raise ModelMismatchError(
            f"{root / paths.THRESHOLD_FILE} belongs to a model file with SHA-256 {threshold.get('model_sha256')}, "
            f"but {weights} has SHA-256 {weights_sha256}. Run `dvc repro evaluate` (or `dvc checkout`) so that "
            "the threshold is chosen for these weights."
        )

    if model_path is None:
        model_path, format, sha256 = weights, WEIGHTS_FORMAT, weights_sha256
    else:
        model_path, format, sha256 = _check_export(root, Path(model_path), weights_sha256)

    params, params_source = training_params(root, weights)
    return ModelSource(
        root=root,
        model_path=model_path,
        format=format,
        sha256=sha256,
        threshold=threshold,
        params=params,
        params_source=params_source,
        test_metrics=_test_metrics(root / paths.EVALUATE_METRICS),
    )


def training_params(root: Path, weights: Path) -> tuple[dict[str, Any], str]:
    """Return the preprocessing, model and inference parameters, and where the first two came from.

    ``dvc.lock`` records the parameters that produced each stage's outputs. When it records the
    MD5 of ``weights`` as the finetune stage's output, its preprocess and finetune parameters are
    the ones the weights were trained with. The ``inference`` section always comes from
    ``params.yaml``, because no stage uses it.

    Raises:
        ModelMismatchError: if ``dvc.lock`` exists but records other weights.
    """
    params_file = root / paths.PARAMS_FILE
    current = _read_yaml(params_file, load_params)
    inference = _select(current, INFERENCE_PARAMS, params_file)
    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        logger.warning(
            "No dvc.lock in %s, so the preprocessing and model parameters come from %s; "
            "they are right only if that file has not changed since training",
            root,
            params_file,
        )
        return {**_select(current, PREPROCESS_PARAMS + MODEL_PARAMS, params_file), **inference}, str(params_file)

    lock = _read_yaml(lock_file, lambda path: YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8")))
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    recorded = _locked_md5(stages.get("finetune", {}), paths.MODEL_WEIGHTS.as_posix())
    if recorded != file_md5(weights):
        raise ModelMismatchError(
            f"{weights} is not the model file that {lock_file} records for the finetune stage, so the "
            "preprocessing it was trained with is unknown. Run `dvc checkout` to restore the recorded files, "
            "or `dvc repro` to record these."
        )

    params: dict[str, Any] = {}
    for stage, keys in _LOCK_STAGES.items():
        flat = stages.get(stage, {}).get("params", {}).get(paths.PARAMS_FILE, {})
        for key in keys:
            if key not in flat:
                raise ModelMismatchError(f"{lock_file} has no {key} for the {stage} stage; run `dvc repro`.")
            section, name = key.split(".")
            params.setdefault(section, {})[name] = flat[key]
    return {**params, **inference}, str(lock_file)


class Classifier:
    """A loaded model with its threshold and preprocessing; thread-safe.

    Loading imports TensorFlow and the model's runtime, which takes seconds, so create one
    instance per process and share it. Inference calls are serialised by a lock, because the
    runtimes parallelise each call over the cores themselves.
    """

    def __init__(self, source: ModelSource, batch_size: int = 32):
        self.source = source
        self.threshold = float(source.threshold["threshold"])
        self.preprocess = source.preprocess
        self._lock = threading.Lock()
        self._keras_model = None
        self._gradcam_model = None

        if source.format == WEIGHTS_FORMAT:
            from chestct.scoring import architecture_from_params, load_trained_model

            self._keras_model = load_trained_model(architecture_from_params(source.params), source.model_path)
            self.name = self._keras_model.name
            self._runner = None
        else:
            from chestct.runtimes import load_runner

            try:
                self._runner = load_runner(source.model_path, batch_size=batch_size)
            except Exception as error:  # noqa: BLE001 - each runtime raises its own types
                raise ValueError(
                    f"{source.model_path} could not be loaded as {source.format}: {type(error).__name__}: {error}. "
                    "Run `dvc repro export` to write the exports again."
                ) from error
            if self._runner.image_size not in (None, source.image_size):
                raise ModelMismatchError(
                    f"{source.model_path} expects {self._runner.image_size} px images, but the model was trained "
                    f"on {source.image_size} px; export it again with `dvc repro export`."
                )
            self._keras_model = getattr(self._runner, "model", None)
            self.name = self._keras_model.name if self._keras_model is not None else source.model_path.stem
        self.batch_size = batch_size

    @property
    def format(self) -> str:
        return self.source.format if self._runner is None else self._runner.runtime

    @property
    def version(self) -> str:
        return self.source.version

    @property
    def explain_available(self) -> bool:
        """Whether Grad-CAM works: it needs the gradients of a Keras model."""
        return self._keras_model is not None

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` float64 cancer probabilities of ``(N, S, S)`` preprocessed uint8 images."""
        batch = self._as_batch(images)
        with self._lock:
            if self._runner is None:
                from chestct.scoring import predict_probabilities

                return predict_probabilities(self._keras_model, batch, batch_size=self.batch_size)
            return self._runner.predict(batch).astype(np.float64)

    def explain(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Return the Grad-CAM heat map ``(S, S)`` in [0, 1] of one preprocessed image, and its probability.

        Raises:
            ValueError: if the loaded model is not a Keras model.
        """
        if not self.explain_available:
            raise ValueError(f"Grad-CAM needs a Keras model, but {self.source.model_path} is {self.format}.")
        batch = self._as_batch(image[None])
        with self._lock:
            result = self._gradcam()(batch)
        return result.heatmaps[0], float(result.probabilities[0])

    def _gradcam(self):
        # Splitting the model into features and classifier takes a while, so it happens once.
        if self._gradcam_model is None:
            from chestct.gradcam import GradCam

            self._gradcam_model = GradCam(self._keras_model)
        return self._gradcam_model

    def decide(self, probability: float) -> Prediction:
        return Prediction(probability=float(probability), threshold=self.threshold)

    def describe(self) -> dict[str, Any]:
        """Describe the model for people and clients: name, format, version, threshold, test metrics."""
        threshold = self.source.threshold
        return {
            "name": self.name,
            "format": self.format,
            "file": _display_path(self.source.model_path, self.source.root),
            "version": self.version,
            "image_size": self.source.image_size,
            "threshold": {
                "value": self.threshold,
                "method": threshold.get("method"),
                "chosen_on": threshold.get("chosen_on"),
                "validation_sensitivity": threshold.get("sensitivity"),
                "validation_specificity": threshold.get("specificity"),
            },
            "test_metrics": self.source.test_metrics,
            "explain_available": self.explain_available,
            "parameters_from": _display_path(Path(self.source.params_source), self.source.root),
        }

    def _as_batch(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size = self.source.image_size
        if images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(f"Expected preprocessed images of shape (N, {size}, {size}), got {images.shape}.")
        return images[..., None].astype(np.float32)


def _check_export(root: Path, model_path: Path, weights_sha256: str) -> tuple[Path, str, str]:
    if not model_path.exists():
        raise FileNotFoundError(f"Model {model_path} not found; run `dvc repro export` to write the exports.")

    manifest_path = model_path.resolve().parent / paths.EXPORT_MANIFEST.name
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} not found: {model_path} must be one of the files that `dvc repro export` writes "
            f"into {root / paths.EXPORT_DIR}, next to their manifest."
        )
    manifest = _read_json(manifest_path, "dvc repro export")
    by_name = {entry["path"]: (format, entry["sha256"]) for format, entry in manifest.get("formats", {}).items()}
    if model_path.resolve().name not in by_name:
        raise ModelMismatchError(f"{model_path} is not listed in {manifest_path}; pick one of {sorted(by_name)}.")

    format, expected = by_name[model_path.resolve().name]
    sha256 = path_sha256(model_path)
    if sha256 != expected:
        raise ModelMismatchError(
            f"{model_path} has SHA-256 {sha256}, but {manifest_path} records {expected}; the file changed after "
            "export. Run `dvc checkout` or `dvc repro export`."
        )
    if manifest.get("weights_sha256") != weights_sha256:
        raise ModelMismatchError(
            f"The exports in {manifest_path.parent} were made from other weights than {root / paths.MODEL_WEIGHTS}; "
            "run `dvc repro export` (or `dvc checkout`)."
        )
    return model_path, format, sha256


def _check_threshold(value: Any, path: Path) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{path} has threshold {value!r}, but a threshold must be a probability from 0 to 1; "
            "run `dvc repro evaluate` to choose it again."
        )


def _read_json(path: Path, command: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `{command}` first.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); run `{command}` to write it again.") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object; run `{command}` to write it again.")
    return content


def _read_yaml(path: Path, read) -> Any:
    try:
        return read(path)
    except YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({error}); fix it or restore it with git.") from None


def _select(params: dict[str, Any], keys: tuple[str, ...], source: Path) -> dict[str, Any]:
    try:
        return select_params(params, keys, source=source)
    except KeyError as error:
        raise ValueError(f"{error.args[0]} Add it back; the repository's params.yaml lists every key.") from None


def _locked_md5(stage: dict, out_path: str) -> str | None:
    for out in stage.get("outs", []):
        if out.get("path") == out_path:
            return out.get("md5")
    return None


def _test_metrics(path: Path) -> dict[str, Any] | None:
    # The service still runs without evaluation metrics; /model then reports none.
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return dict(report["test"]["metrics"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s has no readable test metrics", path)
        return None


def _display_path(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
