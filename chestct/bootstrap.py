"""Stratified bootstrap confidence intervals of the metrics at a fixed threshold.

Each resample draws the cancer samples and the normal samples separately, with replacement, so
every resample keeps the class counts of the split. The threshold is not chosen again per
resample, so the intervals describe the uncertainty of the test metrics of one fixed rule.

A resample only repeats the original samples, so it is summarised by how often it draws each
distinct score, separately per class. Every metric then follows from these (resamples, k)
count matrices with array operations, without a Python loop over resamples.
"""

from collections.abc import Sequence

import numpy as np

from chestct.binary_inputs import (
    check_both_classes,
    check_labels_and_scores,
    check_positive_int,
    check_probability,
    min_count_reaching,
)
from chestct.calibration import score_bins
from chestct.metrics import SPECIFICITY_TARGETS, rates_from_counts, sensitivity_at_specificity_key

_THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "youden_j", "diagnostic_odds_ratio")


def stratified_bootstrap_indices(labels, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Draw stratified bootstrap resamples as indices into ``labels``.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        n_resamples: number of resamples, >= 1.
        rng: the source of randomness.

    Returns:
        Integer array of shape (n_resamples, n). Each row contains n_cancer indices drawn with
        replacement from the cancer samples, then n_normal indices drawn from the normal ones.
    """
    labels = np.asarray(labels)
    n_resamples = check_positive_int(n_resamples, "n_resamples")

    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    drawn_positives = positives[rng.integers(0, positives.size, size=(n_resamples, positives.size))]
    drawn_negatives = negatives[rng.integers(0, negatives.size, size=(n_resamples, negatives.size))]
    return np.concatenate([drawn_positives, drawn_negatives], axis=1)


def bootstrap_ci(
    labels,
    scores,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    *,
    n_bins: int = 10,
    specificity_targets: Sequence[float] = SPECIFICITY_TARGETS,
) -> dict[str, dict[str, float | None]]:
    """Compute stratified percentile bootstrap intervals of the metrics of ``binary_metrics``.

    The interval is the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the
    resampled values, with numpy's default linear interpolation. A resample on which a metric
    is undefined (for example PPV without cancer predictions) is left out for that metric, and
    both ends are None when it is undefined on every resample.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        threshold: probability in [0, 1]. Cancer is predicted when ``score >= threshold``.
        n_resamples: number of resamples, >= 1.
        seed: seed of ``numpy.random.default_rng``. The same seed gives the same intervals.
        confidence: coverage of the interval, in (0, 1).
        n_bins: equal-width bins of the expected calibration error.
        specificity_targets: specificities in [0, 1] for ``sensitivity_at_specificity_<target>``.

    Returns:
        For each metric name (``auc``, ``sensitivity``, ..., ``ece``, as ``binary_metrics``
        names them), a dictionary with ``low`` and ``high``.

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    check_both_classes(labels, "bootstrap_ci")
    threshold = check_probability(threshold, "threshold")
    confidence = check_probability(confidence, "confidence", low_inclusive=False)
    if confidence == 1.0:
        raise ValueError("confidence must be in (0, 1), got 1.0.")
    targets = [check_probability(target, "specificity target") for target in specificity_targets]
    n_bins = check_positive_int(n_bins, "n_bins")

    indices = stratified_bootstrap_indices(labels, n_resamples, np.random.default_rng(seed))
    distinct_scores, codes = np.unique(scores, return_inverse=True)
    n_positive = int(labels.sum())
    positive_counts = _count_matrix(codes[indices[:, :n_positive]], distinct_scores.size)
    negative_counts = _count_matrix(codes[indices[:, n_positive:]], distinct_scores.size)

    values = resampled_metrics(distinct_scores, positive_counts, negative_counts, threshold, n_bins, targets)
    quantiles = [(1.0 - confidence) / 2, (1.0 + confidence) / 2]
    return {name: _percentile_interval(metric_values, quantiles) for name, metric_values in values.items()}


def resampled_metrics(
    distinct_scores: np.ndarray,
    positive_counts: np.ndarray,
    negative_counts: np.ndarray,
    threshold: float,
    n_bins: int,
    specificity_targets: Sequence[float],
) -> dict[str, np.ndarray]:
    """Compute every metric of ``binary_metrics`` for each resample, NaN where undefined.

    Args:
        distinct_scores: shape (k,), ascending distinct scores.
        positive_counts: shape (resamples, k), how often each resample draws a cancer sample
            with each distinct score.
        negative_counts: shape (resamples, k), the same for normal samples.
        threshold: probability in [0, 1].
        n_bins: equal-width bins of the expected calibration error.
        specificity_targets: specificities in [0, 1].

    Returns:
        Arrays of shape (resamples,), keyed by the names that ``binary_metrics`` uses.
    """
    n_positive = positive_counts.sum(axis=1)
    n_negative = negative_counts.sum(axis=1)
    predicted = (distinct_scores >= threshold).astype(np.float64)
    tp = positive_counts @ predicted
    fp = negative_counts @ predicted
    rates = rates_from_counts(tp, fp, n_negative - fp, n_positive - tp)

    # Per resample and distinct score: cancer samples at or above it, normal samples below it.
    positives_at_or_above = np.cumsum(positive_counts[:, ::-1], axis=1)[:, ::-1]
    negatives_below = np.cumsum(negative_counts, axis=1) - negative_counts

    values = {"auc": np.sum(positive_counts * (negatives_below + 0.5 * negative_counts), axis=1)}
    values["auc"] /= n_positive * n_negative
    values.update({name: rates[name] for name in _THRESHOLD_METRICS})

    n_samples = n_positive + n_negative
    squared_errors = positive_counts @ (1.0 - distinct_scores) ** 2 + negative_counts @ distinct_scores**2
    values["brier_score"] = squared_errors / n_samples
    values["ece"] = _expected_calibration_errors(distinct_scores, positive_counts, negative_counts, n_bins)

    # Every resample has the class counts of the split, so one count threshold serves them all.
    for target in specificity_targets:
        required = min_count_reaching(target, int(n_negative[0]))
        qualifying = negatives_below >= required
        # The all-normal point (sensitivity 0) always qualifies, hence the initial 0.
        best = np.max(np.where(qualifying, positives_at_or_above, 0.0), axis=1, initial=0.0)
        values[sensitivity_at_specificity_key(target)] = best / n_positive

    return values


def _expected_calibration_errors(distinct_scores, positive_counts, negative_counts, n_bins) -> np.ndarray:
    one_hot = np.zeros((distinct_scores.size, n_bins))
    one_hot[np.arange(distinct_scores.size), score_bins(distinct_scores, n_bins)] = 1.0

    label_sums = positive_counts @ one_hot
    score_sums = (positive_counts + negative_counts) @ (one_hot * distinct_scores[:, None])
    n_samples = positive_counts.sum(axis=1) + negative_counts.sum(axis=1)
    return np.abs(label_sums - score_sums).sum(axis=1) / n_samples


def _count_matrix(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Count, per row of ``codes`` (shape (rows, m)), how often each code in [0, n_codes) occurs."""
    rows = codes.shape[0]
    flat = (codes + n_codes * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_codes).reshape(rows, n_codes).astype(np.float64)


def _percentile_interval(values: np.ndarray, quantiles: list[float]) -> dict[str, float | None]:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return {"low": None, "high": None}
    low, high = np.quantile(defined, quantiles)
    return {"low": float(low), "high": float(high)}
