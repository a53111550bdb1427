"""Unit tests of the metadata shortcut probe on hand-written files tables.

tests/test_audit.py covers the probe end to end through ``audit_dataset`` on generated images.
"""

import json

import pandas as pd

from chestct.probe import run_shortcut_probe

# Every train file of a class has this (width, height), so the forest separates the classes
# by size alone and scores a file by its size.
NORMAL_SIZE = (40, 40)
CANCER_SIZE = (64, 48)


def files_table(rows: list[tuple[str, int, tuple[int, int], bool]]) -> pd.DataFrame:
    """Build a files table from ``(split, label, (width, height), duplicate_of_earlier_split)`` rows."""
    return pd.DataFrame(
        {
            "split": [split for split, _, _, _ in rows],
            "label": [label for _, label, _, _ in rows],
            "width": [size[0] for _, _, size, _ in rows],
            "height": [size[1] for _, _, size, _ in rows],
            "bytes": 1000,
            "format": "PNG",
            "mode": "L",
            "decode_error": "",
            "duplicate_of_earlier_split": [copy for _, _, _, copy in rows],
        }
    )


def train_rows() -> list[tuple[str, int, tuple[int, int], bool]]:
    return [("train", 0, NORMAL_SIZE, False)] * 4 + [("train", 1, CANCER_SIZE, False)] * 4


def scored_rows(split: str) -> list[tuple[str, int, tuple[int, int], bool]]:
    """Return two copies that the forest ranks right and two other files with the sizes swapped."""
    return [
        (split, 0, NORMAL_SIZE, True),
        (split, 1, CANCER_SIZE, True),
        (split, 0, CANCER_SIZE, False),
        (split, 1, NORMAL_SIZE, False),
    ]


def test_probe_scores_without_copies():
    files = files_table(train_rows() + scored_rows("valid") + scored_rows("test"))
    probe = run_shortcut_probe(files, trees=20, seed=0)

    for split in ("valid", "test"):
        scores = probe[split]
        assert scores["files"] == 4
        assert scores["files_without_cross_split_duplicates"] == 2
        # Of the four normal-cancer pairs, one is ranked right, two are ties and one is wrong.
        assert scores["roc_auc"] == 0.5
        assert scores["roc_auc_without_cross_split_duplicates"] == 0.0
        assert "reason" not in scores
        assert "reason_without_cross_split_duplicates" not in scores


def test_probe_copies_leave_one_class():
    valid = [("valid", 0, NORMAL_SIZE, True), ("valid", 1, CANCER_SIZE, False), ("valid", 1, CANCER_SIZE, False)]
    files = files_table(train_rows() + valid + scored_rows("test"))
    scores = run_shortcut_probe(files, trees=20, seed=0)["valid"]

    assert scores["roc_auc"] == 1.0
    assert scores["files_without_cross_split_duplicates"] == 2
    assert scores["roc_auc_without_cross_split_duplicates"] is None
    assert "valid split without copies" in scores["reason_without_cross_split_duplicates"]
    assert "reason" not in scores


def test_probe_only_copies_scored():
    test = [("test", 0, NORMAL_SIZE, True), ("test", 1, CANCER_SIZE, True)]
    files = files_table(train_rows() + scored_rows("valid") + test)
    scores = run_shortcut_probe(files, trees=20, seed=0)["test"]

    assert scores["files_without_cross_split_duplicates"] == 0
    assert scores["roc_auc_without_cross_split_duplicates"] is None
    assert "test split without copies" in scores["reason_without_cross_split_duplicates"]


def test_probe_one_class_train_both_reasons():
    train = [("train", 1, CANCER_SIZE, False)] * 4
    files = files_table(train + scored_rows("valid") + scored_rows("test"))
    scores = run_shortcut_probe(files, trees=20, seed=0)["test"]

    assert scores["roc_auc"] is None
    assert scores["roc_auc_without_cross_split_duplicates"] is None
    assert "train split" in scores["reason"]
    assert "train split" in scores["reason_without_cross_split_duplicates"]


def test_probe_skips_undecodable_copies():
    files = files_table(train_rows() + scored_rows("valid") + scored_rows("test"))
    undecodable = (files["split"] == "valid") & files["duplicate_of_earlier_split"] & (files["label"] == 0)
    files.loc[undecodable, "decode_error"] = "empty file"
    scores = run_shortcut_probe(files, trees=20, seed=0)["valid"]

    assert scores["files"] == 3
    assert scores["files_without_cross_split_duplicates"] == 2


def test_probe_metrics_json_repeatable():
    files = files_table(train_rows() + scored_rows("valid") + scored_rows("test"))
    first = json.dumps(run_shortcut_probe(files, trees=20, seed=3), sort_keys=True)
    second = json.dumps(run_shortcut_probe(files, trees=20, seed=3), sort_keys=True)

    assert first == second
