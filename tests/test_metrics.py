"""Metrics, calibration, bootstrap and the split report, checked against values worked out by hand.

Cancer is predicted when ``score >= threshold``.
"""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chestct.bootstrap import bootstrap_ci, resampled_metrics, stratified_bootstrap_indices
from chestct.calibration import brier_score, expected_calibration_error, reliability_curve
from chestct.evaluation import evaluate_split, round_for_json
from chestct.metrics import (
    binary_metrics,
    confusion_counts,
    rates_from_counts,
    sensitivity_at_specificity_key,
    sensitivity_by_group,
)
from chestct.roc import roc_auc, sensitivity_at_specificity

THRESHOLD = 0.5


def confusion_split(tp: int, fp: int, tn: int, fn: int) -> tuple[np.ndarray, np.ndarray]:
    """Build labels and scores with the given confusion counts at ``THRESHOLD``."""
    labels = np.array([1] * tp + [0] * fp + [0] * tn + [1] * fn)
    scores = np.array([0.75] * tp + [0.625] * fp + [0.25] * tn + [0.375] * fn)
    return labels, scores


def synthetic_test_split(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return labels, scores and subtypes of a 315-sample split with 54 normal samples."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(261, dtype=int), np.zeros(54, dtype=int)]
    scores = np.where(labels == 1, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size))
    cancer_subtypes = rng.choice(["adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma"], labels.size)
    subtypes = np.where(labels == 1, cancer_subtypes, "normal")
    return labels, scores, subtypes


def test_confusion_counts_inclusive_threshold():
    labels = [1, 0, 1, 0, 1]
    scores = [0.5, 0.5, 0.49, 0.2, 0.9]

    assert confusion_counts(labels, scores, 0.5) == (2, 1, 1, 1)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", None])
def test_confusion_counts_invalid_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        confusion_counts([0, 1], [0.2, 0.8], threshold)


def test_binary_metrics_hand_confusion_matrix():
    labels, scores = confusion_split(tp=8, fp=2, tn=6, fn=4)

    metrics = binary_metrics(labels, scores, THRESHOLD)

    assert metrics["confusion_matrix"] == {"tp": 8, "fp": 2, "tn": 6, "fn": 4}
    assert metrics["threshold"] == THRESHOLD
    assert metrics["sensitivity"] == pytest.approx(8 / 12)
    assert metrics["specificity"] == pytest.approx(6 / 8)
    assert metrics["ppv"] == pytest.approx(8 / 10)
    assert metrics["npv"] == pytest.approx(6 / 10)
    assert metrics["f1"] == pytest.approx(2 * 8 / (2 * 8 + 2 + 4))
    assert metrics["accuracy"] == pytest.approx(14 / 20)
    assert metrics["youden_j"] == pytest.approx(8 / 12 + 6 / 8 - 1)
    assert metrics["diagnostic_odds_ratio"] == pytest.approx(8 * 6 / (2 * 4))
    assert metrics["diagnostic_odds_ratio_haldane_corrected"] is False


def test_binary_metrics_hand_ranking_metrics():
    labels, scores = confusion_split(tp=8, fp=2, tn=6, fn=4)

    metrics = binary_metrics(labels, scores, THRESHOLD)

    # Cancer scores 0.75 (8) and 0.375 (4), normal scores 0.625 (2) and 0.25 (6). A 0.75 cancer
    # outranks all 8 normals, a 0.375 cancer only the 6 at 0.25.
    assert metrics["auc"] == pytest.approx((8 * 8 + 4 * 6) / (12 * 8))
    squared_errors = 8 * 0.25**2 + 2 * 0.625**2 + 6 * 0.25**2 + 4 * 0.625**2
    assert metrics["brier_score"] == pytest.approx(squared_errors / 20)
    # Ten bins: 0.25, 0.375, 0.625 and 0.75 each fill their own bin.
    bin_gaps = 6 * 0.25 + 4 * abs(1 - 0.375) + 2 * 0.625 + 8 * abs(1 - 0.75)
    assert metrics["ece"] == pytest.approx(bin_gaps / 20)
    # Specificity 0.90 or more needs all 8 normals below the threshold, so threshold 0.75.
    assert metrics["sensitivity_at_specificity_90"] == pytest.approx(8 / 12)
    assert metrics["sensitivity_at_specificity_95"] == pytest.approx(8 / 12)


def test_dor_zero_cell_haldane_correction():
    labels, scores = confusion_split(tp=5, fp=0, tn=4, fn=1)

    metrics = binary_metrics(labels, scores, THRESHOLD)

    assert metrics["diagnostic_odds_ratio"] == pytest.approx((5.5 * 4.5) / (0.5 * 1.5))
    assert metrics["diagnostic_odds_ratio_haldane_corrected"] is True


def test_ppv_none_without_cancer_predictions():
    labels = [1, 0, 1, 0]
    scores = [0.2, 0.1, 0.3, 0.4]

    metrics = binary_metrics(labels, scores, 0.9)

    assert metrics["ppv"] is None
    assert metrics["npv"] == 0.5
    assert metrics["sensitivity"] == 0.0
    assert metrics["f1"] == 0.0
    assert metrics["diagnostic_odds_ratio"] == pytest.approx(1.0)
    assert metrics["diagnostic_odds_ratio_haldane_corrected"] is True


def test_npv_none_without_normal_predictions():
    metrics = binary_metrics([1, 0, 1, 0], [0.2, 0.1, 0.3, 0.4], 0.0)

    assert metrics["npv"] is None
    assert metrics["ppv"] == 0.5
    assert metrics["specificity"] == 0.0


def test_rates_from_counts_elementwise():
    rates = rates_from_counts(np.array([8, 0]), np.array([2, 0]), np.array([6, 3]), np.array([4, 2]))

    np.testing.assert_allclose(rates["sensitivity"], [8 / 12, 0.0])
    np.testing.assert_allclose(rates["ppv"], [0.8, np.nan])
    np.testing.assert_array_equal(rates["haldane_corrected"], [False, True])


def test_binary_metrics_one_class_rejected():
    with pytest.raises(ValueError, match="needs both classes"):
        binary_metrics([1, 1, 1], [0.2, 0.5, 0.9], THRESHOLD)


def test_brier_score_by_hand():
    # Squared errors 0.0625, 0.0625, 0.25 and 1.
    assert brier_score([1, 0, 1, 0], [0.75, 0.25, 0.5, 1.0]) == pytest.approx(1.375 / 4)


def test_ece_by_hand():
    # Bin [0, 0.5): score 0.25, label 0, gap 0.25. Bin [0.5, 1]: mean score 0.75, cancer
    # fraction 2/3, gap 1/12. ECE = 1/4 * 0.25 + 3/4 * 1/12.
    ece = expected_calibration_error([1, 0, 1, 0], [0.75, 0.25, 0.5, 1.0], n_bins=2)

    assert ece == pytest.approx(0.125)


def test_ece_one_bin_is_mean_gap():
    ece = expected_calibration_error([1, 0, 1, 0], [0.75, 0.25, 0.5, 1.0], n_bins=1)

    assert ece == pytest.approx(abs(0.5 - 2.5 / 4))


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_ece_invalid_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([1, 0], [0.7, 0.2], n_bins=n_bins)


def test_reliability_curve_by_hand():
    curve = reliability_curve([1, 0, 1, 0], [0.75, 0.25, 0.5, 1.0], n_bins=4)

    assert curve["bin_low"] == [0.0, 0.25, 0.5, 0.75]
    assert curve["bin_high"] == [0.25, 0.5, 0.75, 1.0]
    # Score 1.0 falls in the last bin, with 0.75.
    assert curve["count"] == [0, 1, 1, 2]
    assert curve["mean_score"] == [None, 0.25, 0.5, 0.875]
    assert curve["observed_fraction"] == [None, 0.0, 1.0, 0.5]


def test_roc_auc_hand_counted_pairs():
    # Cancer 0.8 beats 2 normals, 0.7 beats 2, 0.6 beats 1 and ties 1: 5.5 of 9 pairs.
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.8, 0.7, 0.6, 0.3, 0.6, 0.9]

    assert roc_auc(labels, scores) == pytest.approx(5.5 / 9)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[0, 1, rng.integers(0, 2, 50)]
    scores = rng.integers(0, 11, labels.size) / 10

    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


# Normal scores 0.1, 0.2, ..., 0.9 and 0.95, cancer scores 0.35, 0.65, 0.92, 0.97 and 0.99.
ROC_LABELS = [0] * 10 + [1] * 5
ROC_SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.35, 0.65, 0.92, 0.97, 0.99]


@pytest.mark.parametrize(
    ("specificity", "sensitivity"),
    [
        # Threshold 0.6: 5 normals below it, cancers 0.65, 0.92, 0.97, 0.99 at or above.
        (0.5, 0.8),
        # Threshold 0.92: 9 normals below it, cancers 0.92, 0.97, 0.99.
        (0.9, 0.6),
        # 0.95 * 10 normals needs all 10 below the threshold, so threshold 0.97.
        (0.95, 0.4),
        (1.0, 0.4),
        (0.0, 1.0),
    ],
)
def test_sensitivity_at_specificity_constructed_roc(specificity, sensitivity):
    assert sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, specificity) == pytest.approx(sensitivity)


def test_sensitivity_at_specificity_all_normal_point():
    # The normal sample has the highest score, so only predicting nothing reaches specificity 1.
    assert sensitivity_at_specificity([1, 0], [0.3, 0.9], 1.0) == 0.0


def test_sensitivity_at_specificity_key_format():
    assert sensitivity_at_specificity_key(0.9) == "sensitivity_at_specificity_90"
    assert sensitivity_at_specificity_key(0.975) == "sensitivity_at_specificity_97_5"


def test_sensitivity_by_group_counts():
    labels = [1, 1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.3, 0.8, 0.7, 0.2, 0.6, 0.1]
    groups = ["adeno", "adeno", "squamous", "squamous", "normal", "normal", "normal"]

    result = sensitivity_by_group(labels, scores, THRESHOLD, groups)

    assert list(result) == ["adeno", "normal", "squamous"]
    assert result["adeno"] == {"label": 1, "n": 2, "tp": 1, "fn": 1, "sensitivity": 0.5}
    assert result["squamous"] == {"label": 1, "n": 2, "tp": 2, "fn": 0, "sensitivity": 1.0}
    assert result["normal"] == {"label": 0, "n": 3, "tn": 2, "fp": 1, "specificity": pytest.approx(2 / 3)}


def test_sensitivity_by_group_mixed_group_rejected():
    with pytest.raises(ValueError, match="group 'adeno' contains both cancer and normal"):
        sensitivity_by_group([1, 0], [0.9, 0.1], THRESHOLD, ["adeno", "adeno"])


def test_sensitivity_by_group_length_mismatch():
    with pytest.raises(ValueError, match="groups must have one entry per sample"):
        sensitivity_by_group([1, 0], [0.9, 0.1], THRESHOLD, ["adeno"])


def test_bootstrap_indices_keep_class_counts():
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 1])

    indices = stratified_bootstrap_indices(labels, 200, np.random.default_rng(0))

    assert indices.shape == (200, labels.size)
    assert np.all(labels[indices[:, :5]] == 1)
    assert np.all(labels[indices[:, 5:]] == 0)
    np.testing.assert_array_equal(labels[indices].sum(axis=1), np.full(200, 5))
    # With replacement: some resample repeats a sample.
    assert any(np.unique(row).size < labels.size for row in indices)


def test_bootstrap_identity_resample_matches_point_metrics():
    labels, scores, _ = synthetic_test_split()
    threshold = 0.55
    distinct_scores, codes = np.unique(scores, return_inverse=True)
    positive_counts = np.bincount(codes[labels == 1], minlength=distinct_scores.size)[None, :].astype(float)
    negative_counts = np.bincount(codes[labels == 0], minlength=distinct_scores.size)[None, :].astype(float)

    values = resampled_metrics(distinct_scores, positive_counts, negative_counts, threshold, 10, (0.90, 0.95))
    expected = binary_metrics(labels, scores, threshold)

    for name, value in values.items():
        assert value[0] == pytest.approx(expected[name], rel=1e-12), name


def test_bootstrap_contains_point_estimate():
    labels, scores, _ = synthetic_test_split()
    threshold = 0.55

    intervals = bootstrap_ci(labels, scores, threshold, n_resamples=500, seed=0)
    point = binary_metrics(labels, scores, threshold)

    for name, interval in intervals.items():
        assert interval["low"] <= point[name] <= interval["high"], name
        assert interval["low"] < interval["high"], name


def test_bootstrap_reproducible_with_seed():
    labels, scores, _ = synthetic_test_split()

    first = bootstrap_ci(labels, scores, 0.55, n_resamples=200, seed=7)
    second = bootstrap_ci(labels, scores, 0.55, n_resamples=200, seed=7)
    other = bootstrap_ci(labels, scores, 0.55, n_resamples=200, seed=8)

    assert first == second
    assert first != other
    assert first["auc"] != other["auc"]


def test_bootstrap_undefined_metric_none():
    # No score reaches 0.99, so no resample predicts cancer and PPV is never defined.
    labels, scores, _ = synthetic_test_split()
    scores = np.minimum(scores, 0.98)

    intervals = bootstrap_ci(labels, scores, 0.99, n_resamples=50, seed=0)

    assert intervals["ppv"] == {"low": None, "high": None}
    assert intervals["sensitivity"] == {"low": 0.0, "high": 0.0}


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bootstrap_invalid_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1, 0], [0.9, 0.1], THRESHOLD, n_resamples=10, confidence=confidence)


def test_bootstrap_one_class_rejected():
    with pytest.raises(ValueError, match="needs both classes"):
        bootstrap_ci([0, 0], [0.9, 0.1], THRESHOLD, n_resamples=10)


def test_evaluate_split_json_without_nan():
    labels, scores, subtypes = synthetic_test_split()

    report = evaluate_split(labels, scores, 0.55, subtypes, n_resamples=200, seed=0)
    text = json.dumps(report, allow_nan=False)

    assert json.loads(text) == report
    assert report["n_samples"] == 315
    assert report["n_cancer"] == 261
    assert report["n_normal"] == 54
    assert report["confidence_intervals"]["n_resamples"] == 200
    assert set(report["confidence_intervals"]["metrics"]) <= set(report["metrics"])
    assert set(report["by_subtype"]) == {"adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma", "normal"}
    assert sum(report["reliability"]["count"]) == 315


def test_evaluate_split_deterministic():
    labels, scores, subtypes = synthetic_test_split()

    first = evaluate_split(labels, scores, 0.55, subtypes, n_resamples=100, seed=3)
    second = evaluate_split(labels, scores, 0.55, subtypes, n_resamples=100, seed=3)

    assert json.dumps(first) == json.dumps(second)


def test_evaluate_split_undefined_metrics_null():
    report = evaluate_split([1, 0, 1, 0], [0.2, 0.1, 0.3, 0.4], 0.9, None, n_resamples=20, seed=0)
    text = json.dumps(report, allow_nan=False)

    assert report["metrics"]["ppv"] is None
    assert report["by_subtype"] is None
    assert "NaN" not in text


def test_round_for_json_values():
    rounded = round_for_json({"a": np.float64(1 / 3), "b": [np.int64(2), -1e-9], "c": np.bool_(True), "d": None})

    assert rounded == {"a": 0.333333, "b": [2, 0.0], "c": True, "d": None}
    assert math.copysign(1.0, rounded["b"][1]) == 1.0
    assert type(rounded["b"][0]) is int


def test_round_for_json_rejects_nan():
    with pytest.raises(ValueError, match="finite float or None"):
        round_for_json({"auc": float("nan")})
