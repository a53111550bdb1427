"""End-to-end runs of the DVC pipeline on a small generated dataset."""

import json

import numpy as np
import pytest

from tests.datasets import make_dataset
from tests.pipeline import PipelineRepo

PER_CLASS = 3


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    dataset = make_dataset(tmp_path_factory.mktemp("kaggle") / "chest-ctscan-images", per_class=PER_CLASS)
    repo = PipelineRepo.create(
        tmp_path_factory.mktemp("repo"),
        {"data.source": str(dataset), "preprocess.image_size": 32, "audit.probe_trees": 10},
    )
    first = repo.run("dvc", "repro")
    return repo, first


def test_repro_runs_data_stages(pipeline):
    repo, first = pipeline

    for stage in ("download", "audit", "preprocess"):
        assert f"Running stage '{stage}'" in first.stdout


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


def test_second_repro_runs_nothing(pipeline):
    repo, _ = pipeline

    second = repo.run("dvc", "repro")

    assert "Running stage" not in second.stdout


def test_status_clean_after_repro(pipeline):
    repo, _ = pipeline

    status = repo.run("dvc", "status")

    assert "up to date" in status.stdout


def test_metrics_show_lists_data_metrics(pipeline):
    repo, _ = pipeline

    shown = repo.run("dvc", "metrics", "show")

    assert "metrics/data.json" in shown.stdout
