"""Fixtures shared by the inference tests: one tiny trained-model folder per test session."""

import pytest

from tests.project import make_project


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """A model folder laid out as after ``dvc repro``; copy it before changing anything in it."""
    return make_project(tmp_path_factory.mktemp("project") / "chestct")
