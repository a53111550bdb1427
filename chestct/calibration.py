"""Calibration of predicted cancer probabilities: Brier score, expected calibration error and
the reliability curve.

All three use the same equal-width bins on [0, 1]: bin i of n_bins contains the scores with
floor(score * n_bins) == i, that is [i / n_bins, (i + 1) / n_bins), and a score of exactly 1.0
is put in the last bin.
"""

import numpy as np

from chestct.binary_inputs import check_labels_and_scores, check_positive_int


def score_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Return the bin index in [0, n_bins) of each score in [0, 1], with the shape of ``scores``."""
    return np.minimum(np.floor(scores * n_bins).astype(np.int64), n_bins - 1)


def brier_score(labels, scores) -> float:
    """Compute the Brier score, the mean squared difference between score and label, in [0, 1].

    Lower is better. One class suffices.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
    """
    labels, scores = check_labels_and_scores(labels, scores)
    return float(np.mean((scores - labels) ** 2))


def expected_calibration_error(labels, scores, n_bins: int = 10) -> float:
    """Compute the expected calibration error (ECE), in [0, 1].

    ECE = sum over bins of (n_b / n) * |observed cancer fraction_b - mean score_b|, over
    ``n_bins`` equal-width bins (see the module docstring). Empty bins contribute nothing.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        n_bins: number of bins, >= 1.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    n_bins = check_positive_int(n_bins, "n_bins")

    bins = score_bins(scores, n_bins)
    label_sums = np.bincount(bins, weights=labels, minlength=n_bins)
    score_sums = np.bincount(bins, weights=scores, minlength=n_bins)
    # n_b / n * |label_sum_b / n_b - score_sum_b / n_b| simplifies to |label_sum_b - score_sum_b| / n.
    return float(np.abs(label_sums - score_sums).sum() / labels.size)


def reliability_curve(labels, scores, n_bins: int = 10) -> dict[str, list]:
    """Tabulate a reliability (calibration) curve over ``n_bins`` equal-width bins.

    Returns:
        Lists with one entry per bin: ``bin_low`` and ``bin_high`` (edges in [0, 1]),
        ``count`` (samples in the bin), ``mean_score`` (mean predicted probability) and
        ``observed_fraction`` (fraction of cancer samples). The two means are None for an
        empty bin. A well-calibrated model has ``observed_fraction`` close to ``mean_score``.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    n_bins = check_positive_int(n_bins, "n_bins")

    bins = score_bins(scores, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    label_sums = np.bincount(bins, weights=labels, minlength=n_bins)
    score_sums = np.bincount(bins, weights=scores, minlength=n_bins)

    mean_scores = [float(s / c) if c else None for s, c in zip(score_sums, counts, strict=True)]
    observed = [float(s / c) if c else None for s, c in zip(label_sums, counts, strict=True)]
    edges = np.arange(n_bins + 1) / n_bins
    return {
        "bin_low": edges[:-1].tolist(),
        "bin_high": edges[1:].tolist(),
        "count": counts.tolist(),
        "mean_score": mean_scores,
        "observed_fraction": observed,
    }
