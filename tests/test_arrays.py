import hashlib

import numpy as np
import pandas as pd
import pytest

from chestct.arrays import SourceImage, load_split, select_sources, write_split
from chestct.imaging import ImageDecodeError
from chestct.preprocessing import PreprocessConfig
from tests.datasets import encode, synthetic_slice

CONFIG = PreprocessConfig(image_size=32)


@pytest.fixture
def sources(tmp_path):
    rng = np.random.default_rng(3)
    items = []
    for index in range(10):
        path = tmp_path / "raw" / f"image_{index}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode(synthetic_slice(rng, (40, 60), cancer=index % 2 == 1)))
        items.append(SourceImage(path, f"images/train/x/image_{index}.png", index % 2, "normal", f"{index:064x}"))
    return items


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_split_round_trip(tmp_path, sources):
    write_split(sources, tmp_path / "train_images.npy", tmp_path / "train.csv", CONFIG)

    split = load_split(tmp_path / "train_images.npy", tmp_path / "train.csv")

    assert split.images.shape == (10, 32, 32, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.tolist() == [index % 2 for index in range(10)]
    assert split.paths[3] == "images/train/x/image_3.png"


def test_write_split_bytes_repeat(tmp_path, sources):
    write_split(sources, tmp_path / "a.npy", tmp_path / "a.csv", CONFIG)
    write_split(sources, tmp_path / "b.npy", tmp_path / "b.csv", CONFIG)

    assert digest(tmp_path / "a.npy") == digest(tmp_path / "b.npy")
    assert digest(tmp_path / "a.csv") == digest(tmp_path / "b.csv")


def test_worker_count_does_not_change_bytes(tmp_path, sources):
    write_split(sources, tmp_path / "one.npy", tmp_path / "one.csv", CONFIG, workers=1)
    write_split(sources, tmp_path / "two.npy", tmp_path / "two.csv", CONFIG, workers=2)

    assert digest(tmp_path / "one.npy") == digest(tmp_path / "two.npy")


def test_decode_failure_leaves_old_files(tmp_path, sources):
    write_split(sources, tmp_path / "train_images.npy", tmp_path / "train.csv", CONFIG)
    before = digest(tmp_path / "train_images.npy")
    sources[4].file.write_bytes(b"not an image")

    with pytest.raises(ImageDecodeError, match="image_4.png"):
        write_split(sources, tmp_path / "train_images.npy", tmp_path / "train.csv", CONFIG, workers=2)

    assert digest(tmp_path / "train_images.npy") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw", "train.csv", "train_images.npy"]


def test_load_split_rejects_length_mismatch(tmp_path, sources):
    write_split(sources, tmp_path / "train_images.npy", tmp_path / "train.csv", CONFIG)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(lines[:-1]) + "\n")

    with pytest.raises(ValueError, match="10 images but"):
        load_split(tmp_path / "train_images.npy", tmp_path / "train.csv")


def test_load_split_missing_file_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro preprocess"):
        load_split(tmp_path / "valid_images.npy", tmp_path / "valid.csv")


def audit_table():
    rows = [
        ("images/train/normal/a.png", "train", 0, "normal", "a", "", False),
        ("images/train/normal/b.png", "train", 0, "normal", "b", "not an image", False),
        ("images/valid/normal/a.png", "valid", 0, "normal", "a", "", True),
        ("images/valid/adeno/c.png", "valid", 1, "adenocarcinoma", "c", "", False),
        ("images/test/normal/a.png", "test", 0, "normal", "a", "", True),
        ("images/test/adeno/d.png", "test", 1, "adenocarcinoma", "d", "", False),
    ]
    columns = ["path", "split", "label", "subtype", "sha256", "decode_error", "duplicate_of_earlier_split"]
    return pd.DataFrame(rows, columns=columns)


def test_select_sources_skips_undecodable(tmp_path):
    sources, counts = select_sources(audit_table(), tmp_path, drop_cross_split_duplicates=False)

    assert [source.path for source in sources["train"]] == ["images/train/normal/a.png"]
    assert counts["train"]["skipped_undecodable"] == 1


def test_select_sources_keeps_duplicates_by_default(tmp_path):
    sources, counts = select_sources(audit_table(), tmp_path, drop_cross_split_duplicates=False)

    assert len(sources["test"]) == 2
    assert counts["test"]["dropped_cross_split_duplicates"] == 0


def test_select_sources_drops_duplicates(tmp_path):
    sources, counts = select_sources(audit_table(), tmp_path, drop_cross_split_duplicates=True)

    assert [source.path for source in sources["valid"]] == ["images/valid/adeno/c.png"]
    assert counts["valid"]["dropped_cross_split_duplicates"] == 1
    assert counts["test"]["images"] == 1


def test_select_sources_resolves_files(tmp_path):
    sources, _ = select_sources(audit_table(), tmp_path, drop_cross_split_duplicates=False)

    assert sources["test"][1].file == tmp_path / "images/test/adeno/d.png"


@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_select_sources_rejects_non_boolean_drop(tmp_path, value):
    with pytest.raises(ValueError, match="data.drop_cross_split_duplicates"):
        select_sources(audit_table(), tmp_path, drop_cross_split_duplicates=value)


def test_select_sources_rejects_empty_split(tmp_path):
    table = audit_table()
    table.loc[table["split"] == "valid", "decode_error"] = "empty file (0 bytes)"

    with pytest.raises(ValueError, match="Split valid has no image left"):
        select_sources(table, tmp_path, drop_cross_split_duplicates=False)


@pytest.mark.parametrize("workers", [0, -1, 2.5, "abc", True])
def test_write_split_rejects_invalid_workers(tmp_path, sources, workers):
    with pytest.raises(ValueError, match="preprocess.workers"):
        write_split(sources, tmp_path / "a.npy", tmp_path / "a.csv", CONFIG, workers=workers)
