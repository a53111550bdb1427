"""Fetching the chest CT dataset into ``data/raw`` for the ``download`` stage.

The source is either the Kaggle dataset, downloaded with the official ``kaggle`` client, or a
local folder or ``.zip`` in the Kaggle layout. A Kaggle download is a zip too, so both kinds of
archive go through the same checks and extraction. Every source ends in the same folder:
``images/<split>/<class folder>/<file>`` with the files copied byte for byte, and
``manifest.csv`` with one ``ManifestRow`` per image.

The new folder is built next to the output folder and renamed into place only when complete,
so a failed run leaves an existing output folder as it was. The temporary folders next to it
are removed on any error and on SIGTERM, and at the start of the next run if a kill left them.

This module chooses the source and writes the output. ``chestct.archives`` checks and extracts
zips, ``chestct.staging`` manages the temporary folders, ``chestct.kaggle_credentials`` finds
the Kaggle credentials and ``chestct.kaggle_source`` runs the Kaggle client. The exceptions
live in ``chestct.download_errors`` and are importable from here too.
"""

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chestct import paths
from chestct.archives import checked_members, extract_members, extract_zip, open_zip
from chestct.download_errors import CredentialsError, DownloadError, SourceNotFoundError, UnsafeArchiveError
from chestct.kaggle_credentials import find_kaggle_credentials, missing_credentials_message
from chestct.kaggle_source import download_kaggle_zip
from chestct.layout import ManifestRow, find_dataset_root, label_of, list_images, write_manifest
from chestct.staging import exit_on_sigterm, remove_stale_temporary_folders, replace_on_success

__all__ = [
    "KAGGLE_SOURCE",
    "CredentialsError",
    "DownloadError",
    "SourceNotFoundError",
    "UnsafeArchiveError",
    "download_dataset",
    "extract_zip",
    "find_kaggle_credentials",
]

logger = logging.getLogger(__name__)

KAGGLE_SOURCE = "kaggle"

_IMAGES_FOLDER = paths.RAW_IMAGES_DIR.relative_to(paths.RAW_DIR)
_MANIFEST_NAME = paths.RAW_MANIFEST.relative_to(paths.RAW_DIR)
_COPY_CHUNK_BYTES = 1024 * 1024
_KAGGLE_DATASET_PATTERN = re.compile(r"[^/\s]+/[^/\s]+(/\d+)?")


def download_dataset(
    source: str,
    kaggle_dataset: str,
    out_dir: str | Path = paths.RAW_DIR,
    repo_root: str | Path = paths.REPO_ROOT,
    progress: bool = True,
) -> list[ManifestRow]:
    """Fetch the dataset from ``source`` and write it with its manifest to ``out_dir``.

    Folders that an earlier, killed run left next to ``out_dir`` are removed first. SIGTERM
    raises ``SystemExit(143)`` while the function runs, so that its temporary folders are
    removed, unless the caller has set a SIGTERM handler of its own.

    Args:
        source: ``"kaggle"``, or a local folder or ``.zip`` in the Kaggle layout.
        kaggle_dataset: The Kaggle dataset as ``owner/slug`` or ``owner/slug/version``, used
            only when ``source`` is ``"kaggle"``.
        out_dir: The output folder. It is replaced only after the new one is complete.
        repo_root: The folder that relative ``source`` and ``out_dir`` paths start from.
        progress: Whether to show progress bars.

    Returns:
        The manifest rows, sorted by path.

    Raises:
        CredentialsError: if Kaggle credentials are missing or rejected.
        SourceNotFoundError: if a local source does not exist.
        UnsafeArchiveError: if a zip has an entry that could land outside the extraction folder,
            a symbolic link, or more bytes or entries than ``archives.MAX_ARCHIVE_BYTES`` or
            ``archives.MAX_ARCHIVE_ENTRIES``.
        DownloadError: if ``source`` is not a non-empty string, if a local source is neither a
            folder nor a regular file, if Kaggle sends no data for
            ``kaggle_source.KAGGLE_TIMEOUT_SECONDS``, and for other failures of the download or
            of reading the archive.
        LayoutError: if the data does not follow the Kaggle layout, or if a folder source
            contains a symbolic link.
    """
    source = _checked_source_value(source)
    repo_root = Path(repo_root)
    out_dir = _resolve(out_dir, repo_root)

    with exit_on_sigterm():
        remove_stale_temporary_folders(out_dir)
        if source == KAGGLE_SOURCE:
            return _download_from_kaggle(kaggle_dataset, out_dir, progress)

        source_path = _resolve(source, repo_root)
        _check_local_source(source_path, out_dir)
        if source_path.is_dir():
            logger.info("Reading the dataset from folder %s", source_path)
            return _write_raw_dir(source_path, out_dir, progress)

        logger.info("Reading the dataset from zip %s", source_path)
        return _import_zip(source_path, out_dir, progress)


# Local sources


def _checked_source_value(source: Any) -> str:
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise DownloadError(
            f"Invalid data.source {source!r}: expected {KAGGLE_SOURCE!r} or the path of a local folder "
            f"or .zip in the Kaggle layout."
        )
    return source


def _resolve(path: str | Path, repo_root: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = repo_root / path
    return path.resolve()


def _check_local_source(source_path: Path, out_dir: Path) -> None:
    if not source_path.exists():
        raise SourceNotFoundError(
            f"Dataset source {source_path} not found. Set data.source in params.yaml to an "
            f"existing folder or .zip in the Kaggle layout (a relative path starts at the "
            f"repository root), or to {KAGGLE_SOURCE!r} to download from Kaggle."
        )
    if source_path == out_dir or source_path.is_relative_to(out_dir):
        raise DownloadError(
            f"Dataset source {source_path} is inside the output folder {out_dir}, which the "
            f"download replaces. Move the source elsewhere and point data.source at it."
        )
    # Reading a FIFO blocks until a writer appears, and a device can be endless, so only
    # folders and regular files are read.
    if not source_path.is_dir() and not source_path.is_file():
        raise DownloadError(
            f"Dataset source {source_path} is neither a folder nor a regular file. Set data.source "
            f"to a folder or .zip in the Kaggle layout."
        )
    if source_path.is_file() and not zipfile.is_zipfile(source_path):
        raise DownloadError(f"Dataset source {source_path} is neither a folder nor a zip archive.")


# Writing the output folder


def _write_raw_dir(dataset_folder: Path, out_dir: Path, progress: bool) -> list[ManifestRow]:
    root = find_dataset_root(dataset_folder)
    images = list_images(root)

    with replace_on_success(out_dir) as staging:
        rows = _copy_images(images, staging, progress)
        write_manifest(rows, staging / _MANIFEST_NAME)

    logger.info("Wrote %d images and %s to %s", len(rows), _MANIFEST_NAME, out_dir)
    return sorted(rows, key=lambda row: row.path)


def _copy_images(images: list[tuple[str, str, str, Path]], staging: Path, progress: bool) -> list[ManifestRow]:
    rows = []
    for split, class_folder, subtype, source in tqdm(images, desc="Copying images", unit="file", disable=not progress):
        relative = _IMAGES_FOLDER / split / class_folder / source.name
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        sha256, size = _copy_and_hash(source, target)
        rows.append(
            ManifestRow(
                path=relative.as_posix(),
                split=split,
                class_folder=class_folder,
                label=label_of(subtype),
                subtype=subtype,
                sha256=sha256,
                bytes=size,
            )
        )
    return rows


def _copy_and_hash(source: Path, target: Path) -> tuple[str, int]:
    """Copy a file and return the SHA-256 hex digest and size of the bytes copied."""
    digest = hashlib.sha256()
    size = 0
    # Exclusive creation turns two sources that map to one target into an error, not an overwrite.
    with source.open("rb") as reader, target.open("xb") as writer:
        while chunk := reader.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# Zip archives


def _import_zip(archive_path: Path, out_dir: Path, progress: bool) -> list[ManifestRow]:
    with open_zip(archive_path) as archive:
        members = checked_members(archive, archive_path)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}.extract-", dir=out_dir.parent) as extract_dir:
            extract_members(archive, members, Path(extract_dir))
            return _write_raw_dir(Path(extract_dir), out_dir, progress)


# Kaggle


def _download_from_kaggle(kaggle_dataset: Any, out_dir: Path, progress: bool) -> list[ManifestRow]:
    if not isinstance(kaggle_dataset, str) or not _KAGGLE_DATASET_PATTERN.fullmatch(kaggle_dataset):
        raise DownloadError(
            f"Invalid data.kaggle_dataset {kaggle_dataset!r}: expected owner/dataset-slug or "
            f"owner/dataset-slug/version, e.g. mohamedhanyyy/chest-ctscan-images."
        )

    credentials = find_kaggle_credentials()
    if credentials is None:
        raise CredentialsError(missing_credentials_message(kaggle_dataset))
    logger.info("Downloading Kaggle dataset %s with the credentials from %s", kaggle_dataset, credentials)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}.kaggle-", dir=out_dir.parent) as download_dir:
        archive_path = download_kaggle_zip(kaggle_dataset, Path(download_dir), credentials, progress)
        logger.info("Downloaded %s (%d bytes)", archive_path.name, archive_path.stat().st_size)
        return _import_zip(archive_path, out_dir, progress)
