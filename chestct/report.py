"""Files that the evaluate stage writes: predictions, the frozen threshold and plots."""

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from dvclive import Live

from chestct.arrays import Split

PREDICTION_COLUMNS = ("split", "path", "sha256", "label", "subtype", "probability")


def write_predictions(path: Path, scored: dict[str, tuple[Split, np.ndarray]]) -> None:
    """Write one CSV row per scored image, split by split, in the order of the split files.

    Probabilities are written with 9 significant digits, enough to compare any other consumer
    of the model with the evaluation.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        for split_name, (split, probabilities) in scored.items():
            for index, probability in enumerate(probabilities):
                row = (split.paths[index], split.sha256s[index], int(split.labels[index]), split.subtypes[index])
                writer.writerow((split_name, *row, f"{probability:.9g}"))


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write a dictionary as indented JSON with sorted keys, for readable diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def log_test_plots(live: Live, labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> None:
    """Log the test split's ROC, precision-recall, confusion matrix and calibration plots."""
    predicted = (probabilities >= threshold).astype(int)
    live.log_sklearn_plot("roc", labels, probabilities, name="roc.json")
    live.log_sklearn_plot("precision_recall", labels, probabilities, name="precision_recall.json")
    live.log_sklearn_plot("confusion_matrix", labels, predicted, name="confusion_matrix.json")
    live.log_sklearn_plot("calibration", labels, probabilities, name="calibration.json")
