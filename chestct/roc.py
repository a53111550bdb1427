"""ROC operating points, ROC AUC and sensitivity at a fixed specificity.

An operating point is the prediction rule ``score >= threshold`` for one threshold. Only the
thresholds equal to a distinct score give distinct operating points, plus the all-normal point
(threshold above every score, sensitivity 0, specificity 1).
"""

from dataclasses import dataclass

import numpy as np

from chestct.binary_inputs import check_both_classes, check_labels_and_scores, check_probability, min_count_reaching


@dataclass(frozen=True)
class OperatingPoints:
    """Confusion counts at a threshold equal to each distinct score, in ascending order.

    Every array has shape (k,), where k is the number of distinct scores. The all-normal
    operating point is not among them.
    """

    thresholds: np.ndarray
    """Distinct scores in ascending order, probabilities in [0, 1]."""
    true_positives: np.ndarray
    """Cancer samples with ``score >= threshold``."""
    true_negatives: np.ndarray
    """Normal samples with ``score < threshold``."""
    positives_at: np.ndarray
    """Cancer samples whose score equals the threshold."""
    negatives_at: np.ndarray
    """Normal samples whose score equals the threshold."""
    n_positive: int
    n_negative: int

    @property
    def sensitivity(self) -> np.ndarray:
        return self.true_positives / self.n_positive

    @property
    def specificity(self) -> np.ndarray:
        return self.true_negatives / self.n_negative


def roc_operating_points(labels, scores) -> OperatingPoints:
    """Count true positives and true negatives at a threshold equal to each distinct score.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    labels, scores = check_labels_and_scores(labels, scores)
    check_both_classes(labels, "An ROC curve")

    thresholds, codes = np.unique(scores, return_inverse=True)
    positives_at = np.bincount(codes[labels == 1], minlength=thresholds.size)
    negatives_at = np.bincount(codes[labels == 0], minlength=thresholds.size)

    # A threshold at thresholds[i] predicts cancer for every score at or above it.
    true_positives = np.cumsum(positives_at[::-1])[::-1]
    true_negatives = np.cumsum(negatives_at) - negatives_at

    return OperatingPoints(
        thresholds=thresholds,
        true_positives=true_positives,
        true_negatives=true_negatives,
        positives_at=positives_at,
        negatives_at=negatives_at,
        n_positive=int(positives_at.sum()),
        n_negative=int(negatives_at.sum()),
    )


def roc_auc(labels, scores) -> float:
    """Compute the area under the ROC curve, in [0, 1].

    It equals the Mann-Whitney probability that a random cancer sample scores higher than a
    random normal one, with ties counted as one half.

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    points = roc_operating_points(labels, scores)

    # Each cancer sample at thresholds[i] outranks the normal samples below it and ties with those at it.
    pairs_won = np.sum(points.positives_at * (points.true_negatives + 0.5 * points.negatives_at))
    return float(pairs_won / (points.n_positive * points.n_negative))


def sensitivity_at_specificity(labels, scores, specificity: float) -> float:
    """Read the sensitivity at a target specificity off the empirical ROC curve.

    Returns the highest sensitivity, in [0, 1], among the operating points whose specificity is
    at least ``specificity``. The curve is not interpolated between operating points, and the
    all-normal point (sensitivity 0, specificity 1) always qualifies, so the result is 0 when
    no threshold at a score reaches the target.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        specificity: the target, in [0, 1].

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    specificity = check_probability(specificity, "specificity")
    points = roc_operating_points(labels, scores)

    # Compare counts, not ratios, so that a specificity of exactly the target qualifies.
    required_negatives = min_count_reaching(specificity, points.n_negative)
    qualifying = points.true_negatives >= required_negatives
    best_true_positives = points.true_positives[qualifying].max(initial=0)
    return float(best_true_positives / points.n_positive)
