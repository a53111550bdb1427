import json
from dataclasses import fields

import pytest

from chestct.training import PhaseConfig, augment_settings, next_step_after, phase_params

VALID = {
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "epoch_factor": 2.0,
    "early_stopping_patience": 10,
    "reduce_lr_factor": 0.2,
    "reduce_lr_patience": 5,
    "min_learning_rate": 1e-6,
}


def test_phase_config_reads_section():
    config = PhaseConfig.from_params({**VALID, "op_determinism": True}, "train")

    assert config.learning_rate == 1e-4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("batch_size", 7),
        ("batch_size", True),
        ("learning_rate", 0),
        ("learning_rate", "1e-4"),
        ("reduce_lr_factor", 1.0),
        ("min_learning_rate", -1e-6),
    ],
)
def test_phase_config_rejects_invalid_values(key, value):
    with pytest.raises(ValueError, match=f"finetune.{key}"):
        PhaseConfig.from_params({**VALID, key: value}, "finetune")


def test_phase_config_names_missing_key():
    section = {key: value for key, value in VALID.items() if key != "epochs"}

    with pytest.raises(ValueError, match="train.epochs"):
        PhaseConfig.from_params(section, "train")


def test_phase_params_cover_every_field():
    keys = phase_params("train")

    assert len(keys) == len(fields(PhaseConfig)) + 1
    assert "train.op_determinism" in keys


def test_augment_settings_split_off_mixup():
    config, mixup_alpha = augment_settings({"enabled": False, "mixup_alpha": 0.2})

    assert mixup_alpha == 0.2
    assert config.enabled is False


def test_next_step_after_reads_last_step(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"step": 7}))

    assert next_step_after(tmp_path) == 8


def test_next_step_after_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        next_step_after(tmp_path)
