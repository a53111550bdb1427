"""Byte-identical duplicates, near-duplicates across splits, and label conflicts between them.

- Byte-identical duplicates: files with the same SHA-256, within a split or across splits. A
  file is a duplicate of an earlier split when a byte-identical file exists in a split that
  comes before its own in the order train, valid, test. Removing those files leaves no
  byte-identical file shared between splits.
- Near-duplicates: pairs of files in different splits whose perceptual hashes differ in at
  most ``near_duplicate_max_distance`` bits, excluding byte-identical pairs. The hash is
  ``imagehash.phash`` (imagehash 4.3) of the grayscale image: imagehash resizes the image to
  32x32, takes its 2-D DCT and sets one bit for each of the 8x8 lowest-frequency coefficients
  that is above their median, 64 bits in all. The distance is the Hamming distance between two
  hashes. Pairs are joined into groups by connected components, so two members of one group
  can be further apart than the threshold. Pairs within one split are not searched.
- Conflicts: duplicate or near-duplicate groups whose members disagree on label or subtype.

Every function takes the files table built by ``chestct.audit``, sorted by path with a default
``RangeIndex``.
"""

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from chestct.layout import SPLITS

SPLIT_PAIRS = (("train", "valid"), ("train", "test"), ("valid", "test"))
# Metric keys of the binary labels. They live in the lowest module that uses them, so that
# chestct.audit imports them downward.
CLASS_NAMES = {0: "normal", 1: "cancer"}
DUPLICATES_COLUMNS = ("kind", "group", "split", "path", "label", "subtype", "sha256", "phash", "distance", "conflict")

_SPLIT_RANK = {split: rank for rank, split in enumerate(SPLITS)}

# Bounds the XOR matrix of one block of hashes to about 32 MiB of uint64.
_MAX_DISTANCE_MATRIX_CELLS = 4_000_000


# ---------------------------------------------------------------------------------------------
# Byte-identical and near-duplicates


def group_exact_duplicates(files: pd.DataFrame) -> pd.Series:
    """Number the groups of files with the same SHA-256 from 1, missing for unique files.

    Undecodable files belong to no group: they are reported as decode errors, and counting,
    say, a dozen empty files as one duplicate group would inflate the duplicate figures.
    """
    # Files are sorted by path, so ids follow the path of each group's first member.
    sha256 = files["sha256"].where(files["decode_error"] == "")
    sizes = sha256.groupby(sha256).transform("size")
    duplicated = sha256.where(sizes > 1)
    codes, _ = pd.factorize(duplicated, use_na_sentinel=True)
    groups = pd.array([code + 1 if code >= 0 else pd.NA for code in codes], dtype="Int64")
    return pd.Series(groups, index=files.index)


def flag_duplicates_of_earlier_split(files: pd.DataFrame) -> pd.Series:
    """Mark files that are byte-identical to a file of an earlier split in the order train, valid, test.

    Only decodable files count, on both sides.
    """
    decodable = files["decode_error"] == ""
    ranks = files["split"].map(_SPLIT_RANK).where(decodable)
    earliest = ranks.groupby(files["sha256"]).transform("min")
    return ((earliest < ranks) & decodable).astype(bool)


def find_near_duplicate_pairs(files: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Find pairs of files in different splits whose pHashes differ in at most ``max_distance`` bits.

    Byte-identical pairs and undecodable files are left out. ``files`` must have a default
    ``RangeIndex``.

    Returns:
        Columns ``first`` and ``second`` (row positions in ``files``, ``first`` in the earlier
        split) and ``distance``, sorted by ``first``, then ``second``.
    """
    hashes = _phash_integers(files["phash"])
    decodable = files["phash"].to_numpy() != ""
    split_of = files["split"].to_numpy()
    sha256 = files["sha256"].to_numpy()
    found = []

    for earlier, later in SPLIT_PAIRS:
        first_rows = np.flatnonzero(decodable & (split_of == earlier))
        second_rows = np.flatnonzero(decodable & (split_of == later))
        if len(first_rows) == 0 or len(second_rows) == 0:
            continue
        block_size = max(1, _MAX_DISTANCE_MATRIX_CELLS // len(second_rows))

        for start in range(0, len(first_rows), block_size):
            block = first_rows[start : start + block_size]
            distances = np.bitwise_count(hashes[block, None] ^ hashes[None, second_rows])
            rows, columns = np.nonzero(distances <= max_distance)
            found.append(
                pd.DataFrame(
                    {
                        "first": block[rows],
                        "second": second_rows[columns],
                        "distance": distances[rows, columns].astype("int64"),
                    }
                )
            )

    if found:
        pairs = pd.concat(found, ignore_index=True)
    else:
        pairs = pd.DataFrame(columns=["first", "second", "distance"], dtype="int64")
    identical = sha256[pairs["first"].to_numpy(dtype=np.int64)] == sha256[pairs["second"].to_numpy(dtype=np.int64)]
    pairs = pairs[~identical].astype("int64")
    return pairs.sort_values(["first", "second"], ignore_index=True)


def _phash_integers(phashes: pd.Series) -> np.ndarray:
    # Undecodable files get 0, so callers must mask them out.
    return np.array([int(value, 16) if value else 0 for value in phashes], dtype=np.uint64)


def group_near_duplicates(size: int, pairs: pd.DataFrame) -> pd.Series:
    """Number the connected components of near-duplicate ``pairs`` from 1, in order of their first row.

    ``size`` is the number of rows of the files table. Rows in no pair are missing.
    """
    # Union-find that always keeps the smaller row as the root, so every root is the member
    # with the smallest path and the ids do not depend on the order of the pairs.
    parent = list(range(size))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in zip(pairs["first"], pairs["second"], strict=True):
        root_first, root_second = find(int(first)), find(int(second))
        if root_first != root_second:
            parent[max(root_first, root_second)] = min(root_first, root_second)

    members = sorted(set(pairs["first"].tolist()) | set(pairs["second"].tolist()))
    roots = {node: find(node) for node in members}
    ids = {root: number for number, root in enumerate(sorted(set(roots.values())), start=1)}
    groups = [ids[roots[node]] if node in roots else pd.NA for node in range(size)]
    return pd.Series(pd.array(groups, dtype="Int64"))


def build_duplicates_report(files: pd.DataFrame) -> pd.DataFrame:
    """List every member of every exact and near-duplicate group, one row each.

    Rows are sorted by kind (exact first), group, split in the order train, valid, test, and
    path. ``distance`` is the pHash Hamming distance to the group's first member in that order,
    and is empty for exact groups. ``conflict`` is true when the group's labels or subtypes
    disagree.
    """
    parts = []
    for kind, column in (("exact", "duplicate_group"), ("near", "near_duplicate_group")):
        members = files[files[column].notna()].copy()
        members["kind"] = kind
        members["group"] = members[column].astype("int64")
        members["_rank"] = members["split"].map(_SPLIT_RANK)
        members = members.sort_values(["group", "_rank", "path"], ignore_index=True)
        members["conflict"] = _conflicting_groups(members).reindex(members["group"]).to_numpy()
        if kind == "near":
            members["distance"] = _distance_to_first_member(members)
        else:
            members["distance"] = pd.array([pd.NA] * len(members), dtype="Int64")
        parts.append(members)

    report = pd.concat(parts, ignore_index=True)[list(DUPLICATES_COLUMNS)]
    report["distance"] = report["distance"].astype("Int64")
    report["conflict"] = report["conflict"].astype(bool)
    return report


def _conflicting_groups(members: pd.DataFrame) -> pd.Series:
    grouped = members.groupby("group")
    return (grouped["label"].nunique() > 1) | (grouped["subtype"].nunique() > 1)


def _distance_to_first_member(members: pd.DataFrame) -> pd.Series:
    # Members are sorted within each group, so the first row of a group is its first member.
    hashes = pd.Series(_phash_integers(members["phash"]), index=members.index)
    reference = hashes.groupby(members["group"]).transform("first")
    distances = np.bitwise_count(hashes.to_numpy() ^ reference.to_numpy(dtype=np.uint64)).astype("int64")
    return pd.Series(pd.array(distances, dtype="Int64"), index=members.index)


# ---------------------------------------------------------------------------------------------
# Metrics


def summarise_exact_duplicates(files: pd.DataFrame) -> dict[str, Any]:
    """Count byte-identical groups and files, within and across splits, overall and per class."""
    earlier = files[files["duplicate_of_earlier_split"]]
    metrics = _exact_duplicate_counts(files)
    metrics["duplicate_of_earlier_split"] = {split: int((earlier["split"] == split).sum()) for split in SPLITS}
    # Per class, only same-class copies count, because copies under both labels are conflicts.
    metrics["by_class"] = {
        name: _exact_duplicate_counts(files[files["label"] == label]) for label, name in CLASS_NAMES.items()
    }
    return metrics


def _exact_duplicate_counts(files: pd.DataFrame) -> dict[str, Any]:
    sizes = files.groupby("sha256")["path"].transform("size")
    duplicated = files[sizes > 1]
    counts: dict[str, Any] = {
        "groups": int(duplicated["sha256"].nunique()),
        "files": len(duplicated),
        "within_split": {},
        "across_splits": {},
    }

    for split in SPLITS:
        part = files[files["split"] == split]
        part_sizes = part.groupby("sha256")["path"].transform("size")
        counts["within_split"][split] = {
            "groups": int(part.loc[part_sizes > 1, "sha256"].nunique()),
            "files": int((part_sizes > 1).sum()),
        }

    for earlier, later in SPLIT_PAIRS:
        shared = set(files.loc[files["split"] == earlier, "sha256"]) & set(files.loc[files["split"] == later, "sha256"])
        in_shared = files["sha256"].isin(shared)
        counts["across_splits"][f"{earlier}-{later}"] = {
            "groups": len(shared),
            earlier: int((in_shared & (files["split"] == earlier)).sum()),
            later: int((in_shared & (files["split"] == later)).sum()),
        }
    return counts


def summarise_near_duplicates(files: pd.DataFrame, pairs: pd.DataFrame, max_distance: int) -> dict[str, Any]:
    """Count near-duplicate groups, files and pairs, by distance, split pair and class.

    ``pairs`` is the output of ``find_near_duplicate_pairs`` for ``files`` and ``max_distance``.
    """
    grouped = files[files["near_duplicate_group"].notna()]
    distances = Counter(pairs["distance"].tolist())
    labels = files["label"].to_numpy()
    first_labels = labels[pairs["first"].to_numpy(dtype=np.int64)]
    second_labels = labels[pairs["second"].to_numpy(dtype=np.int64)]

    return {
        "max_distance": max_distance,
        "groups": int(grouped["near_duplicate_group"].nunique()),
        "files": len(grouped),
        "pairs": len(pairs),
        "pairs_by_distance": {str(distance): distances.get(distance, 0) for distance in range(max_distance + 1)},
        "across_splits": _near_pair_counts(files, pairs),
        # Per class, only pairs whose two files have that label count.
        "by_class": {
            name: {"across_splits": _near_pair_counts(files, pairs[(first_labels == label) & (second_labels == label)])}
            for label, name in CLASS_NAMES.items()
        },
    }


def _near_pair_counts(files: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    split_of = files["split"].to_numpy()
    group_of = files["near_duplicate_group"]
    counts = {}
    for earlier, later in SPLIT_PAIRS:
        first = pairs["first"].to_numpy(dtype=np.int64)
        second = pairs["second"].to_numpy(dtype=np.int64)
        selected = (split_of[first] == earlier) & (split_of[second] == later)
        counts[f"{earlier}-{later}"] = {
            "pairs": int(selected.sum()),
            "groups": int(group_of.iloc[first[selected]].nunique()),
            earlier: len(set(first[selected].tolist())),
            later: len(set(second[selected].tolist())),
        }
    return counts


def summarise_conflicts(files: pd.DataFrame) -> dict[str, Any]:
    """Count exact and near-duplicate groups whose members disagree on label or subtype."""
    metrics = {}
    for kind, column in (("exact", "duplicate_group"), ("near", "near_duplicate_group")):
        members = files[files[column].notna()]
        grouped = members.groupby(members[column].astype("int64"))
        labels = grouped["label"].nunique() > 1
        subtypes = grouped["subtype"].nunique() > 1
        metrics[kind] = {"groups": int((labels | subtypes).sum()), "label": int(labels.sum())}
    return metrics


def without_earlier_split_duplicates(paths: list[str], audit_files: pd.DataFrame) -> np.ndarray:
    """Return a mask that keeps the files with no byte-identical copy in an earlier split.

    Args:
        paths: file paths relative to ``data/raw``, as in the preprocessed split index.
        audit_files: the audit stage's file table (``read_audit_files``).

    Returns:
        ``(len(paths),) bool``, False for files that ``duplicate_of_earlier_split`` marks.
    """
    copies = set(audit_files.loc[audit_files["duplicate_of_earlier_split"], "path"])
    return np.array([path not in copies for path in paths], dtype=bool)
