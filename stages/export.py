"""Export stage: write the fine-tuned model in every serving format and check each one."""

import json
import logging

from chestct import paths
from chestct.arrays import load_split
from chestct.export import check_tolerances, compare_exports, export_all, export_manifest
from chestct.model_card import render_model_card
from chestct.params import load_params
from chestct.report import write_json
from chestct.runtimes import load_runners
from chestct.scoring import (
    ARCHITECTURE_PARAMS,
    architecture_from_params,
    file_sha256,
    load_trained_model,
    predict_probabilities,
)
from chestct.stage_runner import run_stage

logger = logging.getLogger("stages.export")

PARAMS = (
    "data.source",
    *ARCHITECTURE_PARAMS,
    "export.float_tolerance",
    "export.quantised_tolerance",
)


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    tolerances = (params["export"]["float_tolerance"], params["export"]["quantised_tolerance"])
    # Checks the tolerance values themselves before any export work starts.
    check_tolerances({}, *tolerances)
    config = architecture_from_params(params)
    threshold = json.loads(paths.THRESHOLD_FILE.read_text(encoding="utf-8"))
    evaluation = json.loads(paths.EVALUATE_METRICS.read_text(encoding="utf-8"))

    model = load_trained_model(config, paths.MODEL_WEIGHTS)
    weights_sha256 = file_sha256(paths.MODEL_WEIGHTS)
    if weights_sha256 != threshold["model_sha256"]:
        raise ValueError(f"{paths.THRESHOLD_FILE} belongs to other weights; run dvc repro evaluate first.")
    exported = export_all(model, paths.EXPORT_DIR)

    test = load_split(paths.images_file("test"), paths.index_file("test"))
    reference = predict_probabilities(model, test.images)
    comparison = compare_exports(reference, load_runners(exported), test.images, threshold["threshold"])
    write_json(paths.EXPORT_METRICS, {"test_images": len(test.labels), "formats": comparison})
    check_tolerances(comparison, *tolerances)
    # Written after the checks, so that a manifest only ever describes exports that passed them.
    write_json(paths.EXPORT_MANIFEST, export_manifest(exported, paths.MODEL_WEIGHTS.as_posix(), weights_sha256))

    data = {"source": str(params["data"]["source"]), "manifest_sha256": file_sha256(paths.RAW_MANIFEST)}
    card = render_model_card(params, threshold, evaluation, data)
    (paths.EXPORT_DIR / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    logger.info("Wrote %d formats and the model card to %s", len(exported), paths.EXPORT_DIR)


if __name__ == "__main__":
    run_stage(main, logger)
