"""The ``chestct`` command line on a tiny real model."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestct.classifier import Classifier, check_model
from chestct.cli import main
from chestct.inputs import InputSettings, prepare_input
from tests.datasets import encode, synthetic_slice
from tests.project import copy_project, write_params

CHESTCT = Path(sys.executable).parent / "chestct"


def write_slices(folder: Path, count: int, cancer: bool, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for index in range(count):
        path = folder / f"slice_{index}.png"
        path.write_bytes(encode(synthetic_slice(rng, (120, 140), cancer), "PNG", "L"))
        files.append(path)
    return files


@pytest.fixture(scope="module")
def classifier(tiny_project):
    return Classifier(check_model(tiny_project))


def expected_probability(classifier, path: Path) -> float:
    settings = InputSettings.from_params(classifier.source.params["inference"])
    prepared = prepare_input(path.read_bytes(), classifier.preprocess, settings)
    return float(classifier.predict_images(prepared.image[None])[0])


def test_predict_scores_a_folder_and_writes_csv(tiny_project, classifier, tmp_path, capsys):
    files = write_slices(tmp_path / "scans", 3, cancer=True, seed=0)
    output = tmp_path / "results.csv"

    status = main(["predict", str(tmp_path / "scans"), "--root", str(tiny_project), "-o", str(output)])

    assert status == 0
    rows = list(csv.DictReader(output.open()))
    assert [row["path"] for row in rows] == [str(path) for path in files]
    for row, path in zip(rows, files, strict=True):
        assert float(row["probability"]) == pytest.approx(expected_probability(classifier, path), abs=1e-6)
        assert row["diagnosis"] == ("cancer" if float(row["probability"]) >= 0.5 else "normal")
        assert row["model_version"] == classifier.version
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["path", "probability", "diagnosis", "confidence"]
    assert str(files[0]) in table


def test_predict_reports_unreadable_files_and_scores_the_rest(tiny_project, tmp_path, capsys):
    write_slices(tmp_path / "scans", 2, cancer=False, seed=1)
    (tmp_path / "scans" / "notes.png").write_text("not an image")
    output = tmp_path / "results.json"

    status = main(["predict", str(tmp_path / "scans"), "--root", str(tiny_project), "-o", str(output)])

    assert status == 1
    rows = {Path(row["path"]).name: row for row in json.loads(output.read_text())}
    assert "not an image" in rows["notes.png"]["error"]
    assert rows["notes.png"]["probability"] is None
    assert rows["slice_0.png"]["error"] is None
    assert "1 of 3 files could not be scored" in capsys.readouterr().err


def test_predict_missing_path_is_usage_error(tiny_project, tmp_path, capsys):
    status = main(["predict", str(tmp_path / "missing.png"), "--root", str(tiny_project)])

    assert status == 2
    assert "missing.png not found" in capsys.readouterr().err


def test_predict_refuses_an_unknown_output_type_before_scoring(tiny_project, tmp_path, capsys):
    image = write_slices(tmp_path, 1, cancer=True, seed=2)[0]

    status = main(["predict", str(image), "--root", str(tiny_project), "-o", str(tmp_path / "out.xlsx")])

    assert status == 2
    assert ".csv or .json" in capsys.readouterr().err


def test_evaluate_folder_reports_metrics_with_intervals(tiny_project, tmp_path, capsys):
    write_slices(tmp_path / "test" / "normal", 4, cancer=False, seed=3)
    write_slices(tmp_path / "test" / "adenocarcinoma", 4, cancer=True, seed=4)
    output, predictions = tmp_path / "report.json", tmp_path / "predictions.csv"

    status = main(
        [
            "evaluate-folder",
            str(tmp_path / "test"),
            "--root",
            str(tiny_project),
            "--bootstrap-resamples",
            "50",
            "-o",
            str(output),
            "--predictions",
            str(predictions),
        ]
    )

    assert status == 0
    report = json.loads(output.read_text())
    assert (report["n_cancer"], report["n_normal"]) == (4, 4)
    assert report["threshold"] == 0.5
    matrix = report["metrics"]["confusion_matrix"]
    assert sum(np.ravel(list(matrix.values()) if isinstance(matrix, dict) else matrix)) == 8
    for name in ("auc", "sensitivity", "specificity"):
        interval = report["confidence_intervals"]["metrics"][name]
        assert interval["low"] <= report["metrics"][name] <= interval["high"]
    assert {row["class"] for row in csv.DictReader(predictions.open())} == {"normal", "adenocarcinoma"}
    printed = capsys.readouterr().out
    assert "sensitivity" in printed
    assert "95% CI" in printed


def test_evaluate_folder_label_mapping(tiny_project, tmp_path, capsys):
    write_slices(tmp_path / "hospital" / "benign", 3, cancer=False, seed=5)
    write_slices(tmp_path / "hospital" / "malignant", 3, cancer=True, seed=6)
    output = tmp_path / "report.json"
    args = ["evaluate-folder", str(tmp_path / "hospital"), "--root", str(tiny_project), "--bootstrap-resamples", "20"]

    assert main(args) == 2
    assert "--label NAME=0" in capsys.readouterr().err

    assert main([*args, "--label", "benign=0", "-o", str(output)]) == 0
    assert json.loads(output.read_text())["n_normal"] == 3


def test_explain_writes_a_grad_cam_overlay(tiny_project, tmp_path, capsys):
    image = write_slices(tmp_path, 1, cancer=True, seed=7)[0]
    output = tmp_path / "explained.png"

    status = main(["explain", str(image), "-o", str(output), "--root", str(tiny_project)])

    assert status == 0
    with Image.open(output) as written:
        assert written.size == (64, 64)
        assert written.mode == "RGB"
    assert "cancer probability" in capsys.readouterr().out


def test_explain_of_an_unreadable_file_names_it(tiny_project, tmp_path, capsys):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)

    status = main(["explain", str(bad), "-o", str(tmp_path / "out.png"), "--root", str(tiny_project)])

    assert status == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_console_script_runs_predict(tiny_project, tmp_path):
    image = write_slices(tmp_path, 1, cancer=True, seed=8)[0]

    result = subprocess.run(
        [str(CHESTCT), "predict", str(image), "--root", str(tiny_project)], capture_output=True, text=True, timeout=180
    )

    assert result.returncode == 0, result.stderr
    assert str(image) in result.stdout


def test_output_in_a_missing_folder_fails_before_scoring(tiny_project, tmp_path, capsys):
    image = write_slices(tmp_path, 1, cancer=True, seed=9)[0]
    output = tmp_path / "missing" / "results.csv"

    status = main(["predict", str(image), "--root", str(tiny_project), "-o", str(output)])

    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_empty_folder_is_a_usage_error(tiny_project, tmp_path, capsys):
    (tmp_path / "empty").mkdir()

    status = main(["predict", str(tmp_path / "empty"), "--root", str(tiny_project)])

    assert status == 2
    assert "No files found" in capsys.readouterr().err


def test_predict_rejects_fifo(tiny_project, tmp_path, capsys):
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)

    status = main(["predict", str(fifo), "--root", str(tiny_project)])

    assert status == 2
    assert "not a regular file" in capsys.readouterr().err


def test_predict_reports_oversized_file(tiny_project, tmp_path):
    root = copy_project(tiny_project, tmp_path / "limited")
    write_params(root, {"inference.max_upload_bytes": 1000})
    write_slices(tmp_path / "scans", 1, cancer=True, seed=10)
    output = tmp_path / "results.json"

    status = main(["predict", str(tmp_path / "scans"), "--root", str(root), "-o", str(output)])

    assert status == 1
    assert "inference.max_upload_bytes" in json.loads(output.read_text())[0]["error"]


def test_evaluate_folder_rejects_a_label_for_no_folder(tiny_project, tmp_path, capsys):
    write_slices(tmp_path / "test" / "normal", 2, cancer=False, seed=11)
    write_slices(tmp_path / "test" / "cancer", 2, cancer=True, seed=12)

    status = main(["evaluate-folder", str(tmp_path / "test"), "--root", str(tiny_project), "--label", "benign=0"])

    assert status == 2
    assert "No class folder named ['benign']" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.5", "0", "abc"])
def test_evaluate_folder_checks_the_confidence_first(tiny_project, tmp_path, value, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["evaluate-folder", str(tmp_path), "--root", str(tiny_project), "--confidence", value])

    assert caught.value.code == 2
    assert "--confidence" in capsys.readouterr().err
