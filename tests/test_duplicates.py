"""Unit tests of near-duplicate pairing and grouping on hand-written files tables.

tests/test_audit.py covers duplicates end to end through ``audit_dataset`` on generated images.
"""

import pandas as pd

from chestct.duplicates import (
    find_near_duplicate_pairs,
    flag_duplicates_of_earlier_split,
    group_exact_duplicates,
    group_near_duplicates,
)


def test_near_pairs_sorted_and_cross_split():
    files = pd.DataFrame(
        {
            "split": ["train", "train", "valid", "test"],
            "sha256": ["a", "b", "c", "d"],
            "phash": ["0000000000000000", "0000000000000003", "0000000000000001", "ffffffffffffffff"],
        }
    )
    pairs = find_near_duplicate_pairs(files, max_distance=2)

    assert pairs["first"].tolist() == [0, 1]
    assert pairs["second"].tolist() == [2, 2]
    assert pairs["distance"].tolist() == [1, 1]


def pair_table(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["first", "second"]).assign(distance=0)


def test_near_groups_join_chains():
    # Rows 0 and 4 are in no common pair but share row 2, so they land in one group.
    groups = group_near_duplicates(7, pair_table([(0, 2), (4, 2), (1, 5)]))

    assert groups[0] == 1
    assert groups[2] == 1
    assert groups[4] == 1
    assert groups[1] == 2
    assert groups[5] == 2
    assert groups[[3, 6]].isna().all()


def test_near_groups_ignore_pair_order():
    pairs = [(0, 2), (4, 2), (1, 5), (3, 4)]
    forward = group_near_duplicates(6, pair_table(pairs))
    backward = group_near_duplicates(6, pair_table([(second, first) for first, second in reversed(pairs)]))

    pd.testing.assert_series_equal(forward, backward)


def file_table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "split", "sha256", "decode_error"])


def test_exact_groups_skip_undecodable_files():
    files = file_table(
        [
            ("images/train/a.png", "train", "same", "empty file (0 bytes)"),
            ("images/valid/b.png", "valid", "same", "empty file (0 bytes)"),
            ("images/train/c.png", "train", "other", ""),
            ("images/test/d.png", "test", "other", ""),
        ]
    )

    groups = group_exact_duplicates(files)

    assert groups.isna().tolist() == [True, True, False, False]


def test_earlier_split_flag_skips_undecodable_files():
    files = file_table(
        [
            ("images/train/a.png", "train", "same", "empty file (0 bytes)"),
            ("images/valid/b.png", "valid", "same", "empty file (0 bytes)"),
            ("images/train/c.png", "train", "other", ""),
            ("images/test/d.png", "test", "other", ""),
        ]
    )

    assert flag_duplicates_of_earlier_split(files).tolist() == [False, False, False, True]
