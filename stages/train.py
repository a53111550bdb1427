"""Train stage (phase 1): train the attention and head on a frozen backbone."""

import logging
import sys

from chestct import paths
from chestct.arrays import load_split
from chestct.model import ModelConfig, build_model, compile_model, freeze_backbone
from chestct.params import load_params
from chestct.training import (
    COMMON_PARAMS,
    PhaseConfig,
    augment_settings,
    fit_phase,
    open_live,
    phase_params,
    record_best_epoch,
    set_determinism,
)

logger = logging.getLogger("stages.train")

PARAMS = (*COMMON_PARAMS, *phase_params("train"))


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    phase = PhaseConfig.from_params(params["train"], "train")
    augment, mixup_alpha = augment_settings(params["augment"])
    model_config = ModelConfig.from_params(params["model"], params["preprocess"]["image_size"])
    set_determinism(params["seed"], params["train"]["op_determinism"])

    train = load_split(paths.images_file("train"), paths.index_file("train"))
    valid = load_split(paths.images_file("valid"), paths.index_file("valid"))

    model = build_model(model_config)
    freeze_backbone(model)
    compile_model(model, phase.learning_rate, params["loss"]["alpha"], params["loss"]["gamma"])

    live = open_live(paths.TRAIN_LIVE_DIR)
    history = fit_phase(model, train, valid, phase, augment, mixup_alpha, params["seed"], live)
    record_best_epoch(history, live, first_step=0)

    paths.PHASE1_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(paths.PHASE1_WEIGHTS)
    logger.info("Wrote %s", paths.PHASE1_WEIGHTS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError) as error:
        logger.error("%s", error)
        sys.exit(1)
