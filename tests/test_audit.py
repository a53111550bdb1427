"""Tests of the raw data audit on small generated image folders."""

import hashlib
import importlib.util
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestct import audit, duplicates
from chestct.audit import AuditError, AuditSettings, DecodeFailuresError, audit_dataset, decode_error_category
from chestct.layout import SPLITS, SUBTYPES, ManifestRow, label_of, write_manifest
from tests.datasets import TEST_FOLDERS, TRAIN_FOLDERS, encode

FOLDERS = {"train": TRAIN_FOLDERS, "valid": TRAIN_FOLDERS, "test": TEST_FOLDERS}
SETTINGS = AuditSettings(probe_trees=10, seed=0)


def pattern(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Draw a smooth random grayscale image. Different seeds give far-apart pHashes."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    height, width = size
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


class RawFolder:
    """A data/raw folder built file by file, with its manifest."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[ManifestRow] = []
        self.next_seed = 0

    def add(self, split: str, subtype: str, name: str, data: bytes) -> str:
        folder = FOLDERS[split][subtype]
        relative = f"images/{split}/{folder}/{name}"
        (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (self.root / relative).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self.rows.append(ManifestRow(relative, split, folder, label_of(subtype), subtype, digest, len(data)))
        return relative

    def add_pattern(self, split: str, subtype: str, name: str, size: tuple[int, int] = (48, 64)) -> str:
        self.next_seed += 1
        return self.add(split, subtype, name, encode(pattern(self.next_seed, size)))

    def manifest(self) -> Path:
        path = self.root / "manifest.csv"
        write_manifest(self.rows, path)
        return path


def filled_raw(root: Path, per_class: int = 2) -> RawFolder:
    """Build a raw folder with ``per_class`` distinct images of every subtype in every split."""
    raw = RawFolder(root)
    for split in SPLITS:
        for subtype in SUBTYPES:
            for index in range(per_class):
                raw.add_pattern(split, subtype, f"{subtype}_{index}.png")
    return raw


def file_row(files: pd.DataFrame, path: str) -> pd.Series:
    return files.set_index("path").loc[path]


def truncated_png() -> bytes:
    data = encode(pattern(999), "PNG", "L")
    return data[: len(data) // 2]


def lab_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("LAB", (16, 16)).save(buffer, format="TIFF")
    return buffer.getvalue()


def large_png() -> bytes:
    return encode(pattern(998, size=(200, 200)), "PNG", "L")


BROKEN_FILES = [
    ("empty", b""),
    ("not_image", b"this is a text file, not a PNG\n"),
    ("corrupt", truncated_png()),
    ("too_many_pixels", large_png()),
    ("unsupported_mode", lab_tiff()),
]


# ---------------------------------------------------------------------------------------------
# Counts and decoding


def test_counts_per_split_and_class(tmp_path):
    raw = filled_raw(tmp_path)
    raw.add_pattern("train", "normal", "extra.png")
    counts = audit_dataset(raw.manifest(), SETTINGS).metrics["counts"]

    assert counts["total"] == 25
    assert counts["train"]["total"] == 9
    assert counts["train"]["normal"] == 3
    assert counts["train"]["cancer"] == 6
    assert counts["valid"]["total"] == 8
    assert counts["test"]["cancer"] == 6


def test_counts_per_subtype(tmp_path):
    raw = filled_raw(tmp_path)
    raw.add_pattern("test", "large_cell_carcinoma", "extra.png")
    counts = audit_dataset(raw.manifest(), SETTINGS).metrics["counts"]

    assert counts["test"]["subtypes"]["large_cell_carcinoma"] == 3
    assert counts["test"]["subtypes"]["adenocarcinoma"] == 2
    assert counts["train"]["subtypes"]["normal"] == 2


def test_jpeg_named_png_decodes_as_jpeg(tmp_path):
    raw = filled_raw(tmp_path)
    path = raw.add("train", "adenocarcinoma", "photo.png", encode(pattern(500), "JPEG", "RGB"))
    result = audit_dataset(raw.manifest(), SETTINGS)
    row = file_row(result.files, path)

    assert row["format"] == "JPEG"
    assert row["mode"] == "RGB"
    assert row["decode_error"] == ""
    assert result.metrics["extension_mismatches"] == 1


def test_files_table_columns_and_order(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    files = audit_dataset(raw.manifest(), SETTINGS).files

    assert tuple(files.columns) == audit.FILES_COLUMNS
    assert files["path"].tolist() == sorted(files["path"])
    assert files["phash"].str.len().eq(16).all()


def test_files_table_image_size(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    path = raw.add_pattern("valid", "normal", "wide.png", size=(30, 90))
    row = file_row(audit_dataset(raw.manifest(), SETTINGS).files, path)

    assert row["width"] == 90
    assert row["height"] == 30


@pytest.mark.parametrize(("category", "data"), BROKEN_FILES, ids=[case[0] for case in BROKEN_FILES])
def test_decode_error_fail_names_file(tmp_path, category, data):
    raw = filled_raw(tmp_path, per_class=1)
    path = raw.add("valid", "normal", "broken.png", data)
    settings = AuditSettings(on_decode_error="fail", max_pixels=10_000, probe_trees=10)

    with pytest.raises(DecodeFailuresError) as caught:
        audit_dataset(raw.manifest(), settings)

    assert path in str(caught.value)
    assert "audit.on_decode_error" in str(caught.value)
    assert decode_error_category(caught.value.failures[0][1]) == category


@pytest.mark.parametrize(("category", "data"), BROKEN_FILES, ids=[case[0] for case in BROKEN_FILES])
def test_decode_error_skip_lists_reason(tmp_path, caplog, category, data):
    raw = filled_raw(tmp_path, per_class=1)
    path = raw.add("valid", "normal", "broken.png", data)
    settings = AuditSettings(on_decode_error="skip", max_pixels=10_000, probe_trees=10)

    with caplog.at_level(logging.WARNING, logger="chestct.audit"):
        result = audit_dataset(raw.manifest(), settings)
    row = file_row(result.files, path)
    errors = result.metrics["decode_errors"]

    assert decode_error_category(row["decode_error"]) == category
    assert row["phash"] == ""
    assert pd.isna(row["width"])
    assert errors["files"] == 1
    assert errors["by_reason"][category] == 1
    assert path in caplog.text


def test_decode_error_skip_keeps_counts(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    raw.add("test", "normal", "empty.png", b"")
    settings = AuditSettings(on_decode_error="skip", probe_trees=10)
    result = audit_dataset(raw.manifest(), settings)

    assert result.metrics["counts"]["test"]["normal"] == 2
    assert result.metrics["shortcut_probe"]["test"]["files"] == 4


def test_decode_error_fail_lists_all_files(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    first = raw.add("train", "normal", "empty.png", b"")
    second = raw.add("test", "normal", "text.png", b"hello")

    with pytest.raises(DecodeFailuresError) as caught:
        audit_dataset(raw.manifest(), SETTINGS)

    assert first in str(caught.value)
    assert second in str(caught.value)


def test_missing_image_raises(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    path = raw.add_pattern("train", "normal", "gone.png")
    manifest = raw.manifest()
    (tmp_path / path).unlink()

    with pytest.raises(AuditError, match="gone.png"):
        audit_dataset(manifest, SETTINGS)


def test_changed_image_raises(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    path = raw.add_pattern("train", "normal", "edited.png")
    manifest = raw.manifest()
    (tmp_path / path).write_bytes(encode(pattern(700)))

    with pytest.raises(AuditError, match="edited.png"):
        audit_dataset(manifest, SETTINGS)


# ---------------------------------------------------------------------------------------------
# Byte-identical duplicates


def test_exact_duplicates_within_split(tmp_path):
    raw = filled_raw(tmp_path)
    data = encode(pattern(600))
    raw.add("train", "normal", "a.png", data)
    raw.add("train", "normal", "b.png", data)
    raw.add("train", "normal", "c.png", data)
    exact = audit_dataset(raw.manifest(), SETTINGS).metrics["exact_duplicates"]

    assert exact["groups"] == 1
    assert exact["files"] == 3
    assert exact["within_split"]["train"] == {"groups": 1, "files": 3}
    assert exact["within_split"]["valid"] == {"groups": 0, "files": 0}
    assert exact["across_splits"]["train-valid"]["groups"] == 0


def test_exact_duplicates_across_splits(tmp_path):
    raw = filled_raw(tmp_path)
    data = encode(pattern(600))
    raw.add("train", "normal", "a.png", data)
    raw.add("valid", "normal", "b.png", data)
    raw.add("test", "normal", "c.png", data)
    raw.add("test", "normal", "d.png", data)
    exact = audit_dataset(raw.manifest(), SETTINGS).metrics["exact_duplicates"]

    assert exact["groups"] == 1
    assert exact["files"] == 4
    assert exact["within_split"]["test"] == {"groups": 1, "files": 2}
    assert exact["across_splits"]["train-valid"] == {"groups": 1, "train": 1, "valid": 1}
    assert exact["across_splits"]["train-test"] == {"groups": 1, "train": 1, "test": 2}
    assert exact["across_splits"]["valid-test"] == {"groups": 1, "valid": 1, "test": 2}
    assert exact["duplicate_of_earlier_split"] == {"train": 0, "valid": 1, "test": 2}


def test_exact_duplicates_by_class(tmp_path):
    raw = filled_raw(tmp_path)
    normal = encode(pattern(600))
    cancer = encode(pattern(601))
    raw.add("train", "normal", "a.png", normal)
    raw.add("test", "normal", "b.png", normal)
    raw.add("valid", "adenocarcinoma", "c.png", cancer)
    raw.add("valid", "squamous_cell_carcinoma", "d.png", cancer)
    by_class = audit_dataset(raw.manifest(), SETTINGS).metrics["exact_duplicates"]["by_class"]

    assert by_class["normal"]["across_splits"]["train-test"]["groups"] == 1
    assert by_class["normal"]["within_split"]["valid"]["groups"] == 0
    assert by_class["cancer"]["within_split"]["valid"] == {"groups": 1, "files": 2}
    assert by_class["cancer"]["across_splits"]["train-test"]["groups"] == 0


def test_duplicate_of_earlier_split_column(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    shared = encode(pattern(600))
    later = encode(pattern(601))
    original = raw.add("train", "normal", "original.png", shared)
    train_copy = raw.add("train", "normal", "copy.png", shared)
    valid_copy = raw.add("valid", "normal", "copy.png", shared)
    test_copy = raw.add("test", "normal", "copy.png", shared)
    valid_first = raw.add("valid", "adenocarcinoma", "first.png", later)
    test_second = raw.add("test", "adenocarcinoma", "second.png", later)
    files = audit_dataset(raw.manifest(), SETTINGS).files.set_index("path")
    flags = files["duplicate_of_earlier_split"]

    assert not flags[original]
    assert not flags[train_copy]
    assert flags[valid_copy]
    assert flags[test_copy]
    assert not flags[valid_first]
    assert flags[test_second]
    assert flags.sum() == 3


def test_duplicate_group_ids(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    first = raw.add("train", "normal", "a1.png", encode(pattern(600)))
    raw.add("valid", "normal", "a2.png", encode(pattern(600)))
    second = raw.add("train", "normal", "b1.png", encode(pattern(601)))
    raw.add("valid", "normal", "b2.png", encode(pattern(601)))
    unique = raw.add("train", "normal", "c.png", encode(pattern(602)))
    files = audit_dataset(raw.manifest(), SETTINGS).files.set_index("path")

    assert files.loc[first, "duplicate_group"] == 1
    assert files.loc[second, "duplicate_group"] == 2
    assert pd.isna(files.loc[unique, "duplicate_group"])


def test_conflict_same_bytes_two_labels(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    data = encode(pattern(600))
    raw.add("train", "normal", "x.png", data)
    raw.add("train", "adenocarcinoma", "x.png", data)
    result = audit_dataset(raw.manifest(), SETTINGS)
    report = result.duplicates

    assert result.metrics["conflicts"]["exact"] == {"groups": 1, "label": 1}
    assert report["conflict"].tolist() == [True, True]
    assert report["kind"].tolist() == ["exact", "exact"]


def test_conflict_same_label_two_subtypes(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    data = encode(pattern(600))
    raw.add("train", "large_cell_carcinoma", "x.png", data)
    raw.add("test", "squamous_cell_carcinoma", "x.png", data)
    conflicts = audit_dataset(raw.manifest(), SETTINGS).metrics["conflicts"]

    assert conflicts["exact"] == {"groups": 1, "label": 0}


def test_no_conflict_for_same_subtype(tmp_path):
    raw = filled_raw(tmp_path, per_class=1)
    data = encode(pattern(600))
    raw.add("train", "normal", "x.png", data)
    raw.add("valid", "normal", "x.png", data)
    result = audit_dataset(raw.manifest(), SETTINGS)

    assert result.metrics["conflicts"]["exact"]["groups"] == 0
    assert not result.duplicates["conflict"].any()


# ---------------------------------------------------------------------------------------------
# Near-duplicates


def brighter(gray: np.ndarray) -> np.ndarray:
    return np.clip(gray.astype(np.int16) + 1, 0, 255).astype(np.uint8)


def test_near_duplicates_across_splits(tmp_path):
    raw = filled_raw(tmp_path)
    gray = pattern(600, size=(64, 64))
    original = raw.add("train", "normal", "slice.png", encode(gray))
    brightened = raw.add("valid", "normal", "slice.png", encode(brighter(gray)))
    reencoded = raw.add("test", "normal", "slice.png", encode(gray, "JPEG", "RGB"))
    other = raw.add("test", "normal", "other.png", encode(pattern(601, size=(64, 64))))
    result = audit_dataset(raw.manifest(), SETTINGS)
    groups = result.files.set_index("path")["near_duplicate_group"]
    near = result.metrics["near_duplicates"]

    assert groups[original] == 1
    assert groups[brightened] == 1
    assert groups[reencoded] == 1
    assert pd.isna(groups[other])
    assert near["groups"] == 1
    assert near["files"] == 3
    assert near["pairs"] == 3
    assert near["across_splits"]["train-test"] == {"pairs": 1, "groups": 1, "train": 1, "test": 1}
    assert near["by_class"]["normal"]["across_splits"]["valid-test"]["pairs"] == 1
    assert near["by_class"]["cancer"]["across_splits"]["valid-test"]["pairs"] == 0


def test_near_duplicates_report_distances(tmp_path):
    raw = filled_raw(tmp_path)
    gray = pattern(600, size=(64, 64))
    raw.add("test", "normal", "slice.png", encode(gray, "JPEG", "RGB"))
    raw.add("train", "normal", "slice.png", encode(gray))
    report = audit_dataset(raw.manifest(), SETTINGS).duplicates
    near = report[report["kind"] == "near"]

    assert near["split"].tolist() == ["train", "test"]
    assert near["distance"].iloc[0] == 0
    assert near["distance"].iloc[1] <= SETTINGS.near_duplicate_max_distance


def test_near_duplicates_skip_same_split(tmp_path):
    raw = filled_raw(tmp_path)
    gray = pattern(600, size=(64, 64))
    raw.add("train", "normal", "slice.png", encode(gray))
    raw.add("train", "normal", "brighter.png", encode(brighter(gray)))
    files = audit_dataset(raw.manifest(), SETTINGS).files

    assert files["near_duplicate_group"].isna().all()


def test_near_duplicates_skip_identical_bytes(tmp_path):
    raw = filled_raw(tmp_path)
    data = encode(pattern(600))
    raw.add("train", "normal", "slice.png", data)
    raw.add("valid", "normal", "slice.png", data)
    result = audit_dataset(raw.manifest(), SETTINGS)

    assert result.metrics["near_duplicates"]["pairs"] == 0
    assert result.metrics["exact_duplicates"]["groups"] == 1


def test_near_duplicates_none_in_distinct_images(tmp_path):
    raw = filled_raw(tmp_path, per_class=3)
    near = audit_dataset(raw.manifest(), SETTINGS).metrics["near_duplicates"]

    assert near["pairs"] == 0
    assert near["groups"] == 0


def test_near_duplicate_conflict(tmp_path):
    raw = filled_raw(tmp_path)
    gray = pattern(600, size=(64, 64))
    raw.add("train", "normal", "slice.png", encode(gray))
    raw.add("test", "adenocarcinoma", "slice.png", encode(brighter(gray)))
    result = audit_dataset(raw.manifest(), SETTINGS)
    near = result.duplicates[result.duplicates["kind"] == "near"]

    assert result.metrics["conflicts"]["near"] == {"groups": 1, "label": 1}
    assert near["conflict"].all()


def test_near_duplicate_max_distance_zero(tmp_path):
    raw = filled_raw(tmp_path)
    gray = pattern(600, size=(64, 64))
    raw.add("train", "normal", "slice.png", encode(gray))
    raw.add("valid", "normal", "slice.png", encode(brighter(gray)))
    settings = AuditSettings(near_duplicate_max_distance=0, probe_trees=10)
    near = audit_dataset(raw.manifest(), settings).metrics["near_duplicates"]

    assert near["pairs_by_distance"] == {"0": 1}


# ---------------------------------------------------------------------------------------------
# Shortcut probe


def size_shortcut_raw(root: Path) -> RawFolder:
    """Build a raw folder whose normal images are 40x40 pixels and whose cancer images are 64x48."""
    raw = RawFolder(root)
    for split in SPLITS:
        for subtype in SUBTYPES:
            size = (40, 40) if subtype == "normal" else (48, 64)
            for index in range(3):
                raw.add_pattern(split, subtype, f"{subtype}_{index}.png", size=size)
    return raw


def test_probe_auc_one_on_size_shortcut(tmp_path):
    manifest = size_shortcut_raw(tmp_path).manifest()
    probe = audit_dataset(manifest, SETTINGS).metrics["shortcut_probe"]

    assert probe["valid"]["roc_auc"] == 1.0
    assert probe["test"]["roc_auc"] == 1.0
    assert probe["train_files"] == 12
    assert "width" in probe["features"]


def test_probe_counts_files_without_copies(tmp_path):
    raw = size_shortcut_raw(tmp_path)
    data = encode(pattern(600, size=(40, 40)))
    raw.add("train", "normal", "original.png", data)
    raw.add("valid", "normal", "copy.png", data)
    probe = audit_dataset(raw.manifest(), SETTINGS).metrics["shortcut_probe"]

    assert probe["valid"]["files"] == 13
    assert probe["valid"]["files_without_cross_split_duplicates"] == 12
    assert probe["valid"]["roc_auc_without_cross_split_duplicates"] == 1.0
    assert probe["test"]["files_without_cross_split_duplicates"] == 12


def test_probe_reproducible(tmp_path):
    manifest = filled_raw(tmp_path, per_class=3).manifest()
    first = audit_dataset(manifest, SETTINGS).metrics["shortcut_probe"]
    second = audit_dataset(manifest, SETTINGS).metrics["shortcut_probe"]

    assert first == second


def test_probe_one_class_split(tmp_path):
    raw = RawFolder(tmp_path)
    for split in SPLITS:
        subtypes = ["adenocarcinoma"] if split == "valid" else ["normal", "adenocarcinoma"]
        for subtype in subtypes:
            for index in range(2):
                raw.add_pattern(split, subtype, f"{subtype}_{index}.png")
    probe = audit_dataset(raw.manifest(), SETTINGS).metrics["shortcut_probe"]

    assert probe["valid"]["roc_auc"] is None
    assert "valid split" in probe["valid"]["reason"]
    assert probe["test"]["roc_auc"] is not None


def test_probe_one_class_train(tmp_path):
    raw = RawFolder(tmp_path)
    for split in SPLITS:
        subtypes = ["adenocarcinoma"] if split == "train" else ["normal", "adenocarcinoma"]
        for subtype in subtypes:
            raw.add_pattern(split, subtype, f"{subtype}.png")
    probe = audit_dataset(raw.manifest(), SETTINGS).metrics["shortcut_probe"]

    assert probe["valid"]["roc_auc"] is None
    assert probe["test"]["roc_auc"] is None
    assert "train split" in probe["test"]["reason"]


# ---------------------------------------------------------------------------------------------
# Outputs, settings and stage script


def write_outputs(result: audit.AuditResult, folder: Path) -> None:
    audit.write_audit_files(result.files, folder / "files.csv")
    audit.write_metrics(result.metrics, folder / "data.json")
    audit.write_duplicates_report(result.duplicates, folder / "duplicates.csv")


def mixed_raw(root: Path) -> RawFolder:
    """Build a raw folder with exact and near-duplicates, a conflict and an undecodable file."""
    raw = filled_raw(root)
    gray = pattern(600, size=(64, 64))
    raw.add("train", "normal", "slice.png", encode(gray))
    raw.add("valid", "normal", "slice.png", encode(gray))
    raw.add("test", "adenocarcinoma", "slice.png", encode(brighter(gray), "JPEG", "RGB"))
    raw.add("test", "normal", "empty.png", b"")
    return raw


def test_outputs_identical_across_runs(tmp_path):
    manifest = mixed_raw(tmp_path / "raw").manifest()
    settings = AuditSettings(on_decode_error="skip", probe_trees=10)
    write_outputs(audit_dataset(manifest, settings), tmp_path / "first")
    parallel = AuditSettings(on_decode_error="skip", probe_trees=10, workers=2)
    write_outputs(audit_dataset(manifest, parallel), tmp_path / "second")

    for name in ("files.csv", "data.json", "duplicates.csv"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_read_audit_files_round_trip(tmp_path):
    manifest = mixed_raw(tmp_path / "raw").manifest()
    result = audit_dataset(manifest, AuditSettings(on_decode_error="skip", probe_trees=10))
    audit.write_audit_files(result.files, tmp_path / "files.csv")
    files = audit.read_audit_files(tmp_path / "files.csv")

    pd.testing.assert_frame_equal(files, result.files)
    assert files["duplicate_of_earlier_split"].dtype == bool
    assert str(files["width"].dtype) == "Int64"


def test_read_audit_files_rejects_columns(tmp_path):
    path = tmp_path / "files.csv"
    path.write_text("path,split\nimages/a.png,train\n")

    with pytest.raises(AuditError, match="columns"):
        audit.read_audit_files(path)


def test_duplicates_report_columns(tmp_path):
    manifest = mixed_raw(tmp_path / "raw").manifest()
    result = audit_dataset(manifest, AuditSettings(on_decode_error="skip", probe_trees=10))
    audit.write_duplicates_report(result.duplicates, tmp_path / "duplicates.csv")
    header = (tmp_path / "duplicates.csv").read_text().splitlines()[0]

    assert header == ",".join(duplicates.DUPLICATES_COLUMNS)
    assert result.duplicates["kind"].tolist() == ["exact", "exact", "near", "near", "near"]


def test_settings_reject_unknown_mode():
    with pytest.raises(AuditError, match="on_decode_error"):
        AuditSettings(on_decode_error="ignore")


def test_settings_reject_distance_above_hash_bits():
    with pytest.raises(AuditError, match="near_duplicate_max_distance"):
        AuditSettings(near_duplicate_max_distance=65)


def test_settings_from_params_missing_key():
    with pytest.raises(AuditError, match="audit.probe_trees"):
        AuditSettings.from_params(
            {"seed": 1, "audit": {"on_decode_error": "fail", "near_duplicate_max_distance": 4, "max_pixels": 10}}
        )


def test_settings_from_params_values():
    params = {
        "seed": 7,
        "audit": {"on_decode_error": "skip", "near_duplicate_max_distance": 3, "max_pixels": 100, "probe_trees": 5},
    }
    settings = AuditSettings.from_params(params)

    assert settings == AuditSettings("skip", 3, 100, 5, seed=7, workers=1)


def load_stage_main():
    # stages/ is a folder of scripts, not a package.
    script = Path(__file__).resolve().parent.parent / "stages" / "audit.py"
    spec = importlib.util.spec_from_file_location("audit_stage", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def stage_folder(root: Path, on_decode_error: str) -> None:
    mixed_raw(root / "data" / "raw").manifest()
    (root / "params.yaml").write_text(
        "seed: 1\n"
        "audit:\n"
        f"  on_decode_error: {on_decode_error}\n"
        "  near_duplicate_max_distance: 4\n"
        "  max_pixels: 50000000\n"
        "  probe_trees: 10\n"
        "  workers: 1\n"
    )


def test_stage_writes_outputs(tmp_path, monkeypatch):
    main = load_stage_main()
    stage_folder(tmp_path, "skip")
    monkeypatch.chdir(tmp_path)

    assert main() == 0
    assert (tmp_path / "data" / "audit" / "files.csv").is_file()
    assert (tmp_path / "metrics" / "data.json").is_file()
    assert (tmp_path / "reports" / "duplicates.csv").is_file()


def test_stage_fails_on_decode_error(tmp_path, monkeypatch, caplog):
    main = load_stage_main()
    stage_folder(tmp_path, "fail")
    monkeypatch.chdir(tmp_path)

    assert main() == 1
    assert "empty.png" in caplog.text
    assert not (tmp_path / "metrics" / "data.json").exists()
