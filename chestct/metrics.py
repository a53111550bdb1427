"""Diagnostic metrics at a fixed decision threshold.

Labels are 1 (cancer, positive) and 0 (normal, negative), scores are predicted cancer
probabilities in [0, 1], and cancer is predicted when ``score >= threshold``. A ratio whose
denominator is zero, such as PPV with no cancer predictions, is None (JSON null), never NaN.
"""

from collections.abc import Sequence

import numpy as np

from chestct.binary_inputs import check_both_classes, check_labels_and_scores, check_probability
from chestct.calibration import brier_score, expected_calibration_error
from chestct.roc import roc_auc, sensitivity_at_specificity

SPECIFICITY_TARGETS = (0.90, 0.95)

# Added to every cell of the confusion matrix when one is zero (Haldane-Anscombe correction),
# so that the diagnostic odds ratio stays finite and positive.
HALDANE_CORRECTION = 0.5


def confusion_counts(labels, scores, threshold: float) -> tuple[int, int, int, int]:
    """Count (tp, fp, tn, fn) for the rule ``score >= threshold``.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        threshold: probability in [0, 1].
    """
    labels, scores = check_labels_and_scores(labels, scores)
    threshold = check_probability(threshold, "threshold")

    predicted = scores >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    tn = int(np.sum(~predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    return tp, fp, tn, fn


def rates_from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Compute the threshold metrics from confusion counts, element-wise over arrays of counts.

    Args:
        tp, fp, tn, fn: counts of equal shape (any), as numbers or arrays.

    Returns:
        ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``, ``accuracy``, ``youden_j``
        and ``diagnostic_odds_ratio`` as float arrays of that shape, NaN where a denominator is
        zero. The diagnostic odds ratio is (TP * TN) / (FP * FN), computed with 0.5 added to
        every cell where a cell is zero. ``haldane_corrected`` is a bool array that is True there.
    """
    tp, fp, tn, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, tn, fn))

    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    corrected = (tp == 0) | (fp == 0) | (tn == 0) | (fn == 0)
    shift = np.where(corrected, HALDANE_CORRECTION, 0.0)

    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "youden_j": sensitivity + specificity - 1.0,
        "diagnostic_odds_ratio": _ratio((tp + shift) * (tn + shift), (fp + shift) * (fn + shift)),
        "haldane_corrected": corrected,
    }


def binary_metrics(
    labels,
    scores,
    threshold: float,
    *,
    n_bins: int = 10,
    specificity_targets: Sequence[float] = SPECIFICITY_TARGETS,
) -> dict:
    """Compute the diagnostic metrics of one split at a fixed threshold.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        threshold: probability in [0, 1]. Cancer is predicted when ``score >= threshold``.
        n_bins: equal-width bins of the expected calibration error.
        specificity_targets: specificities in [0, 1] at which to read the sensitivity off the
            ROC curve (see ``chestct.roc.sensitivity_at_specificity``).

    Returns:
        ``auc`` (ROC AUC), ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``,
        ``accuracy``, ``youden_j``, ``diagnostic_odds_ratio``, ``brier_score``, ``ece`` and
        ``sensitivity_at_specificity_<target>`` (for example ``..._90``) as floats, with None
        for an undefined ratio. ``diagnostic_odds_ratio_haldane_corrected`` is True when a cell
        was zero and 0.5 was added to every cell. ``threshold``, and ``confusion_matrix`` with
        ``tp``, ``fp``, ``tn`` and ``fn``.

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    check_both_classes(labels, "binary_metrics")
    tp, fp, tn, fn = confusion_counts(labels, scores, threshold)
    rates = rates_from_counts(tp, fp, tn, fn)

    result: dict = {"threshold": float(threshold), "auc": roc_auc(labels, scores)}
    for name in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "youden_j", "diagnostic_odds_ratio"):
        result[name] = _float_or_none(rates[name])
    result["diagnostic_odds_ratio_haldane_corrected"] = bool(rates["haldane_corrected"])

    result["brier_score"] = brier_score(labels, scores)
    result["ece"] = expected_calibration_error(labels, scores, n_bins)
    for target in specificity_targets:
        result[sensitivity_at_specificity_key(target)] = sensitivity_at_specificity(labels, scores, target)

    result["confusion_matrix"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    return result


def sensitivity_at_specificity_key(target: float) -> str:
    """Name the metric for a target specificity in percent: ``sensitivity_at_specificity_90``.

    The name has no dot (97.5 becomes ``97_5``), because ``dvc metrics show`` reads a dot in a
    key as nesting.
    """
    percent = np.format_float_positional(target * 100, precision=6, trim="-")
    return f"sensitivity_at_specificity_{percent.replace('.', '_')}"


def sensitivity_by_group(labels, scores, threshold: float, groups) -> dict[str, dict]:
    """Compute sensitivity per cancer subtype, and specificity for normal groups.

    Each group must contain a single class, as a subtype does. A cancer group reports
    ``sensitivity`` = tp / n, a normal group ``specificity`` = tn / n.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        threshold: probability in [0, 1]. Cancer is predicted when ``score >= threshold``.
        groups: shape (n,), the group name of each sample, such as its subtype.

    Returns:
        For each group in sorted order: ``label``, ``n``, and either ``tp``, ``fn`` and
        ``sensitivity`` (cancer) or ``tn``, ``fp`` and ``specificity`` (normal).

    Raises:
        ValueError: on invalid inputs, when ``groups`` differs in length, or when a group
            contains both classes.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    threshold = check_probability(threshold, "threshold")
    groups = np.asarray(groups).astype(str)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have one entry per sample, got shape {groups.shape} for {labels.size} samples.")

    predicted = scores >= threshold
    result = {}
    for group in sorted(set(groups.tolist())):
        members = groups == group
        group_labels = np.unique(labels[members])
        if group_labels.size != 1:
            raise ValueError(
                f"group {group!r} contains both cancer and normal samples, but each group must be one class."
            )

        n = int(members.sum())
        hits = int(np.sum(predicted[members]))
        if group_labels[0] == 1:
            result[group] = {"label": 1, "n": n, "tp": hits, "fn": n - hits, "sensitivity": hits / n}
        else:
            result[group] = {"label": 0, "n": n, "tn": n - hits, "fp": hits, "specificity": (n - hits) / n}
    return result


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(numerator, denominator)
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _float_or_none(value: np.ndarray) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
