"""Paths of the pipeline's files, relative to the repository root.

``dvc.yaml`` names the same paths; ``tests/test_dvc_yaml.py`` checks that both agree.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = "params.yaml"

RAW_DIR = Path("data/raw")
RAW_IMAGES_DIR = RAW_DIR / "images"
RAW_MANIFEST = RAW_DIR / "manifest.csv"

AUDIT_FILES = Path("data/audit/files.csv")
DATA_METRICS = Path("metrics/data.json")
DUPLICATES_REPORT = Path("reports/duplicates.csv")

PREPROCESSED_DIR = Path("data/preprocessed")
PREPROCESS_METRICS = Path("metrics/preprocess.json")


def images_file(split: str) -> Path:
    """Return the path of a split's preprocessed image array, ``(N, size, size, 1) uint8``."""
    return PREPROCESSED_DIR / f"{split}_images.npy"


def index_file(split: str) -> Path:
    """Return the path of the CSV that describes each row of a split's image array."""
    return PREPROCESSED_DIR / f"{split}.csv"


MODELS_DIR = Path("models")
PHASE1_WEIGHTS = MODELS_DIR / "phase1.weights.h5"
MODEL_WEIGHTS = MODELS_DIR / "model.weights.h5"
MODEL_KERAS = MODELS_DIR / "model.keras"

TRAIN_LIVE_DIR = Path("dvclive/train")
FINETUNE_LIVE_DIR = Path("dvclive/finetune")

THRESHOLD_FILE = MODELS_DIR / "threshold.json"
PREDICTIONS_FILE = Path("data/evaluate/predictions.csv")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_LIVE_DIR = Path("dvclive/evaluate")

EXPORT_DIR = MODELS_DIR / "export"
# Links every exported file to the weights it was exported from, by SHA-256.
EXPORT_MANIFEST = EXPORT_DIR / "manifest.json"
EXPORT_METRICS = Path("metrics/export.json")
