"""Finding, cross-checking and loading the trained model for inference."""

import json

import pytest
from ruamel.yaml import YAML

from chestct import paths
from chestct.classifier import Classifier, ModelMismatchError, Prediction, check_model
from chestct.digests import file_md5, path_sha256
from tests.project import copy_project, random_images, write_params


@pytest.fixture
def project(tiny_project, tmp_path):
    return copy_project(tiny_project, tmp_path / "copy")


def write_lock(root, weights_md5, preprocess, model):
    """Write a dvc.lock whose preprocess and finetune stages record the given parameters."""
    lock = {
        "schema": "2.0",
        "stages": {
            "preprocess": {"params": {"params.yaml": {f"preprocess.{k}": v for k, v in preprocess.items()}}},
            "finetune": {
                "params": {"params.yaml": {f"model.{k}": v for k, v in model.items()}},
                "outs": [{"path": "models/model.weights.h5", "hash": "md5", "md5": weights_md5}],
            },
        },
    }
    with (root / "dvc.lock").open("w", encoding="utf-8") as stream:
        YAML().dump(lock, stream)


def test_prediction_is_cancer_at_the_threshold_itself():
    assert Prediction(0.6, 0.6).diagnosis == "cancer"
    assert Prediction(0.5999, 0.6).diagnosis == "normal"


def test_confidence_is_the_probability_of_the_predicted_class():
    assert Prediction(0.8, 0.6).confidence == pytest.approx(0.8)
    assert Prediction(0.3, 0.6).confidence == pytest.approx(0.7)


def test_check_model_reads_the_weights_and_their_threshold(tiny_project):
    source = check_model(tiny_project)

    assert source.model_path == tiny_project / paths.MODEL_WEIGHTS
    assert source.version == source.sha256[:12]
    assert source.image_size == 64
    assert source.test_metrics["auc"] == 0.9
    assert source.params["inference"]["dicom_window_center"] == -600


def test_threshold_for_other_weights_is_refused(project):
    record = json.loads((project / paths.THRESHOLD_FILE).read_text())
    record["model_sha256"] = "0" * 64
    (project / paths.THRESHOLD_FILE).write_text(json.dumps(record))

    with pytest.raises(ModelMismatchError, match="SHA-256 0000.*dvc repro evaluate"):
        check_model(project)


def test_missing_threshold_names_the_stage_to_run(project):
    (project / paths.THRESHOLD_FILE).unlink()

    with pytest.raises(FileNotFoundError, match="threshold.json.*dvc repro evaluate"):
        check_model(project)


def test_corrupt_threshold_file_is_a_clear_error(project):
    (project / paths.THRESHOLD_FILE).write_text("{not json")

    with pytest.raises(ValueError, match="not valid JSON"):
        check_model(project)


def test_check_model_reads_parameters_from_dvc_lock(project):
    weights_md5 = file_md5(project / paths.MODEL_WEIGHTS)
    current = YAML(typ="safe").load((project / "params.yaml").read_text())
    write_lock(project, weights_md5, current["preprocess"], current["model"])
    # Edited after training: serving must still use what the weights were trained with.
    write_params(project, {"preprocess.image_size": 128, "preprocess.clahe": False})

    source = check_model(project)

    assert source.image_size == 64
    assert source.preprocess.clahe is True
    assert source.params_source.endswith("dvc.lock")


def test_dvc_lock_of_other_weights_is_refused(project):
    current = YAML(typ="safe").load((project / "params.yaml").read_text())
    write_lock(project, "f" * 32, current["preprocess"], current["model"])

    with pytest.raises(ModelMismatchError, match="dvc checkout"):
        check_model(project)


@pytest.fixture
def exported(tiny_project, tmp_path):
    """A copy of the tiny project with two export files and their manifest.

    ``check_model`` only compares digests, so the files need not hold real models; the
    pipeline test loads real exports.
    """
    from chestct.export import export_manifest

    root = copy_project(tiny_project, tmp_path / "exported")
    out = root / paths.EXPORT_DIR
    out.mkdir(parents=True)
    (out / "model.keras").write_bytes(b"keras archive")
    (out / "model_float32.tflite").write_bytes(b"tflite flatbuffer")
    files = {"keras": out / "model.keras", "tflite_float32": out / "model_float32.tflite"}
    manifest = export_manifest(files, paths.MODEL_WEIGHTS.as_posix(), check_model(root).sha256)
    (root / paths.EXPORT_MANIFEST).write_text(json.dumps(manifest))
    return root


def test_check_model_export_has_own_version(exported):
    model_path = exported / paths.EXPORT_DIR / "model_float32.tflite"

    source = check_model(exported, model_path)

    assert source.format == "tflite_float32"
    assert source.sha256 == path_sha256(model_path)
    assert source.version != check_model(exported).version


def test_check_model_rejects_changed_export(exported):
    root = exported
    model_path = root / paths.EXPORT_DIR / "model_float32.tflite"
    model_path.write_bytes(model_path.read_bytes() + b"\0")

    with pytest.raises(ModelMismatchError, match="changed after export"):
        check_model(root, model_path)


def test_check_model_rejects_export_of_other_weights(exported):
    root = exported
    manifest = json.loads((root / paths.EXPORT_MANIFEST).read_text())
    manifest["weights_sha256"] = "1" * 64
    (root / paths.EXPORT_MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ModelMismatchError, match="other weights"):
        check_model(root, root / paths.EXPORT_DIR / "model.keras")


def test_check_model_rejects_model_outside_exports(exported, tmp_path):
    stray = tmp_path / "elsewhere" / "model.onnx"
    stray.parent.mkdir()
    stray.write_bytes(b"onnx")

    with pytest.raises(FileNotFoundError, match="manifest.json"):
        check_model(exported, stray)


def test_describe_reports_the_threshold_and_test_metrics(tiny_project):
    description = Classifier(check_model(tiny_project)).describe()

    assert description["version"] == check_model(tiny_project).version
    assert description["threshold"] == {
        "value": 0.5,
        "method": "youden",
        "chosen_on": "valid",
        "validation_sensitivity": 0.9,
        "validation_specificity": 0.8,
    }
    assert description["test_metrics"]["sensitivity"] == 0.85
    assert description["file"] == "models/model.weights.h5"
    assert description["explain_available"] is True


def test_images_of_the_wrong_size_are_refused(tiny_project):
    classifier = Classifier(check_model(tiny_project))

    with pytest.raises(ValueError, match=r"\(N, 64, 64\)"):
        classifier.predict_images(random_images(1, 32))


@pytest.mark.parametrize("value", [1.5, -0.2, float("nan"), None, "0.5", True])
def test_invalid_threshold_values_are_refused(project, value):
    record = json.loads((project / paths.THRESHOLD_FILE).read_text())
    record["threshold"] = value
    (project / paths.THRESHOLD_FILE).write_text(json.dumps(record))

    with pytest.raises(ValueError, match="probability from 0 to 1"):
        check_model(project)


def test_missing_inference_section_names_the_key(project):
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.split("\ninference:")[0] + "\n")

    with pytest.raises(ValueError, match="inference.dicom_window_center"):
        check_model(project)


def test_broken_dvc_lock_is_a_clear_error(project):
    (project / "dvc.lock").write_text("stages: [unclosed\n")

    with pytest.raises(ValueError, match="dvc.lock is not valid YAML"):
        check_model(project)


def test_check_model_without_dvc_lock_warns(tiny_project, caplog):
    source = check_model(tiny_project)

    assert source.params_source.endswith("params.yaml")
    assert "No dvc.lock" in caplog.text
