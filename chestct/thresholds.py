"""Choosing the decision threshold on a validation split.

These functions, like those of ``chestct.metrics``, predict cancer when ``score >= threshold``.
A threshold t gives the same predictions for every t in (s_prev, s], where s is the lowest
score at or above t and s_prev the next lower distinct score. Youden's J is therefore constant
on such intervals, and ``youden_threshold`` returns the midpoint of an interval instead of a
score, which leaves the most room for scores that move slightly on new data.
"""

from dataclasses import asdict, dataclass

import numpy as np

from chestct.binary_inputs import check_probability
from chestct.roc import OperatingPoints, roc_operating_points

METHODS = ("youden", "target_sensitivity")


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold with its operating point on the data it was chosen on.

    The counts and rates are those of ``score >= threshold`` on that data, so they hold for
    ``threshold`` itself, whichever method chose it.
    """

    threshold: float
    """Probability in [0, 1]. Cancer is predicted when ``score >= threshold``."""
    method: str
    """One of ``METHODS``."""
    sensitivity: float
    specificity: float
    youden_j: float
    """Sensitivity + specificity - 1, in [-1, 1]."""
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    interval: tuple[float, float]
    """Threshold range (low, high], which also contains t = 0 when low is 0. For ``youden`` it is
    the tied interval whose midpoint is the threshold. For ``target_sensitivity`` it contains the
    thresholds with the same predictions, and its high end is the threshold."""
    maximal_intervals: tuple[tuple[float, float], ...] = ()
    """Every interval on which J reaches its maximum, in ascending order, for ``youden``. Empty for
    ``target_sensitivity``."""
    target_sensitivity: float | None = None

    def to_dict(self) -> dict:
        """Convert to a dictionary of plain Python values for ``json.dump``."""
        result = asdict(self)
        result["interval"] = list(self.interval)
        result["maximal_intervals"] = [list(interval) for interval in self.maximal_intervals]
        return result


def youden_threshold(labels, scores) -> ThresholdChoice:
    """Choose the threshold that maximises Youden's J = sensitivity + specificity - 1.

    The thresholds t in [0, 1] that reach the maximum J form one or more intervals of the real
    line, each (s_low, s_high] between two distinct scores, or [0, s_high] when it starts at the
    lowest score. An interval spans several operating points when adjacent operating points tie.
    The function returns the midpoint of the interval with the lowest thresholds, because that
    one has the highest sensitivity among the maximal intervals, and missing a cancer costs more
    than a false alarm. When the midpoint rounds onto s_low (adjacent floats), it returns s_high.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].

    Raises:
        ValueError: on invalid inputs, or when ``labels`` does not contain both classes.
    """
    points = roc_operating_points(labels, scores)

    # J * n_positive * n_negative in integers, so that equal J values compare equal exactly.
    scaled_j = (
        points.true_positives * points.n_negative
        + points.true_negatives * points.n_positive
        - points.n_positive * points.n_negative
    )
    is_maximal = scaled_j == scaled_j.max()

    intervals = tuple(_interval(points.thresholds, first, last) for first, last in _runs(is_maximal))
    low, high = intervals[0]
    threshold = (low + high) / 2
    if threshold <= low < high:
        threshold = high

    return _choice(points, threshold, "youden", intervals[0], maximal_intervals=intervals)


def target_sensitivity_threshold(labels, scores, target: float) -> ThresholdChoice:
    """Choose the highest threshold whose sensitivity reaches ``target``.

    The threshold is the k-th highest cancer score, where k is the smallest number of detected
    cancers with k / n_cancer >= target, so it is always a score. Sensitivity at it may exceed
    the target when several cancer samples share that score. A target of 1.0 returns the lowest
    cancer score.

    Args:
        labels: shape (n,), 1 cancer and 0 normal.
        scores: shape (n,), predicted cancer probabilities in [0, 1].
        target: the sensitivity to reach, in (0, 1].

    Raises:
        ValueError: on invalid inputs, a target outside (0, 1], or when ``labels`` does not
            contain both classes.
    """
    target = check_probability(target, "target", low_inclusive=False)
    points = roc_operating_points(labels, scores)

    # Sensitivity falls as the threshold rises, so the last qualifying operating point is the highest.
    reaches_target = points.sensitivity >= target
    index = int(np.flatnonzero(reaches_target)[-1])
    interval = _interval(points.thresholds, index, index)
    return _choice(points, interval[1], "target_sensitivity", interval, target_sensitivity=target)


def choose_threshold(labels, scores, method: str, target_sensitivity: float | None = None) -> ThresholdChoice:
    """Choose a threshold with ``youden_threshold`` or ``target_sensitivity_threshold``.

    Args:
        method: ``"youden"`` or ``"target_sensitivity"``.
        target_sensitivity: required with ``"target_sensitivity"``, in (0, 1], and must be None
            with ``"youden"``, so that a forgotten setting cannot pass unnoticed.

    Raises:
        ValueError: on an unknown method, a missing or extra ``target_sensitivity``, or the
            errors of the chosen method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")

    if method == "youden":
        if target_sensitivity is not None:
            raise ValueError(
                f"target_sensitivity is only used with method='target_sensitivity', got {target_sensitivity!r} "
                "with method='youden'. Pass None, or choose method='target_sensitivity'."
            )
        return youden_threshold(labels, scores)

    if target_sensitivity is None:
        raise ValueError("method='target_sensitivity' needs target_sensitivity, a sensitivity in (0, 1].")
    return target_sensitivity_threshold(labels, scores, target_sensitivity)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Return (first, last) indices of each run of consecutive True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _interval(thresholds: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """Return the thresholds (low, high] that give operating points ``first`` to ``last``."""
    low = float(thresholds[first - 1]) if first > 0 else 0.0
    return low, float(thresholds[last])


def _choice(points: OperatingPoints, threshold: float, method: str, interval, **extra) -> ThresholdChoice:
    # The operating point at the threshold is the one at the lowest distinct score at or above it.
    index = int(np.searchsorted(points.thresholds, threshold, side="left"))
    true_positives = int(points.true_positives[index])
    true_negatives = int(points.true_negatives[index])
    sensitivity = true_positives / points.n_positive
    specificity = true_negatives / points.n_negative

    return ThresholdChoice(
        threshold=float(threshold),
        method=method,
        sensitivity=sensitivity,
        specificity=specificity,
        youden_j=sensitivity + specificity - 1.0,
        true_positives=true_positives,
        false_positives=points.n_negative - true_negatives,
        true_negatives=true_negatives,
        false_negatives=points.n_positive - true_positives,
        interval=interval,
        **extra,
    )
