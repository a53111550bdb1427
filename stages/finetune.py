"""Finetune stage (phase 2): unfreeze the upper part of the backbone and train on."""

import logging
import sys

from chestct import paths
from chestct.arrays import load_split
from chestct.model import ModelConfig, build_model, compile_model, unfreeze_top
from chestct.params import load_params
from chestct.training import (
    COMMON_PARAMS,
    PhaseConfig,
    augment_settings,
    fit_phase,
    next_step_after,
    open_live,
    phase_params,
    record_best_epoch,
    set_determinism,
)

logger = logging.getLogger("stages.finetune")

PARAMS = (*COMMON_PARAMS, *phase_params("finetune"), "finetune.unfreeze_fraction")


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    phase = PhaseConfig.from_params(params["finetune"], "finetune")
    augment, mixup_alpha = augment_settings(params["augment"])
    model_config = ModelConfig.from_params(params["model"], params["preprocess"]["image_size"])
    set_determinism(params["seed"], params["finetune"]["op_determinism"])

    train = load_split(paths.images_file("train"), paths.index_file("train"))
    valid = load_split(paths.images_file("valid"), paths.index_file("valid"))

    model = build_model(model_config)
    model.load_weights(paths.PHASE1_WEIGHTS)
    unfrozen = unfreeze_top(model, params["finetune"]["unfreeze_fraction"])
    logger.info("Unfroze %d backbone layers", unfrozen)
    compile_model(model, phase.learning_rate, params["loss"]["alpha"], params["loss"]["gamma"])

    # Phase 2's epochs continue phase 1's step count, so both draw one training curve.
    first_step = next_step_after(paths.TRAIN_LIVE_DIR)
    live = open_live(paths.FINETUNE_LIVE_DIR, first_step)
    # A different seed than phase 1, so that phase 2 does not replay phase 1's batches.
    history = fit_phase(model, train, valid, phase, augment, mixup_alpha, params["seed"] + 1, live)
    record_best_epoch(history, live, first_step)

    model.save_weights(paths.MODEL_WEIGHTS)
    model.save(paths.MODEL_KERAS)
    logger.info("Wrote %s and %s", paths.MODEL_WEIGHTS, paths.MODEL_KERAS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError) as error:
        logger.error("%s", error)
        sys.exit(1)
