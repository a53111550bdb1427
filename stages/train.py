"""Train stage (phase 1): train the attention and head on a frozen backbone."""

import logging

from chestct import paths
from chestct.model import build_model, freeze_backbone
from chestct.params import load_params
from chestct.stage_runner import run_stage
from chestct.training import (
    COMMON_PARAMS,
    fit_phase,
    load_training_splits,
    open_live,
    phase_params,
    prepare_phase,
    record_best_epoch,
)

logger = logging.getLogger("stages.train")

PARAMS = (*COMMON_PARAMS, *phase_params("train"))


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    setup = prepare_phase(params, "train")
    train, valid = load_training_splits()

    model = build_model(setup.model)
    freeze_backbone(model)

    live = open_live(paths.TRAIN_LIVE_DIR)
    history = fit_phase(model, train, valid, setup, live, seed=setup.seed)
    record_best_epoch(history, live, first_step=0)

    paths.PHASE1_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(paths.PHASE1_WEIGHTS)
    logger.info("Wrote %s", paths.PHASE1_WEIGHTS)


if __name__ == "__main__":
    run_stage(main, logger)
