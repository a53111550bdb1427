"""End-to-end runs of the DVC pipeline on a small generated dataset and a tiny model."""

import csv
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from chestct.classifier import check_model
from chestct.cli import main as cli_main
from chestct.service import create_app
from tests.datasets import MOBILENET_V2_035_WEIGHTS, make_dataset
from tests.pipeline import PipelineRepo
from tests.server import running_server

PER_CLASS = 4

# A MobileNetV2 of width 0.35 at 32 px trains in seconds. Without its ImageNet weights the
# frozen backbone's features vanish, so the model would learn nothing, though every stage runs.
TINY_MODEL = {
    "preprocess.image_size": 32,
    "audit.probe_trees": 10,
    "model.backbone": "mobilenetv2",
    "model.alpha": 0.35,
    "model.weights": str(MOBILENET_V2_035_WEIGHTS) if MOBILENET_V2_035_WEIGHTS.is_file() else "none",
    "model.dense_units": [16, 8],
    "train.epochs": 2,
    "train.batch_size": 8,
    "train.epoch_factor": 1.0,
    "finetune.epochs": 2,
    "finetune.batch_size": 8,
    "finetune.epoch_factor": 1.0,
    # A model this small and this briefly trained reacts strongly to weight quantisation; the
    # tolerances themselves are tested in test_export.py.
    "export.quantised_tolerance": 1.0,
}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stages_run(result):
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    dataset = make_dataset(tmp_path_factory.mktemp("kaggle") / "chest-ctscan-images", per_class=PER_CLASS)
    repo = PipelineRepo.create(tmp_path_factory.mktemp("repo"), {"data.source": str(dataset), **TINY_MODEL})
    first = repo.run("dvc", "repro")
    repo.commit("Run the pipeline")
    return repo, first


def test_repro_runs_every_stage(pipeline):
    _, first = pipeline

    assert stages_run(first) == ["download", "audit", "preprocess", "train", "finetune", "evaluate", "export"]


def test_data_metrics_count_images(pipeline):
    repo, _ = pipeline

    metrics = json.loads((repo.root / "metrics/data.json").read_text())

    # Every split has PER_CLASS images per class, plus one normal image copied from train into
    # valid and test.
    assert metrics["counts"]["train"]["total"] == 4 * PER_CLASS
    assert metrics["counts"]["valid"]["total"] == 4 * PER_CLASS + 1
    assert metrics["counts"]["test"]["total"] == 4 * PER_CLASS + 1


def test_preprocessed_arrays_have_all_images(pipeline):
    repo, _ = pipeline

    test_images = np.load(repo.root / "data/preprocessed/test_images.npy")

    assert test_images.shape == (4 * PER_CLASS + 1, 32, 32, 1)


def test_finetune_continues_training_steps(pipeline):
    repo, _ = pipeline

    train = json.loads((repo.root / "dvclive/train/metrics.json").read_text())
    finetune_auc = (repo.root / "dvclive/finetune/plots/metrics/eval/auc.tsv").read_text().splitlines()

    assert train["step"] == TINY_MODEL["train.epochs"] - 1
    assert finetune_auc[1].split("\t")[0] == str(TINY_MODEL["train.epochs"])


def test_training_writes_models(pipeline):
    repo, _ = pipeline

    for name in ("phase1.weights.h5", "model.weights.h5", "model.keras"):
        assert (repo.root / "models" / name).stat().st_size > 0


def test_evaluate_scores_every_image(pipeline):
    repo, _ = pipeline

    metrics = json.loads((repo.root / "metrics/evaluate.json").read_text())
    predictions = (repo.root / "data/evaluate/predictions.csv").read_text().splitlines()

    assert metrics["test"]["n_samples"] == 4 * PER_CLASS + 1
    assert metrics["valid"]["n_samples"] == 4 * PER_CLASS + 1
    assert metrics["test_without_cross_split_duplicates"]["removed"] == 1
    assert len(predictions) == 1 + 2 * (4 * PER_CLASS + 1)


def test_threshold_names_its_model(pipeline):
    repo, _ = pipeline

    threshold = json.loads((repo.root / "models/threshold.json").read_text())

    assert threshold["chosen_on"] == "valid"
    assert threshold["model_sha256"] == digest(repo.root / "models/model.weights.h5")
    assert 0 <= threshold["threshold"] <= 1


def test_export_writes_every_format(pipeline):
    repo, _ = pipeline

    formats = json.loads((repo.root / "metrics/export.json").read_text())["formats"]

    assert set(formats) == {
        "keras",
        "h5",
        "saved_model",
        "tflite_float32",
        "tflite_dynamic_range",
        "tflite_float16",
        "onnx",
    }
    assert formats["tflite_float32"]["max_abs_difference"] < 1e-4
    assert (repo.root / "models/export/MODEL_CARD.md").read_text().startswith("# Model card")


def test_export_manifest_ties_every_export_to_the_weights(pipeline):
    repo, _ = pipeline

    manifest = json.loads((repo.root / "models/export/manifest.json").read_text())

    assert manifest["weights_sha256"] == digest(repo.root / "models/model.weights.h5")
    assert manifest["formats"]["onnx"]["sha256"] == digest(repo.root / "models/export/model.onnx")
    assert len(manifest["formats"]) == 7


def evaluated_test_images(repo):
    """Return (raw image path, probability) of each test image, as the evaluate stage scored it."""
    with (repo.root / "data/evaluate/predictions.csv").open(newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row["split"] == "test"]
    return [(repo.root / "data/raw" / row["path"], float(row["probability"])) for row in rows]


def test_service_probability_equals_the_evaluate_stage(pipeline):
    repo, _ = pipeline
    images = evaluated_test_images(repo)[:6]

    with running_server(create_app(repo.root)) as url:
        for path, expected in images:
            response = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)

            assert response.status_code == 200, response.text
            assert response.json()["probability"] == pytest.approx(expected, abs=1e-6)


def test_serving_reads_the_preprocessing_from_dvc_lock(pipeline):
    repo, _ = pipeline

    source = check_model(repo.root)

    assert source.params_source.endswith("dvc.lock")
    assert source.image_size == TINY_MODEL["preprocess.image_size"]


@pytest.mark.parametrize("export", ["model.onnx", "model_float32.tflite", "saved_model", "model.keras"])
def test_predict_with_an_export_matches_the_evaluate_stage(pipeline, export, tmp_path):
    repo, _ = pipeline
    images = dict(evaluated_test_images(repo))
    output = tmp_path / "predictions.csv"
    folder = repo.root / "data/raw/images/test"

    status = cli_main(
        [
            "predict",
            str(folder),
            "--root",
            str(repo.root),
            "--model",
            str(repo.root / "models/export" / export),
            "-o",
            str(output),
        ]
    )

    assert status == 0
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == len(images)
    for row in rows:
        assert float(row["probability"]) == pytest.approx(images[Path(row["path"])], abs=1e-4)


def test_evaluate_folder_reproduces_the_test_metrics(pipeline, tmp_path):
    repo, _ = pipeline
    output = tmp_path / "report.json"
    stage = json.loads((repo.root / "metrics/evaluate.json").read_text())["test"]

    status = cli_main(
        ["evaluate-folder", str(repo.root / "data/raw/images/test"), "--root", str(repo.root), "-o", str(output)]
    )

    assert status == 0
    report = json.loads(output.read_text())
    assert report["n_samples"] == stage["n_samples"]
    for name in ("auc", "sensitivity", "specificity"):
        assert report["metrics"][name] == pytest.approx(stage["metrics"][name], abs=1e-6)


def test_second_repro_runs_nothing(pipeline):
    repo, _ = pipeline

    second = repo.run("dvc", "repro")

    assert stages_run(second) == []


def test_status_clean_after_repro(pipeline):
    repo, _ = pipeline

    status = repo.run("dvc", "status")

    assert "up to date" in status.stdout


def test_metrics_show_lists_stage_metrics(pipeline):
    repo, _ = pipeline

    shown = repo.run("dvc", "metrics", "show").stdout

    for path in ("metrics/data.json", "dvclive/train/metrics.json", "metrics/evaluate.json"):
        assert path in shown


def test_plots_show_renders_training_curves(pipeline):
    repo, _ = pipeline

    repo.run("dvc", "plots", "show", "-o", "plots_html")

    assert (repo.root / "plots_html" / "index.html").is_file()


def test_retrained_phase1_weights_are_identical(pipeline):
    repo, _ = pipeline
    before = digest(repo.root / "models/phase1.weights.h5")

    repo.run("dvc", "repro", "-f", "-s", "train")

    assert digest(repo.root / "models/phase1.weights.h5") == before


def test_finetune_param_reruns_only_finetune(pipeline):
    repo, _ = pipeline

    experiment = repo.run("dvc", "exp", "run", "-S", "finetune.learning_rate=0.001")

    assert stages_run(experiment) == ["finetune", "evaluate", "export"]


def test_evaluate_param_reruns_only_evaluate(pipeline):
    repo, _ = pipeline

    experiment = repo.run("dvc", "exp", "run", "-S", "evaluate.threshold_method=target_sensitivity")
    threshold = json.loads((repo.root / "models/threshold.json").read_text())

    assert stages_run(experiment) == ["evaluate", "export"]
    assert threshold["method"] == "target_sensitivity"


def test_metrics_diff_shows_changed_threshold(pipeline):
    repo, _ = pipeline

    diff = repo.run("dvc", "metrics", "diff").stdout

    assert "threshold.threshold" in diff or "threshold.method" in diff


def test_drop_duplicates_reruns_from_preprocess(pipeline):
    repo, _ = pipeline

    experiment = repo.run("dvc", "exp", "run", "-S", "data.drop_cross_split_duplicates=true")
    counts = json.loads((repo.root / "metrics/preprocess.json").read_text())["splits"]

    assert stages_run(experiment) == ["preprocess", "train", "finetune", "evaluate", "export"]
    assert counts["valid"]["dropped_cross_split_duplicates"] == 1
    assert counts["test"]["dropped_cross_split_duplicates"] == 1
