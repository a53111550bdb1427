"""Evaluate stage: choose the decision threshold on valid, then score the test split once."""

import functools
import logging

import numpy as np
from dvclive import Live

from chestct import paths
from chestct.arrays import load_split
from chestct.audit import read_audit_files
from chestct.duplicates import without_earlier_split_duplicates
from chestct.evaluation import check_evaluate_settings, evaluate_split
from chestct.params import load_params
from chestct.report import log_test_plots, write_json, write_predictions
from chestct.scoring import (
    ARCHITECTURE_PARAMS,
    architecture_from_params,
    file_sha256,
    load_trained_model,
    predict_probabilities,
)
from chestct.stage_runner import run_stage
from chestct.thresholds import choose_threshold

logger = logging.getLogger("stages.evaluate")

PARAMS = (
    "seed",
    *ARCHITECTURE_PARAMS,
    "evaluate.threshold_method",
    "evaluate.target_sensitivity",
    "evaluate.bootstrap_resamples",
    "evaluate.confidence",
    "evaluate.calibration_bins",
)


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    settings = params["evaluate"]
    check_evaluate_settings(settings)
    config = architecture_from_params(params)

    model = load_trained_model(config, paths.MODEL_WEIGHTS)
    splits = {name: load_split(paths.images_file(name), paths.index_file(name)) for name in ("valid", "test")}
    scored = {name: (split, predict_probabilities(model, split.images)) for name, split in splits.items()}
    (valid, valid_scores), (test, test_scores) = scored["valid"], scored["test"]

    method = settings["threshold_method"]
    target = settings["target_sensitivity"] if method == "target_sensitivity" else None
    choice = choose_threshold(valid.labels, valid_scores, method, target)
    threshold = {
        **choice.to_dict(),
        "chosen_on": "valid",
        "model_file": paths.MODEL_WEIGHTS.as_posix(),
        "model_sha256": file_sha256(paths.MODEL_WEIGHTS),
    }
    logger.info("Threshold %.6f chosen on valid by %s", choice.threshold, method)

    report = functools.partial(
        evaluate_split,
        threshold=choice.threshold,
        n_resamples=settings["bootstrap_resamples"],
        seed=params["seed"],
        confidence=settings["confidence"],
        n_bins=settings["calibration_bins"],
    )

    unique = without_earlier_split_duplicates(test.paths, read_audit_files(paths.AUDIT_FILES))
    test_subtypes = np.array(test.subtypes)
    metrics = {
        "threshold": threshold,
        "valid": report(valid.labels, valid_scores, subtypes=list(valid.subtypes)),
        "test": report(test.labels, test_scores, subtypes=list(test_subtypes)),
        "test_without_cross_split_duplicates": {
            "removed": int((~unique).sum()),
            **report(test.labels[unique], test_scores[unique], subtypes=list(test_subtypes[unique])),
        },
    }

    write_predictions(paths.PREDICTIONS_FILE, scored)
    write_json(paths.THRESHOLD_FILE, threshold)
    write_json(paths.EVALUATE_METRICS, metrics)
    with Live(dir=str(paths.EVALUATE_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        log_test_plots(live, test.labels, test_scores, choice.threshold)

    test_metrics = metrics["test"]["metrics"]
    logger.info(
        "Test (%d images): AUC %.4f, sensitivity %.4f, specificity %.4f",
        len(test.labels),
        test_metrics["auc"],
        test_metrics["sensitivity"],
        test_metrics["specificity"],
    )


if __name__ == "__main__":
    run_stage(main, logger)
