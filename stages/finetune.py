"""Finetune stage (phase 2): unfreeze the upper part of the backbone and train on."""

import logging

from chestct import paths
from chestct.model import build_model, unfreeze_top
from chestct.params import load_params
from chestct.stage_runner import run_stage
from chestct.training import (
    COMMON_PARAMS,
    fit_phase,
    load_training_splits,
    next_step_after,
    open_live,
    phase_params,
    prepare_phase,
    record_best_epoch,
)

logger = logging.getLogger("stages.finetune")

PARAMS = (*COMMON_PARAMS, *phase_params("finetune"), "finetune.unfreeze_fraction")


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    setup = prepare_phase(params, "finetune")
    train, valid = load_training_splits()

    model = build_model(setup.model)
    model.load_weights(paths.PHASE1_WEIGHTS)
    unfrozen = unfreeze_top(model, params["finetune"]["unfreeze_fraction"])
    logger.info("Unfroze %d backbone layers", unfrozen)

    # Phase 2's epochs continue phase 1's step count, so both draw one training curve.
    first_step = next_step_after(paths.TRAIN_LIVE_DIR)
    live = open_live(paths.FINETUNE_LIVE_DIR, first_step)
    # A seed other than phase 1's, so that phase 2 does not replay phase 1's batches.
    history = fit_phase(model, train, valid, setup, live, seed=setup.seed + 1)
    record_best_epoch(history, live, first_step)

    model.save_weights(paths.MODEL_WEIGHTS)
    model.save(paths.MODEL_KERAS)
    logger.info("Wrote %s and %s", paths.MODEL_WEIGHTS, paths.MODEL_KERAS)


if __name__ == "__main__":
    run_stage(main, logger)
