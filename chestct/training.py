"""Training one phase of the classifier: callbacks, dvclive logging and determinism.

Both phases monitor the validation AUC with ``mode="max"``: early stopping restores the
weights of the best epoch, and the learning rate drops when the AUC stops rising.
"""

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from chestct import paths
from chestct.arrays import Split, load_split
from chestct.augment import AugmentConfig
from chestct.input_pipeline import balanced_training_dataset, default_steps_per_epoch, validation_dataset
from chestct.model import ModelConfig, compile_model

logger = logging.getLogger(__name__)

MONITOR = "val_auc"

# Parameters that both phases read, so that changing one retrains both.
COMMON_PARAMS = (
    "seed",
    "preprocess.image_size",
    "model.backbone",
    "model.alpha",
    "model.weights",
    "model.attention",
    "model.attention_ratio",
    "model.spatial_kernel",
    "model.dense_units",
    "model.dropout",
    "model.l2",
    "loss.alpha",
    "loss.gamma",
    "augment.enabled",
    "augment.rotation_degrees",
    "augment.shift",
    "augment.shear",
    "augment.zoom",
    "augment.horizontal_flip",
    "augment.vertical_flip",
    "augment.brightness",
    "augment.contrast",
    "augment.sharpness",
    "augment.mixup_alpha",
)


@dataclass(frozen=True)
class PhaseConfig:
    """Settings of one training phase, read from its ``params.yaml`` section."""

    epochs: int
    batch_size: int
    learning_rate: float
    epoch_factor: float
    early_stopping_patience: int
    reduce_lr_factor: float
    reduce_lr_patience: int
    min_learning_rate: float

    def __post_init__(self):
        for name in ("epochs", "batch_size", "early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even for half-normal, half-cancer batches, got {self.batch_size}.")
        for name in ("learning_rate", "epoch_factor", "min_learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if not 0 < self.reduce_lr_factor < 1:
            raise ValueError(f"reduce_lr_factor must be between 0 and 1, got {self.reduce_lr_factor!r}.")

    @classmethod
    def from_params(cls, section: dict[str, Any], name: str) -> "PhaseConfig":
        """Build the settings from a ``params.yaml`` section; ``name`` prefixes error messages."""
        try:
            return cls(**{field.name: section[field.name] for field in fields(cls)})
        except KeyError as error:
            raise ValueError(f"params.yaml is missing {name}.{error.args[0]}.") from None
        except ValueError as error:
            raise ValueError(f"{name}.{error}") from None


def phase_params(section: str) -> tuple[str, ...]:
    """Return the dotted keys of one phase's ``params.yaml`` section that its stage reads."""
    return tuple(f"{section}.{field.name}" for field in fields(PhaseConfig)) + (f"{section}.op_determinism",)


@dataclass(frozen=True)
class PhaseSetup:
    """Everything one training phase reads from ``params.yaml``, validated."""

    phase: PhaseConfig
    model: ModelConfig
    augment: AugmentConfig
    mixup_alpha: float
    focal_alpha: float
    focal_gamma: float
    seed: int


def prepare_phase(params: dict[str, Any], section: str) -> PhaseSetup:
    """Validate a phase's parameters and make its run deterministic.

    Args:
        params: the parameters loaded with the stage's ``PARAMS``.
        section: ``"train"`` or ``"finetune"``.
    """
    augment, mixup_alpha = augment_settings(params["augment"])
    setup = PhaseSetup(
        phase=PhaseConfig.from_params(params[section], section),
        model=ModelConfig.from_params(params["model"], params["preprocess"]["image_size"]),
        augment=augment,
        mixup_alpha=mixup_alpha,
        focal_alpha=params["loss"]["alpha"],
        focal_gamma=params["loss"]["gamma"],
        seed=params["seed"],
    )
    set_determinism(setup.seed, params[section]["op_determinism"])
    return setup


def load_training_splits() -> tuple[Split, Split]:
    """Load the preprocessed train and valid splits, memory-mapped."""
    return (
        load_split(paths.images_file("train"), paths.index_file("train")),
        load_split(paths.images_file("valid"), paths.index_file("valid")),
    )


def augment_settings(section: dict[str, Any]) -> tuple[AugmentConfig, float]:
    """Split the ``augment`` section of ``params.yaml`` into the augmentation and MixUp's alpha."""
    settings = dict(section)
    mixup_alpha = settings.pop("mixup_alpha", 0.0)
    return AugmentConfig.from_params(settings), mixup_alpha


def set_determinism(seed: int, op_determinism: bool) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's kernels deterministic.

    Op determinism makes a run repeat bit for bit on the same machine, at some cost in speed.
    """
    keras.utils.set_random_seed(seed)
    if op_determinism:
        tf.config.experimental.enable_op_determinism()


def make_callbacks(config: PhaseConfig, live: Live) -> list[keras.callbacks.Callback]:
    """Return early stopping, learning-rate reduction and dvclive logging, all on ``val_auc``."""
    return [
        keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=config.early_stopping_patience, restore_best_weights=True, verbose=1
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR,
            mode="max",
            factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience,
            min_lr=config.min_learning_rate,
            verbose=1,
        ),
        DVCLiveCallback(live=live),
    ]


def fit_phase(
    model: keras.Model, train: Split, valid: Split, setup: PhaseSetup, live: Live, seed: int
) -> keras.callbacks.History:
    """Train ``model`` on balanced, augmented batches and validate on the fixed valid split.

    The model is compiled here with the phase's learning rate. The best epoch's weights
    (highest validation AUC) are restored at the end. ``seed`` fixes the batches.
    """
    config = setup.phase
    compile_model(model, config.learning_rate, setup.focal_alpha, setup.focal_gamma)
    steps = default_steps_per_epoch(len(train.labels), config.batch_size, config.epoch_factor)
    train_data = balanced_training_dataset(
        train.images, train.labels, config.batch_size, setup.augment, setup.mixup_alpha, seed
    )
    valid_data = validation_dataset(valid.images, valid.labels, config.batch_size)

    logger.info("Training %d epochs of %d steps of %d images", config.epochs, steps, config.batch_size)
    return model.fit(
        train_data,
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=valid_data,
        callbacks=make_callbacks(config, live),
        shuffle=False,
        verbose=2,
    )


def record_best_epoch(history: keras.callbacks.History, live: Live, first_step: int) -> dict[str, float]:
    """Add the best epoch's validation AUC and loss to the dvclive summary and return them."""
    aucs = history.history[MONITOR]
    best = max(range(len(aucs)), key=aucs.__getitem__)
    summary = {
        "best_step": first_step + best,
        "best_eval_auc": float(aucs[best]),
        "best_eval_loss": float(history.history["val_loss"][best]),
        "epochs_run": len(aucs),
    }
    live.summary.update(summary)
    live.make_summary()
    logger.info("Best epoch %d of %d: validation AUC %.4f", best + 1, len(aucs), aucs[best])
    return summary


def open_live(folder: Path, first_step: int = 0) -> Live:
    """Open a dvclive logger for one stage, with step numbers starting at ``first_step``.

    ``dvcyaml=False`` keeps dvclive from rewriting ``dvc.yaml`` during ``dvc repro``; the
    stage declares its metrics and plots there itself.
    """
    live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False)
    live.step = first_step
    return live


def next_step_after(folder: Path) -> int:
    """Return the step after the last one that a finished dvclive run in ``folder`` logged."""
    metrics_file = Path(folder) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} not found; run the train stage first (dvc repro train).")
    return int(json.loads(metrics_file.read_text(encoding="utf-8"))["step"]) + 1
