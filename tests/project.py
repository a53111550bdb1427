"""A small trained-model folder laid out as the pipeline leaves it, for inference tests.

``make_project`` writes ``params.yaml``, ``models/model.weights.h5``, ``models/threshold.json``
and ``metrics/evaluate.json`` for a MobileNetV2 of width 0.35, so that the command line, the
web service and the web page load a real Keras model exactly as they would after ``dvc repro``.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from chestct import paths
from chestct.paths import REPO_ROOT
from tests.datasets import MOBILENET_V2_035_WEIGHTS
from tests.pipeline import PipelineRepo

# Small enough to build in a few seconds; 64 px keeps a 2x2 feature map for Grad-CAM.
TINY_PARAMS = {
    "preprocess.image_size": 64,
    "model.backbone": "mobilenetv2",
    "model.alpha": 0.35,
    "model.weights": str(MOBILENET_V2_035_WEIGHTS) if MOBILENET_V2_035_WEIGHTS.is_file() else "none",
    "model.dense_units": [16, 8],
}

TEST_METRICS = {"auc": 0.9, "sensitivity": 0.85, "specificity": 0.8}


def write_params(root: Path, overrides: dict) -> None:
    """Override dotted keys in ``root/params.yaml``, which starts as a copy of the repository's."""
    if not (root / "params.yaml").is_file():
        shutil.copyfile(REPO_ROOT / "params.yaml", root / "params.yaml")
    PipelineRepo(root).set_params(overrides)


def make_project(root: Path, overrides: dict | None = None, threshold: float = 0.5, seed: int = 0) -> Path:
    """Write a model, its threshold and its test metrics into ``root``; return ``root``."""
    import keras

    from chestct.model import ModelConfig, build_model
    from chestct.scoring import file_sha256

    params = {**TINY_PARAMS, **(overrides or {})}
    root.mkdir(parents=True, exist_ok=True)
    write_params(root, params)

    keras.utils.set_random_seed(seed)
    model_section = {key.split(".", 1)[1]: value for key, value in params.items() if key.startswith("model.")}
    config = ModelConfig.from_params(model_section, params["preprocess.image_size"])
    model = build_model(config)
    # Random head weights give probabilities near 0.5 for every image; scaling the last
    # kernel spreads them, so that images get different diagnoses.
    head = model.get_layer("cancer_probability")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 20.0, bias])

    weights = root / paths.MODEL_WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(weights)

    threshold_record = {
        "threshold": threshold,
        "method": "youden",
        "chosen_on": "valid",
        "sensitivity": 0.9,
        "specificity": 0.8,
        "model_file": paths.MODEL_WEIGHTS.as_posix(),
        "model_sha256": file_sha256(weights),
    }
    (root / paths.THRESHOLD_FILE).write_text(json.dumps(threshold_record, indent=2), encoding="utf-8")

    metrics = {"threshold": threshold_record, "test": {"n_samples": 10, "metrics": TEST_METRICS}}
    (root / paths.EVALUATE_METRICS).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.EVALUATE_METRICS).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return root


def copy_project(source: Path, root: Path) -> Path:
    """Copy a project made by ``make_project``, so a test can damage its copy."""
    shutil.copytree(source, root)
    return root


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Return ``(count, size, size) uint8`` noise images."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size), dtype=np.uint8)
