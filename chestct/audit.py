"""Audit of the raw dataset: decoding, duplicates, near-duplicates and a metadata shortcut probe.

Every manifest row is decoded by content with ``chestct.imaging.decode_image``. The audit finds:

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
- Shortcut probe: a random forest trained on file metadata only (size, file size, format,
  colour mode) of the train split, scored by ROC AUC on valid and test. A high AUC means that
  the labels can be guessed without looking at the anatomy.
"""

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from chestct.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, image_info, to_grayscale
from chestct.layout import MANIFEST_COLUMNS, SPLITS, SUBTYPES, ManifestRow, read_manifest

logger = logging.getLogger(__name__)

ON_DECODE_ERROR_CHOICES = ("fail", "skip")
SPLIT_PAIRS = (("train", "valid"), ("train", "test"), ("valid", "test"))
CLASS_NAMES = {0: "normal", 1: "cancer"}
PHASH_BITS = 64

FILES_COLUMNS = (
    *MANIFEST_COLUMNS,
    "format",
    "mode",
    "width",
    "height",
    "phash",
    "decode_error",
    "duplicate_group",
    "near_duplicate_group",
    "duplicate_of_earlier_split",
)
DUPLICATES_COLUMNS = ("kind", "group", "split", "path", "label", "subtype", "sha256", "phash", "distance", "conflict")

# Keys of decode failures in metrics/data.json, matched against the start of the reason.
DECODE_ERROR_CATEGORIES = {
    "empty": "empty file",
    "not_image": "not an image",
    "corrupt": "truncated or corrupt",
    "too_many_pixels": "too many pixels",
    "unsupported_mode": "unsupported image mode",
}

# Formats that each file extension promises, to count files such as JPEGs named .png.
_EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}

_STRING_COLUMNS = ("path", "split", "class_folder", "subtype", "sha256", "format", "mode", "phash", "decode_error")
_NULLABLE_INT_COLUMNS = ("width", "height", "duplicate_group", "near_duplicate_group")
_SPLIT_RANK = {split: rank for rank, split in enumerate(SPLITS)}

# Bounds the XOR matrix of one block of hashes to about 32 MiB of uint64.
_MAX_DISTANCE_MATRIX_CELLS = 4_000_000

# At most this many files are named in one error message; the rest are counted.
_MAX_LISTED_FILES = 20


class AuditError(RuntimeError):
    """Raw data or settings that the audit cannot work with; the message names the fix."""


class DecodeFailuresError(AuditError):
    """Images that could not be decoded while ``audit.on_decode_error`` is ``fail``.

    ``failures`` contains ``(path, reason)`` pairs, sorted by path.
    """

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        listed = "\n".join(f"  {path}: {reason}" for path, reason in failures[:_MAX_LISTED_FILES])
        more = len(failures) - _MAX_LISTED_FILES
        if more > 0:
            listed += f"\n  ... and {more} more"
        super().__init__(
            f"{len(failures)} image(s) could not be decoded:\n{listed}\n"
            "Fix or remove these files, or set audit.on_decode_error to skip in params.yaml to list them "
            "in the audit and leave them out of preprocessing."
        )


@dataclass(frozen=True)
class AuditSettings:
    """Parameters of the audit, from the ``audit`` section and ``seed`` of params.yaml.

    ``workers`` is the number of processes that decode images. With 1, images are decoded in
    the calling process.
    """

    on_decode_error: str = "fail"
    near_duplicate_max_distance: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    probe_trees: int = 200
    seed: int = 0
    workers: int = 1

    def __post_init__(self):
        if self.on_decode_error not in ON_DECODE_ERROR_CHOICES:
            raise AuditError(
                f"Invalid audit.on_decode_error {self.on_decode_error!r}: expected one of "
                f"{', '.join(ON_DECODE_ERROR_CHOICES)}."
            )
        _check_int("audit.near_duplicate_max_distance", self.near_duplicate_max_distance, 0, PHASH_BITS)
        _check_int("audit.max_pixels", self.max_pixels, 1)
        _check_int("audit.probe_trees", self.probe_trees, 1)
        _check_int("seed", self.seed, 0)
        _check_int("audit.workers", self.workers, 1)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "AuditSettings":
        """Read the settings from loaded params.yaml. ``audit.workers`` is optional and defaults to 1.

        Raises:
            AuditError: if a key is missing or a value is invalid.
        """
        section = params.get("audit")
        if not isinstance(section, dict):
            raise AuditError("params.yaml has no audit section.")

        required = ("on_decode_error", "near_duplicate_max_distance", "max_pixels", "probe_trees")
        missing = [f"audit.{key}" for key in required if key not in section]
        if "seed" not in params:
            missing.append("seed")
        if missing:
            raise AuditError(f"params.yaml is missing {', '.join(missing)}.")

        return cls(
            on_decode_error=section["on_decode_error"],
            near_duplicate_max_distance=section["near_duplicate_max_distance"],
            max_pixels=section["max_pixels"],
            probe_trees=section["probe_trees"],
            seed=params["seed"],
            workers=section.get("workers", 1),
        )


@dataclass(frozen=True)
class ImageRecord:
    """Result of inspecting one file: its SHA-256, image metadata and pHash, or the decode error."""

    sha256: str
    format: str = ""
    mode: str = ""
    width: int | None = None
    height: int | None = None
    phash: str = ""
    decode_error: str = ""


@dataclass
class AuditResult:
    """Outputs of ``audit_dataset``: the files table, the duplicates report and the metrics."""

    files: pd.DataFrame
    duplicates: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Whole audit


def audit_dataset(manifest_path: Path, settings: AuditSettings) -> AuditResult:
    """Decode every image of a manifest and compute the files table, duplicates and metrics.

    Image paths in the manifest are relative to the manifest's folder.

    Raises:
        FileNotFoundError: if the manifest is missing.
        LayoutError: if the manifest's columns are wrong.
        AuditError: if an image is missing, differs from its manifest SHA-256, or has an
            unknown split or label.
        DecodeFailuresError: if images cannot be decoded and ``on_decode_error`` is ``fail``.
    """
    manifest_path = Path(manifest_path)
    rows = sorted(read_manifest(manifest_path), key=lambda row: row.path)
    raw_dir = manifest_path.parent
    _check_manifest_values(rows, manifest_path)
    _check_files_exist(rows, raw_dir)

    records = inspect_images(raw_dir, [row.path for row in rows], settings.max_pixels, settings.workers)
    _check_checksums(rows, records, raw_dir)
    files = _build_files_table(rows, records)
    _handle_decode_errors(files, settings.on_decode_error)

    files["duplicate_group"] = _exact_duplicate_groups(files)
    files["duplicate_of_earlier_split"] = _duplicate_of_earlier_split(files)
    pairs = find_near_duplicate_pairs(files, settings.near_duplicate_max_distance)
    files["near_duplicate_group"] = _near_duplicate_groups(len(files), pairs)
    files = files[list(FILES_COLUMNS)]

    duplicates = build_duplicates_report(files)
    metrics = build_metrics(files, pairs, settings)
    _log_summary(metrics)
    return AuditResult(files=files, duplicates=duplicates, metrics=metrics)


def _check_manifest_values(rows: list[ManifestRow], manifest_path: Path) -> None:
    for row in rows:
        if row.split not in SPLITS:
            raise AuditError(
                f"{manifest_path}: {row.path} has unknown split {row.split!r}, expected one of {', '.join(SPLITS)}."
            )
        if row.label not in CLASS_NAMES:
            raise AuditError(f"{manifest_path}: {row.path} has label {row.label}, expected 0 (normal) or 1 (cancer).")
        if row.subtype not in SUBTYPES:
            raise AuditError(f"{manifest_path}: {row.path} has unknown subtype {row.subtype!r}.")


def _check_files_exist(rows: list[ManifestRow], raw_dir: Path) -> None:
    missing = [row.path for row in rows if not (raw_dir / row.path).is_file()]
    if missing:
        raise AuditError(
            f"{len(missing)} image(s) listed in the manifest are missing below {raw_dir}: "
            f"{_list_paths(missing)}. Restore them with dvc checkout or dvc repro download."
        )


def _check_checksums(rows: list[ManifestRow], records: list[ImageRecord], raw_dir: Path) -> None:
    # Duplicate detection trusts the manifest's SHA-256, so a file edited after the download
    # would be grouped by stale hashes.
    changed = [row.path for row, record in zip(rows, records, strict=True) if row.sha256 != record.sha256]
    if changed:
        raise AuditError(
            f"{len(changed)} image(s) below {raw_dir} differ from their SHA-256 in the manifest: "
            f"{_list_paths(changed)}. Restore them with dvc checkout or dvc repro download."
        )


def _handle_decode_errors(files: pd.DataFrame, on_decode_error: str) -> None:
    failed = files[files["decode_error"] != ""]
    failures = list(zip(failed["path"], failed["decode_error"], strict=True))
    if not failures:
        return
    if on_decode_error == "fail":
        raise DecodeFailuresError(failures)
    for path, reason in failures:
        logger.warning("Skipping undecodable image %s: %s", path, reason)


def _list_paths(paths: list[str]) -> str:
    listed = ", ".join(paths[:_MAX_LISTED_FILES])
    more = len(paths) - _MAX_LISTED_FILES
    return f"{listed} and {more} more" if more > 0 else listed


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AuditError(f"Invalid {name} {value!r}: expected an integer.")
    if value < minimum or (maximum is not None and value > maximum):
        limits = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise AuditError(f"Invalid {name} {value}: expected an integer {limits}.")


# ---------------------------------------------------------------------------------------------
# Decoding


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Hash, decode by content and pHash one image file.

    A file that cannot be decoded gives a record with ``decode_error`` set to the reason, whose
    start is one of the ``DECODE_ERROR_CATEGORIES`` prefixes.

    Raises:
        OSError: if the file cannot be read.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    try:
        image = decode_image(data, max_pixels)
    except ImageDecodeError as error:
        return ImageRecord(sha256=digest, decode_error=str(error))

    info = image_info(image)
    try:
        gray = to_grayscale(image)
    except (OSError, ValueError) as error:
        # Pillow decodes some modes (LAB TIFF) that it cannot convert to grayscale.
        return ImageRecord(sha256=digest, decode_error=f"unsupported image mode {info.mode}: {error}")

    phash = str(imagehash.phash(Image.fromarray(gray)))
    return ImageRecord(
        sha256=digest, format=info.format, mode=info.mode, width=info.width, height=info.height, phash=phash
    )


def inspect_images(
    raw_dir: Path, paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1
) -> list[ImageRecord]:
    """Inspect image files below ``raw_dir`` with ``inspect_image``, in the order of ``paths``.

    With ``workers`` above 1 the files are decoded in a process pool. A tqdm progress bar
    goes to stderr.
    """
    files = [Path(raw_dir) / path for path in paths]
    inspect = partial(inspect_image, max_pixels=max_pixels)
    progress = {"total": len(files), "desc": "Decoding images", "unit": "image"}

    if workers <= 1 or len(files) < 2:
        return [inspect(file) for file in tqdm(files, **progress)]

    with ProcessPoolExecutor(max_workers=workers) as executor:
        return list(tqdm(executor.map(inspect, files, chunksize=16), **progress))


def decode_error_category(reason: str) -> str:
    """Return the short key of a decode error reason, one of ``DECODE_ERROR_CATEGORIES`` or ``other``."""
    for key, prefix in DECODE_ERROR_CATEGORIES.items():
        if reason.startswith(prefix):
            return key
    return "other"


def _build_files_table(rows: list[ManifestRow], records: list[ImageRecord]) -> pd.DataFrame:
    table = pd.DataFrame(
        [{**asdict(row), **asdict(record), "sha256": row.sha256} for row, record in zip(rows, records, strict=True)],
        columns=[*MANIFEST_COLUMNS, "format", "mode", "width", "height", "phash", "decode_error"],
    )
    for column in ("label", "bytes"):
        table[column] = table[column].astype("int64")
    for column in ("width", "height"):
        table[column] = pd.array(table[column].tolist(), dtype="Int64")
    for column in _STRING_COLUMNS:
        table[column] = table[column].astype(str)
    return table.sort_values("path", ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Byte-identical and near-duplicates


def _exact_duplicate_groups(files: pd.DataFrame) -> pd.Series:
    # Files are sorted by path, so ids follow the path of each group's first member.
    sizes = files.groupby("sha256")["path"].transform("size")
    duplicated = files["sha256"].where(sizes > 1)
    codes, _ = pd.factorize(duplicated, use_na_sentinel=True)
    groups = pd.array([code + 1 if code >= 0 else pd.NA for code in codes], dtype="Int64")
    return pd.Series(groups, index=files.index)


def _duplicate_of_earlier_split(files: pd.DataFrame) -> pd.Series:
    ranks = files["split"].map(_SPLIT_RANK)
    earliest = ranks.groupby(files["sha256"]).transform("min")
    return (earliest < ranks).astype(bool)


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


def _near_duplicate_groups(size: int, pairs: pd.DataFrame) -> pd.Series:
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
# Shortcut probe


def run_shortcut_probe(files: pd.DataFrame, trees: int, seed: int) -> dict[str, Any]:
    """Train a random forest on train-split file metadata and score it on valid and test.

    The features are width, height, aspect ratio, file size and one-hot format and colour
    mode; the categories come from the train split. Undecodable files are left out.

    Returns:
        ``features``, ``trees``, ``train_files`` and for ``valid`` and ``test`` the number of
        ``files`` and ``roc_auc``. ``roc_auc`` is None, with a ``reason``, when the train split
        or the scored split does not contain both classes.
    """
    usable = files[files["decode_error"] == ""]
    train = usable[usable["split"] == "train"]
    formats = sorted(train["format"].unique())
    modes = sorted(train["mode"].unique())
    feature_names = [
        "width",
        "height",
        "aspect_ratio",
        "bytes",
        *(f"format={v}" for v in formats),
        *(f"mode={v}" for v in modes),
    ]

    result: dict[str, Any] = {
        "model": "RandomForestClassifier",
        "trees": trees,
        "features": feature_names,
        "train_files": len(train),
    }

    model = None
    if train["label"].nunique() == 2:
        model = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
        model.fit(_probe_features(train, formats, modes), train["label"].to_numpy())

    for split in ("valid", "test"):
        part = usable[usable["split"] == split]
        scores: dict[str, Any] = {"files": len(part), "roc_auc": None}
        if model is None:
            scores["reason"] = "the train split does not contain both classes"
        elif part["label"].nunique() < 2:
            scores["reason"] = f"the {split} split does not contain both classes"
        else:
            probabilities = model.predict_proba(_probe_features(part, formats, modes))[:, 1]
            scores["roc_auc"] = round(float(roc_auc_score(part["label"].to_numpy(), probabilities)), 4)
        result[split] = scores

    return result


def _probe_features(part: pd.DataFrame, formats: list[str], modes: list[str]) -> np.ndarray:
    width = part["width"].to_numpy(dtype=np.float64)
    height = part["height"].to_numpy(dtype=np.float64)
    columns = [width, height, width / height, part["bytes"].to_numpy(dtype=np.float64)]
    columns += [(part["format"] == value).to_numpy(dtype=np.float64) for value in formats]
    columns += [(part["mode"] == value).to_numpy(dtype=np.float64) for value in modes]
    return np.column_stack(columns)


# ---------------------------------------------------------------------------------------------
# Metrics


def build_metrics(files: pd.DataFrame, pairs: pd.DataFrame, settings: AuditSettings) -> dict[str, Any]:
    """Summarise the audit as nested dictionaries of counts for metrics/data.json.

    ``pairs`` is the output of ``find_near_duplicate_pairs`` for ``files``.
    """
    failed = files[files["decode_error"] != ""]
    reasons = Counter(decode_error_category(reason) for reason in failed["decode_error"])

    return {
        "counts": _count_metrics(files),
        "formats": _value_counts(files.loc[files["format"] != "", "format"]),
        "modes": _value_counts(files.loc[files["mode"] != "", "mode"]),
        "extension_mismatches": _extension_mismatches(files),
        "decode_errors": {
            "files": len(failed),
            "by_reason": {key: reasons.get(key, 0) for key in (*DECODE_ERROR_CATEGORIES, "other")},
        },
        "exact_duplicates": _exact_duplicate_metrics(files),
        "near_duplicates": _near_duplicate_metrics(files, pairs, settings.near_duplicate_max_distance),
        "conflicts": _conflict_metrics(files),
        "shortcut_probe": run_shortcut_probe(files, settings.probe_trees, settings.seed),
    }


def _count_metrics(files: pd.DataFrame) -> dict[str, Any]:
    counts: dict[str, Any] = {"total": len(files)}
    for split in SPLITS:
        part = files[files["split"] == split]
        counts[split] = {
            "total": len(part),
            **{name: int((part["label"] == label).sum()) for label, name in CLASS_NAMES.items()},
            "subtypes": {subtype: int((part["subtype"] == subtype).sum()) for subtype in SUBTYPES},
        }
    return counts


def _value_counts(values: pd.Series) -> dict[str, int]:
    return {str(key): int(count) for key, count in values.value_counts().items()}


def _extension_mismatches(files: pd.DataFrame) -> int:
    mismatches = 0
    for path, image_format in zip(files["path"], files["format"], strict=True):
        expected = _EXTENSION_FORMATS.get(Path(path).suffix.lower())
        if image_format and expected and expected != image_format:
            mismatches += 1
    return mismatches


def _exact_duplicate_metrics(files: pd.DataFrame) -> dict[str, Any]:
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


def _near_duplicate_metrics(files: pd.DataFrame, pairs: pd.DataFrame, max_distance: int) -> dict[str, Any]:
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


def _conflict_metrics(files: pd.DataFrame) -> dict[str, Any]:
    metrics = {}
    for kind, column in (("exact", "duplicate_group"), ("near", "near_duplicate_group")):
        members = files[files[column].notna()]
        grouped = members.groupby(members[column].astype("int64"))
        labels = grouped["label"].nunique() > 1
        subtypes = grouped["subtype"].nunique() > 1
        metrics[kind] = {"groups": int((labels | subtypes).sum()), "label": int(labels.sum())}
    return metrics


def _log_summary(metrics: dict[str, Any]) -> None:
    counts = metrics["counts"]
    exact = metrics["exact_duplicates"]
    near = metrics["near_duplicates"]
    probe = metrics["shortcut_probe"]
    logger.info(
        "Audited %d images (train %d, valid %d, test %d), %d could not be decoded.",
        counts["total"],
        counts["train"]["total"],
        counts["valid"]["total"],
        counts["test"]["total"],
        metrics["decode_errors"]["files"],
    )
    logger.info(
        "Byte-identical duplicates: %d groups of %d files. %d valid and %d test files duplicate an earlier split.",
        exact["groups"],
        exact["files"],
        exact["duplicate_of_earlier_split"]["valid"],
        exact["duplicate_of_earlier_split"]["test"],
    )
    logger.info(
        "Near-duplicates across splits (pHash distance <= %d): %d groups of %d files.",
        near["max_distance"],
        near["groups"],
        near["files"],
    )
    conflicts = metrics["conflicts"]
    if conflicts["exact"]["groups"] or conflicts["near"]["groups"]:
        logger.warning(
            "Duplicate groups with disagreeing labels or subtypes: %d exact, %d near. "
            "See the conflict column of the duplicates report.",
            conflicts["exact"]["groups"],
            conflicts["near"]["groups"],
        )
    logger.info(
        "Metadata shortcut probe ROC AUC: valid %s, test %s.",
        probe["valid"]["roc_auc"],
        probe["test"]["roc_auc"],
    )


# ---------------------------------------------------------------------------------------------
# Reading and writing


def write_audit_files(files: pd.DataFrame, path: Path) -> None:
    """Write the files table as CSV, sorted by path, with ``true``/``false`` booleans and empty missing values."""
    table = files[list(FILES_COLUMNS)].sort_values("path")
    table = table.assign(duplicate_of_earlier_split=table["duplicate_of_earlier_split"].map(_format_bool))
    _write_csv(table, path)


def read_audit_files(path: Path) -> pd.DataFrame:
    """Read a files table written by ``write_audit_files``.

    ``label`` and ``bytes`` are int64. ``width``, ``height``, ``duplicate_group`` and
    ``near_duplicate_group`` are nullable Int64, missing for undecodable or unique files.
    ``duplicate_of_earlier_split`` is bool. The other columns are strings, empty when missing.

    Raises:
        FileNotFoundError: if the file is missing.
        AuditError: if its columns or values are not those of the files table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Audit table {path} not found. Run the audit stage first (dvc repro audit).")

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(table.columns) != FILES_COLUMNS:
        raise AuditError(
            f"{path} has columns {list(table.columns)}, expected {list(FILES_COLUMNS)}. Rerun dvc repro audit."
        )

    try:
        for column in ("label", "bytes"):
            table[column] = table[column].astype("int64")
        for column in _NULLABLE_INT_COLUMNS:
            table[column] = pd.array([int(value) if value else pd.NA for value in table[column]], dtype="Int64")
        table["duplicate_of_earlier_split"] = table["duplicate_of_earlier_split"].map(_parse_bool).astype(bool)
    except ValueError as error:
        raise AuditError(f"{path} contains an invalid value: {error}. Rerun dvc repro audit.") from None

    for column in _STRING_COLUMNS:
        table[column] = table[column].astype(str)
    return table


def write_duplicates_report(duplicates: pd.DataFrame, path: Path) -> None:
    """Write the duplicates report as CSV with ``true``/``false`` booleans and empty missing values."""
    table = duplicates[list(DUPLICATES_COLUMNS)]
    table = table.assign(conflict=table["conflict"].map(_format_bool))
    _write_csv(table, path)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    """Write metrics as JSON with sorted keys and an indent of 2, so that diffs stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, lineterminator="\n")


def _format_bool(value: bool) -> str:
    return "true" if value else "false"


def _parse_bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value == "true"
