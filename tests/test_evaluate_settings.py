import pytest

from chestct.evaluation import check_evaluate_settings

VALID = {
    "threshold_method": "youden",
    "target_sensitivity": 0.95,
    "bootstrap_resamples": 1000,
    "confidence": 0.95,
    "calibration_bins": 10,
}


def test_valid_settings_pass():
    check_evaluate_settings(VALID)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threshold_method", "foo"),
        ("target_sensitivity", 1.5),
        ("target_sensitivity", 0),
        ("target_sensitivity", "0.9"),
        ("bootstrap_resamples", 0),
        ("bootstrap_resamples", 10.5),
        ("confidence", 1.0),
        ("calibration_bins", True),
    ],
)
def test_invalid_setting_names_key(key, value):
    with pytest.raises(ValueError, match=f"evaluate.{key}"):
        check_evaluate_settings({**VALID, key: value})
