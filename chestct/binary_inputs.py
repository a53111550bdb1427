"""Input checks shared by the threshold, metric, calibration and bootstrap functions.

Every function there takes ``labels`` (1 cancer, 0 normal) and ``scores`` (predicted cancer
probabilities) as equal-length 1-D arrays, and predicts cancer when ``score >= threshold``.
"""

import math
from numbers import Real

import numpy as np


def check_labels_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores and return them as int64 and float64 arrays of shape (n,).

    Raises:
        ValueError: if either is not 1-D, they are empty or differ in length, a label is not 0
            or 1, or a score is not a finite probability in [0, 1].
    """
    labels = _as_1d(labels, "labels")
    scores = _as_1d(scores, "scores")
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must have the same length, got {labels.size} labels and {scores.size} scores."
        )

    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise ValueError(f"labels must be 0 (normal) or 1 (cancer), got dtype {labels.dtype}.")
    invalid_labels = np.setdiff1d(np.unique(labels), [0, 1])
    if invalid_labels.size:
        raise ValueError(f"labels must be 0 (normal) or 1 (cancer), got {invalid_labels[:5].tolist()}.")

    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise ValueError(f"scores must be real probabilities in [0, 1], got dtype {scores.dtype}.")
    scores = scores.astype(np.float64)
    invalid_scores = scores[~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0))]
    if invalid_scores.size:
        raise ValueError(
            f"scores must be finite probabilities in [0, 1], but {invalid_scores.size} are not, "
            f"for example {invalid_scores[:5].tolist()}."
        )

    return labels.astype(np.int64), scores


def check_both_classes(labels: np.ndarray, purpose: str) -> None:
    """Raise ValueError unless ``labels`` contains both 0 (normal) and 1 (cancer)."""
    n_cancer = int(labels.sum())
    n_normal = labels.size - n_cancer
    if n_cancer == 0 or n_normal == 0:
        raise ValueError(
            f"{purpose} needs both classes, but labels contain {n_cancer} cancer and {n_normal} normal "
            "samples. Evaluate on a split that contains both."
        )


def check_probability(value, name: str, *, low_inclusive: bool = True) -> float:
    """Validate a real number in [0, 1], or (0, 1] when ``low_inclusive`` is False, and return it as float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")

    value = float(value)
    low_ok = value >= 0.0 if low_inclusive else value > 0.0
    if not (math.isfinite(value) and low_ok and value <= 1.0):
        interval = "[0, 1]" if low_inclusive else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return value


def check_positive_int(value, name: str) -> int:
    """Validate an integer >= 1 and return it as int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def min_count_reaching(rate: float, total: int) -> int:
    """Return the smallest count k in [0, total] with k / total >= rate, for a rate in [0, 1].

    It compares ``k / total >= rate`` in floating point, as the callers do, because
    ``ceil(rate * total)`` can overshoot: 0.7 * 10 is 7.000000000000001.
    """
    count = min(math.ceil(rate * total), total)
    while count > 0 and (count - 1) / total >= rate:
        count -= 1
    while count < total and count / total < rate:
        count += 1
    return count


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty. Pass at least one sample.")
    return array
