"""Audit of the raw dataset: decoding, duplicates, near-duplicates and a metadata shortcut probe.

Every manifest row is decoded by content with ``chestct.imaging.decode_image``. The audit then
finds byte-identical duplicates, near-duplicates across splits and the groups among them whose
labels conflict (``chestct.duplicates``), and runs a shortcut probe on file metadata
(``chestct.probe``). It writes the files table, the duplicates report and the metrics.
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
import pandas as pd
from PIL import Image
from tqdm import tqdm

from chestct.duplicates import (
    CLASS_NAMES,
    DUPLICATES_COLUMNS,
    build_duplicates_report,
    find_near_duplicate_pairs,
    flag_duplicates_of_earlier_split,
    group_exact_duplicates,
    group_near_duplicates,
    summarise_conflicts,
    summarise_exact_duplicates,
    summarise_near_duplicates,
)
from chestct.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, image_info, to_grayscale
from chestct.layout import MANIFEST_COLUMNS, SPLITS, SUBTYPES, ManifestRow, read_manifest
from chestct.parallel import process_context
from chestct.probe import run_shortcut_probe

logger = logging.getLogger(__name__)

ON_DECODE_ERROR_CHOICES = ("fail", "skip")
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

    files["duplicate_group"] = group_exact_duplicates(files)
    files["duplicate_of_earlier_split"] = flag_duplicates_of_earlier_split(files)
    pairs = find_near_duplicate_pairs(files, settings.near_duplicate_max_distance)
    files["near_duplicate_group"] = group_near_duplicates(len(files), pairs)
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

    with ProcessPoolExecutor(max_workers=workers, mp_context=process_context()) as executor:
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
        "exact_duplicates": summarise_exact_duplicates(files),
        "near_duplicates": summarise_near_duplicates(files, pairs, settings.near_duplicate_max_distance),
        "conflicts": summarise_conflicts(files),
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
        "Metadata shortcut probe ROC AUC: valid %s, test %s; without copies of an earlier split: valid %s, test %s.",
        probe["valid"]["roc_auc"],
        probe["test"]["roc_auc"],
        probe["valid"]["roc_auc_without_cross_split_duplicates"],
        probe["test"]["roc_auc_without_cross_split_duplicates"],
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
