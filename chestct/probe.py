"""Shortcut probe: how well file metadata alone predicts the label.

A random forest trained on file metadata only (size, file size, format, colour mode) of the
train split, scored by ROC AUC on valid and test. A high AUC means that the labels can be
guessed without looking at the anatomy.
"""

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score


def run_shortcut_probe(files: pd.DataFrame, trees: int, seed: int) -> dict[str, Any]:
    """Train a random forest on train-split file metadata and score it on valid and test.

    The features are width, height, aspect ratio, file size and one-hot format and colour
    mode; the categories come from the train split. Undecodable files are left out. Valid and
    test are scored twice: with every file, and without the files that are byte-identical to
    an earlier split (column ``duplicate_of_earlier_split``), because the forest was trained on
    the train files that some of them copy.

    Returns:
        ``features``, ``trees``, ``train_files`` and for ``valid`` and ``test`` the number of
        ``files`` and ``roc_auc``, and the same without the copies as
        ``files_without_cross_split_duplicates`` and ``roc_auc_without_cross_split_duplicates``.
        A ROC AUC is None, with a ``reason`` or ``reason_without_cross_split_duplicates``, when
        the train split or the scored files do not contain both classes.
    """
    usable = files[files["decode_error"] == ""]
    train = usable[usable["split"] == "train"]
    formats = sorted(train["format"].unique())
    modes = sorted(train["mode"].unique())
    feature_names = [
        "width",
        "height",
        "aspect_ratio",
        "bytes",
        *(f"format={v}" for v in formats),
        *(f"mode={v}" for v in modes),
    ]

    result: dict[str, Any] = {
        "model": "RandomForestClassifier",
        "trees": trees,
        "features": feature_names,
        "train_files": len(train),
    }

    model = None
    if train["label"].nunique() == 2:
        model = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
        model.fit(_probe_features(train, formats, modes), train["label"].to_numpy())

    for split in ("valid", "test"):
        part = usable[usable["split"] == split]
        without_copies = part[~part["duplicate_of_earlier_split"]]
        scores: dict[str, Any] = {
            "files": len(part),
            "files_without_cross_split_duplicates": len(without_copies),
        }

        scores["roc_auc"], reason = _score(model, part, f"the {split} split", formats, modes)
        if reason:
            scores["reason"] = reason

        scores["roc_auc_without_cross_split_duplicates"], reason = _score(
            model, without_copies, f"the {split} split without copies of an earlier split", formats, modes
        )
        if reason:
            scores["reason_without_cross_split_duplicates"] = reason

        result[split] = scores

    return result


def _score(
    model: RandomForestClassifier | None, part: pd.DataFrame, description: str, formats: list[str], modes: list[str]
) -> tuple[float | None, str | None]:
    """Return the ROC AUC of ``model`` on ``part``, rounded to 4 decimals, or None and the reason."""
    if model is None:
        return None, "the train split does not contain both classes"
    if part["label"].nunique() < 2:
        return None, f"{description} does not contain both classes"

    probabilities = model.predict_proba(_probe_features(part, formats, modes))[:, 1]
    return round(float(roc_auc_score(part["label"].to_numpy(), probabilities)), 4), None


def _probe_features(part: pd.DataFrame, formats: list[str], modes: list[str]) -> np.ndarray:
    width = part["width"].to_numpy(dtype=np.float64)
    height = part["height"].to_numpy(dtype=np.float64)
    columns = [width, height, width / height, part["bytes"].to_numpy(dtype=np.float64)]
    columns += [(part["format"] == value).to_numpy(dtype=np.float64) for value in formats]
    columns += [(part["mode"] == value).to_numpy(dtype=np.float64) for value in modes]
    return np.column_stack(columns)
