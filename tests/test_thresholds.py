"""Threshold choice on small vectors whose operating points are worked out by hand.

Every threshold is applied as ``score >= threshold``. Most scores are dyadic fractions, so that
the expected midpoints are exact floats.
"""

import json

import numpy as np
import pytest

from chestct.metrics import confusion_counts
from chestct.thresholds import (
    ThresholdChoice,
    choose_threshold,
    target_sensitivity_threshold,
    youden_threshold,
)

# Normal scores 0.1 and 0.4, cancer scores 0.3, 0.6 and 0.8. Youden's J by threshold:
# 0.1 -> 0, 0.3 -> 1/2, 0.4 -> 1/6, 0.6 -> 2/3 (the only maximum), 0.8 -> 1/3.
UNIQUE_LABELS = [0, 1, 0, 1, 1]
UNIQUE_SCORES = [0.1, 0.3, 0.4, 0.6, 0.8]


def test_youden_unique_maximum_midpoint():
    choice = youden_threshold(UNIQUE_LABELS, UNIQUE_SCORES)

    # Every threshold in (0.4, 0.6] gives J = 2/3.
    assert choice.interval == (0.4, 0.6)
    assert choice.threshold == pytest.approx(0.5)
    assert choice.maximal_intervals == ((0.4, 0.6),)
    assert choice.method == "youden"
    assert choice.sensitivity == pytest.approx(2 / 3)
    assert choice.specificity == 1.0
    assert choice.youden_j == pytest.approx(2 / 3)
    assert (choice.true_positives, choice.false_positives) == (2, 0)
    assert (choice.true_negatives, choice.false_negatives) == (2, 1)
    assert choice.target_sensitivity is None


def test_youden_separable_classes_gap_midpoint():
    choice = youden_threshold([0, 0, 1, 1], [0.125, 0.25, 0.625, 0.75])

    assert choice.interval == (0.25, 0.625)
    assert choice.threshold == 0.4375
    assert choice.youden_j == 1.0


def test_youden_plateau_over_adjacent_points():
    # At 0.5 one cancer and one normal sample tie, so raising the threshold past 0.5 loses a
    # cancer (-1/2) and gains a normal (+1/2): J is 1/2 at both 0.5 and 0.875.
    labels = [0, 1, 0, 1]
    scores = [0.25, 0.5, 0.5, 0.875]

    choice = youden_threshold(labels, scores)

    assert choice.maximal_intervals == ((0.25, 0.875),)
    assert choice.interval == (0.25, 0.875)
    assert choice.threshold == 0.5625
    # The midpoint falls in (0.5, 0.875], the operating point of 0.875.
    assert choice.sensitivity == 0.5
    assert choice.specificity == 1.0
    assert choice.youden_j == 0.5


def test_youden_disjoint_maxima_lowest_interval():
    # J by threshold: 0.125 -> 0, 0.375 -> 1/2, 0.625 -> 0, 0.875 -> 1/2.
    labels = [0, 1, 0, 1]
    scores = [0.125, 0.375, 0.625, 0.875]

    choice = youden_threshold(labels, scores)

    assert choice.maximal_intervals == ((0.125, 0.375), (0.625, 0.875))
    assert choice.interval == (0.125, 0.375)
    assert choice.threshold == 0.25
    assert choice.sensitivity == 1.0
    assert choice.specificity == 0.5


def test_youden_interval_from_zero():
    # With one distinct score, the only operating point predicts cancer for everything.
    choice = youden_threshold([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])

    assert choice.interval == (0.0, 0.5)
    assert choice.threshold == 0.25
    assert choice.sensitivity == 1.0
    assert choice.specificity == 0.0
    assert choice.youden_j == 0.0


def test_youden_adjacent_floats_keep_operating_point():
    low = 0.5
    high = float(np.nextafter(low, 1.0))

    choice = youden_threshold([0, 1], [low, high])

    assert choice.threshold > low
    assert choice.threshold == high
    assert choice.youden_j == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_youden_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[0, 1, rng.integers(0, 2, 30)]
    # Few distinct values, so that ties within and across classes are common.
    scores = rng.integers(0, 9, labels.size) / 8

    choice = youden_threshold(labels, scores)

    candidates = np.r_[0.0, (np.unique(scores)[:-1] + np.unique(scores)[1:]) / 2, np.unique(scores)]
    best_j = max(_youden_j(labels, scores, t) for t in candidates)
    assert choice.youden_j == pytest.approx(best_j)
    assert _youden_j(labels, scores, choice.threshold) == pytest.approx(best_j)
    assert choice.threshold <= choice.interval[1]
    assert choice.threshold > choice.interval[0] or choice.interval[0] == 0.0
    counts = (choice.true_positives, choice.false_positives, choice.true_negatives, choice.false_negatives)
    assert counts == confusion_counts(labels, scores, choice.threshold)


def _youden_j(labels, scores, threshold):
    tp, fp, tn, fn = confusion_counts(labels, scores, threshold)
    return tp / (tp + fn) + tn / (tn + fp) - 1


@pytest.mark.parametrize(
    ("target", "threshold", "sensitivity"),
    [
        (1.0, 0.3, 1.0),
        (2 / 3, 0.6, 2 / 3),
        (0.5, 0.6, 2 / 3),
        (0.34, 0.6, 2 / 3),
        (1 / 3, 0.8, 1 / 3),
        (0.01, 0.8, 1 / 3),
    ],
)
def test_target_sensitivity_highest_threshold(target, threshold, sensitivity):
    choice = target_sensitivity_threshold(UNIQUE_LABELS, UNIQUE_SCORES, target)

    assert choice.threshold == threshold
    assert choice.sensitivity == pytest.approx(sensitivity)
    assert choice.method == "target_sensitivity"
    assert choice.target_sensitivity == target
    assert choice.interval[1] == threshold
    assert choice.maximal_intervals == ()


def test_target_sensitivity_exact_decimal_targets():
    # 0.7 * 10 is 7.000000000000001 in floating point, yet 7 of 10 cancers reach 0.7.
    labels = [1] * 10 + [0]
    scores = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 0.5]

    assert target_sensitivity_threshold(labels, scores, 0.7).threshold == 0.35
    assert target_sensitivity_threshold(labels, scores, 0.9).threshold == 0.15
    assert target_sensitivity_threshold(labels, scores, 0.3).threshold == 0.75


def test_target_sensitivity_tied_cancer_scores():
    labels = [0, 1, 1, 1]
    scores = [0.1, 0.6, 0.6, 0.8]

    choice = target_sensitivity_threshold(labels, scores, 0.5)

    assert choice.threshold == 0.6
    assert choice.sensitivity == 1.0
    assert choice.interval == (0.1, 0.6)


@pytest.mark.parametrize("target", [0, 0.0, -0.1, 1.1, float("nan"), True, "0.9", None])
def test_target_sensitivity_invalid_target(target):
    with pytest.raises(ValueError, match="target"):
        target_sensitivity_threshold(UNIQUE_LABELS, UNIQUE_SCORES, target)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_split_rejected(labels):
    with pytest.raises(ValueError, match="needs both classes"):
        youden_threshold(labels, [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="needs both classes"):
        target_sensitivity_threshold(labels, [0.1, 0.5, 0.9], 0.9)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 2], [0.1, 0.5, 0.9], "labels must be 0"),
        ([0, 1, 0.5], [0.1, 0.5, 0.9], "labels must be 0"),
        (["0", "1"], [0.1, 0.9], "labels must be 0"),
        ([0, 1], [0.1, 0.5, 0.9], "same length"),
        ([0, 1], [0.1, 1.2], "scores must be finite probabilities"),
        ([0, 1], [-0.1, 0.5], "scores must be finite probabilities"),
        ([0, 1], [0.1, float("nan")], "scores must be finite probabilities"),
        ([0, 1], [0.1, float("inf")], "scores must be finite probabilities"),
        ([[0, 1]], [[0.1, 0.9]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_invalid_inputs_rejected(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        youden_threshold(labels, scores)


def test_boolean_labels_accepted():
    choice = youden_threshold(np.array(UNIQUE_LABELS, dtype=bool), UNIQUE_SCORES)

    assert choice.threshold == pytest.approx(0.5)


def test_choose_threshold_dispatches():
    assert choose_threshold(UNIQUE_LABELS, UNIQUE_SCORES, "youden") == youden_threshold(UNIQUE_LABELS, UNIQUE_SCORES)
    assert choose_threshold(
        UNIQUE_LABELS, UNIQUE_SCORES, "target_sensitivity", target_sensitivity=1.0
    ) == target_sensitivity_threshold(UNIQUE_LABELS, UNIQUE_SCORES, 1.0)


def test_choose_threshold_unknown_method():
    with pytest.raises(ValueError, match="method must be one of youden, target_sensitivity, got 'roc'"):
        choose_threshold(UNIQUE_LABELS, UNIQUE_SCORES, "roc")


def test_choose_threshold_missing_target():
    with pytest.raises(ValueError, match="needs target_sensitivity"):
        choose_threshold(UNIQUE_LABELS, UNIQUE_SCORES, "target_sensitivity")


def test_choose_threshold_extra_target_rejected():
    with pytest.raises(ValueError, match="only used with method='target_sensitivity'"):
        choose_threshold(UNIQUE_LABELS, UNIQUE_SCORES, "youden", target_sensitivity=0.9)


def test_threshold_choice_to_dict_json():
    choice = youden_threshold([0, 1, 0, 1], [0.125, 0.375, 0.625, 0.875])

    restored = json.loads(json.dumps(choice.to_dict(), allow_nan=False))

    assert restored["threshold"] == 0.25
    assert restored["method"] == "youden"
    assert restored["interval"] == [0.125, 0.375]
    assert restored["maximal_intervals"] == [[0.125, 0.375], [0.625, 0.875]]
    assert restored["target_sensitivity"] is None
    assert set(restored) == set(ThresholdChoice.__dataclass_fields__)
