"""The evaluation report of one split, as a JSON-ready dictionary."""

import math

import numpy as np

from chestct.binary_inputs import check_both_classes, check_labels_and_scores
from chestct.bootstrap import bootstrap_ci
from chestct.calibration import reliability_curve
from chestct.metrics import binary_metrics, sensitivity_by_group

# Decimal places kept in the report, so that re-running on another machine or numpy version
# does not show last-digit noise in `dvc metrics diff`.
REPORT_DECIMALS = 6


def evaluate_split(
    labels,
    scores,
    threshold: float,
    subtypes=None,
    n_resamples: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    n_bins: int = 10,
) -> dict:
    """Evaluate one split at a fixed threshold and assemble the report.

    The same inputs give the same report, floats rounded to ``REPORT_DECIMALS`` places.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        threshold: probability in [0, 1]. Cancer is predicted when ``score >= threshold``.
        subtypes: shape (n,), the subtype name of each sample, or None to leave out
            ``by_subtype``.
        n_resamples: stratified bootstrap resamples, >= 1.
        seed: seed of the bootstrap.
        confidence: coverage of the bootstrap intervals, in (0, 1).
        n_bins: equal-width bins of the expected calibration error and the reliability curve.

    Returns:
        ``n_samples``, ``n_cancer``, ``n_normal``, ``threshold``, ``metrics`` (see
        ``binary_metrics``), ``confidence_intervals`` (``method``, ``confidence``,
        ``n_resamples``, ``seed`` and per metric ``low`` and ``high``), ``by_subtype`` (see
        ``sensitivity_by_group``, None without subtypes) and ``reliability`` (see
        ``reliability_curve``). It contains no NaN or infinity, so ``json.dump`` writes
        standard JSON.

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    check_both_classes(labels, "evaluate_split")

    intervals = bootstrap_ci(labels, scores, threshold, n_resamples, seed, confidence, n_bins=n_bins)
    report = {
        "n_samples": int(labels.size),
        "n_cancer": int(labels.sum()),
        "n_normal": int(labels.size - labels.sum()),
        "threshold": float(threshold),
        "metrics": binary_metrics(labels, scores, threshold, n_bins=n_bins),
        "confidence_intervals": {
            "method": "stratified percentile bootstrap",
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            "metrics": intervals,
        },
        "by_subtype": None if subtypes is None else sensitivity_by_group(labels, scores, threshold, subtypes),
        "reliability": reliability_curve(labels, scores, n_bins),
    }
    return round_for_json(report)


def round_for_json(value, decimals: int = REPORT_DECIMALS):
    """Round every float in nested dicts, lists and tuples, and convert numpy scalars to Python.

    Raises:
        ValueError: on a NaN or infinite float, which standard JSON cannot represent.
    """
    if isinstance(value, dict):
        return {key: round_for_json(item, decimals) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [round_for_json(item, decimals) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} to JSON, because a metric must be a finite float or None.")
        # Adding 0.0 turns a rounded -0.0 into 0.0.
        return round(float(value), decimals) + 0.0
    return value


THRESHOLD_METHODS = ("youden", "target_sensitivity")


def check_evaluate_settings(settings: dict) -> None:
    """Validate the ``evaluate`` section of ``params.yaml`` before any model is loaded.

    ``target_sensitivity`` is checked whatever the method, so that an invalid value never
    sits unnoticed in an experiment's parameters.

    Raises:
        ValueError: naming the first invalid key and its value.
    """
    method = settings["threshold_method"]
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"evaluate.threshold_method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}.")

    checks = {
        "target_sensitivity": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "confidence": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
        "bootstrap_resamples": (lambda v: _is_integer(v) and v >= 1, "an integer of at least 1"),
        "calibration_bins": (lambda v: _is_integer(v) and v >= 1, "an integer of at least 1"),
    }
    for key, (is_valid, expected) in checks.items():
        if not is_valid(settings[key]):
            raise ValueError(f"evaluate.{key} must be {expected}, got {settings[key]!r}.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
