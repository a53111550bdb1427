"""Tests of chestct.layout: finding the dataset root and listing its images."""

import os
import shutil
from pathlib import Path

import pytest

from chestct.layout import LayoutError, find_dataset_root, list_images, parse_class_folder
from tests.datasets import make_dataset


@pytest.fixture(scope="module")
def generated_dataset(tmp_path_factory) -> Path:
    """A generated dataset with ``Data/`` directly below the returned folder. Tests only read it."""
    return make_dataset(tmp_path_factory.mktemp("generated"), per_class=1, cross_split_duplicates=False)


@pytest.fixture
def dataset(generated_dataset, tmp_path) -> Path:
    """A copy of the generated dataset that a test may change."""
    return Path(shutil.copytree(generated_dataset, tmp_path / "dataset"))


def test_root_found_below_data(dataset):
    assert find_dataset_root(dataset) == dataset / "Data"


def test_missing_split_named(dataset):
    shutil.rmtree(dataset / "Data" / "valid")

    with pytest.raises(LayoutError, match="not in the Kaggle layout") as raised:
        find_dataset_root(dataset)

    assert f"Found train, test but not valid in {dataset / 'Data'}." in str(raised.value)


def test_missing_splits_named_per_folder(tmp_path):
    (tmp_path / "first" / "Data" / "train").mkdir(parents=True)
    (tmp_path / "second" / "Data" / "valid").mkdir(parents=True)
    (tmp_path / "second" / "Data" / "test").mkdir(parents=True)

    with pytest.raises(LayoutError) as raised:
        find_dataset_root(tmp_path)

    assert f"Found train but not valid, test in {tmp_path / 'first' / 'Data'}." in str(raised.value)
    assert f"Found valid, test but not train in {tmp_path / 'second' / 'Data'}." in str(raised.value)


def test_no_split_keeps_short_message(tmp_path):
    (tmp_path / "photos").mkdir()

    with pytest.raises(LayoutError) as raised:
        find_dataset_root(tmp_path)

    assert "Found" not in str(raised.value)


def test_unknown_class_folder_names_path(dataset):
    cats = dataset / "Data" / "train" / "cats"
    cats.mkdir()
    (cats / "cat.png").write_bytes(b"image")

    with pytest.raises(LayoutError, match="Unknown class folder") as raised:
        list_images(dataset / "Data")

    assert str(cats) in str(raised.value)
    assert "normal, adenocarcinoma" in str(raised.value)


def test_parse_class_folder_names_name():
    with pytest.raises(LayoutError, match="Unknown class folder 'cats'"):
        parse_class_folder("cats")


def test_symlinked_file_rejected(dataset):
    link = dataset / "Data" / "train" / "normal" / "link.png"
    link.symlink_to("/etc/hostname")

    with pytest.raises(LayoutError, match="symbolic link") as raised:
        list_images(dataset / "Data")

    assert str(link) in str(raised.value)


def test_symlinked_class_folder_rejected(dataset):
    link = dataset / "Data" / "valid" / "normal"
    shutil.rmtree(link)
    link.symlink_to(dataset / "Data" / "train" / "normal")

    with pytest.raises(LayoutError, match="symbolic link") as raised:
        list_images(dataset / "Data")

    assert str(link) in str(raised.value)


def test_symlinked_split_folder_rejected(dataset, tmp_path):
    link = dataset / "Data" / "test"
    shutil.move(link, tmp_path / "test")
    link.symlink_to(tmp_path / "test")

    with pytest.raises(LayoutError, match="symbolic link") as raised:
        list_images(dataset / "Data")

    assert str(link) in str(raised.value)


@pytest.mark.parametrize("link_name", ["Data", "chest/Data"])
def test_symlinked_data_folder_rejected(generated_dataset, tmp_path, link_name):
    source = tmp_path / "source"
    link = source / link_name
    link.parent.mkdir(parents=True)
    link.symlink_to(generated_dataset / "Data")

    with pytest.raises(LayoutError, match="symbolic link") as raised:
        find_dataset_root(source)

    assert str(link) in str(raised.value)


def test_fifo_in_class_folder_rejected(dataset):
    fifo = dataset / "Data" / "train" / "normal" / "fifo.png"
    os.mkfifo(fifo)

    with pytest.raises(LayoutError, match="neither a regular file nor a folder") as raised:
        list_images(dataset / "Data")

    assert str(fifo) in str(raised.value)


def test_hidden_symlink_skipped(dataset):
    (dataset / "Data" / "train" / "normal" / ".link").symlink_to("/etc/hostname")

    images = list_images(dataset / "Data")

    assert all(not path.name.startswith(".") for _, _, _, path in images)
