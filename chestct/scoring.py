"""Scoring preprocessed images with the trained model."""

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from chestct.digests import file_sha256
from chestct.model import ModelConfig, build_model

__all__ = [
    "ARCHITECTURE_PARAMS",
    "architecture_from_params",
    "file_sha256",
    "load_trained_model",
    "predict_probabilities",
]

# Parameters that fix the classifier's architecture, and so the shape of its weights file.
ARCHITECTURE_PARAMS = (
    "preprocess.image_size",
    *(
        f"model.{name}"
        for name in (
            "backbone",
            "alpha",
            "attention",
            "attention_ratio",
            "spatial_kernel",
            "dense_units",
            "dropout",
            "l2",
        )
    ),
)


def architecture_from_params(params: dict) -> ModelConfig:
    """Build the model configuration from parameters loaded with ``ARCHITECTURE_PARAMS``."""
    return ModelConfig.from_params({**params["model"], "weights": "none"}, params["preprocess"]["image_size"])


def load_trained_model(config: ModelConfig, weights_path: Path) -> keras.Model:
    """Rebuild the classifier from its configuration and load trained weights into it.

    The backbone is built without pretrained weights, because the trained weights replace
    all of them; this also avoids a download of ImageNet weights.

    Raises:
        FileNotFoundError: if ``weights_path`` does not exist.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found; run the finetune stage first (dvc repro finetune).")

    model = build_model(replace(config, weights="none"))
    model.load_weights(weights_path)
    return model


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Return the cancer probability of each image.

    Args:
        images: ``(N, size, size, 1) uint8`` preprocessed images.

    Returns:
        ``(N,) float64`` probabilities in [0, 1].
    """
    probabilities = model.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(probabilities, dtype=np.float64).reshape(-1)
