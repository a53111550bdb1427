"""Fetching the chest CT dataset into ``data/raw`` for the ``download`` stage.

The source is either the Kaggle dataset, downloaded with the official ``kaggle`` client, or a
local folder or ``.zip`` in the Kaggle layout. A Kaggle download is a zip too, so both kinds of
archive go through the same checks and extraction. Every source ends in the same folder:
``images/<split>/<class folder>/<file>`` with the files copied byte for byte, and
``manifest.csv`` with one ``ManifestRow`` per image.

The new folder is built next to the output folder and renamed into place only when complete,
so a failed run leaves an existing output folder as it was. The temporary folders next to it
are removed on any error and on SIGTERM, and at the start of the next run if a kill left them.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chestct import paths
from chestct.layout import ManifestRow, find_dataset_root, label_of, list_images, write_manifest

logger = logging.getLogger(__name__)

KAGGLE_SOURCE = "kaggle"

# The Kaggle dataset contains 1000 images, about 125 MB in all. These limits are far above that
# and stop a zip bomb before it fills the disk.
MAX_ARCHIVE_BYTES = 4 * 1024**3
MAX_ARCHIVE_ENTRIES = 100_000

# Maximum wait, in seconds, for a connection to Kaggle or for the next data of a response.
# kaggle 2.2.5 sends its API requests without a timeout, so a stalled connection would
# otherwise block the stage forever.
KAGGLE_TIMEOUT_SECONDS = 60

_IMAGES_FOLDER = paths.RAW_IMAGES_DIR.relative_to(paths.RAW_DIR)
_MANIFEST_NAME = paths.RAW_MANIFEST.relative_to(paths.RAW_DIR)
_COPY_CHUNK_BYTES = 1024 * 1024
_KAGGLE_DATASET_PATTERN = re.compile(r"[^/\s]+/[^/\s]+(/\d+)?")
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")
# The kinds of temporary folder that this module creates next to the output folder. The suffix
# is the 8 characters that tempfile.mkdtemp adds (CPython 3.11 tempfile._RandomNameSequence).
_TEMPORARY_KINDS = ("partial", "extract", "kaggle", "old")
_TEMPORARY_SUFFIX = r"-[a-z0-9_]{8}"


class DownloadError(Exception):
    """A download that failed for a reason the user can fix, described in the message."""


class CredentialsError(DownloadError):
    """Kaggle credentials that are missing or that Kaggle rejected."""


class UnsafeArchiveError(DownloadError):
    """A zip entry that could write outside the extraction folder, or an archive too large."""


class SourceNotFoundError(DownloadError, FileNotFoundError):
    """A local ``data.source`` path that does not exist."""


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
            a symbolic link, or more bytes or entries than ``MAX_ARCHIVE_BYTES`` or
            ``MAX_ARCHIVE_ENTRIES``.
        DownloadError: if ``source`` is not a non-empty string, if a local source is neither a
            folder nor a regular file, if Kaggle sends no data for ``KAGGLE_TIMEOUT_SECONDS``,
            and for other failures of the download or of reading the archive.
        LayoutError: if the data does not follow the Kaggle layout, or if a folder source
            contains a symbolic link.
    """
    source = _checked_source_value(source)
    repo_root = Path(repo_root)
    out_dir = _resolve(out_dir, repo_root)

    with _exit_on_sigterm():
        _remove_stale_temporary_folders(out_dir)
        if source == KAGGLE_SOURCE:
            return _download_from_kaggle(kaggle_dataset, out_dir, progress)

        source_path = _resolve(source, repo_root)
        _check_local_source(source_path, out_dir)
        if source_path.is_dir():
            logger.info("Reading the dataset from folder %s", source_path)
            return _write_raw_dir(source_path, out_dir, progress)

        logger.info("Reading the dataset from zip %s", source_path)
        return _import_zip(source_path, out_dir, progress)


def find_kaggle_credentials() -> str | None:
    """Find the credentials that the ``kaggle`` client 2.2.5 would use, without a network request.

    The order follows ``KaggleApi.authenticate``: an access token, then a legacy API key, then
    OAuth credentials from ``kaggle auth login``.

    Returns:
        Where the credentials are, such as ``"environment variable KAGGLE_API_TOKEN"`` or a file
        path, never their value; ``None`` if there are none.
    """
    return _find_access_token() or _find_legacy_key() or _find_oauth_credentials()


def extract_zip(archive_path: str | Path, target: str | Path) -> None:
    """Extract a zip archive into ``target`` after checking every entry.

    Nothing is written unless all entries pass the checks.

    Raises:
        UnsafeArchiveError: on an entry that is absolute, has a drive letter, a backslash or a
            ``..`` component, is a symbolic link or appears twice, or when the archive exceeds
            ``MAX_ARCHIVE_BYTES`` or ``MAX_ARCHIVE_ENTRIES``.
        DownloadError: if the file is not a readable zip archive.
    """
    archive_path = Path(archive_path)
    with _open_zip(archive_path) as archive:
        members = _checked_members(archive, archive_path)
        _extract_members(archive, members, Path(target))


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

    with _replace_on_success(out_dir) as staging:
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


@contextlib.contextmanager
def _replace_on_success(out_dir: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out_dir`` that replaces ``out_dir`` if the block succeeds.

    On any error the sibling folder is removed and ``out_dir`` is left as it was.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.partial-", dir=out_dir.parent))
    # mkdtemp creates the folder with mode 0700. The output gets the mode of an ordinary mkdir.
    staging.chmod(0o777 & ~_current_umask())

    try:
        yield staging
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        staging.rename(out_dir)
        return

    # POSIX cannot rename a folder over a non-empty one, so the old folder moves aside first.
    # NOTE: between the two renames out_dir does not exist, if only for a moment.
    backup = out_dir.with_name(staging.name.replace(".partial-", ".old-", 1))
    out_dir.rename(backup)
    try:
        staging.rename(out_dir)
    except OSError:
        backup.rename(out_dir)
        raise

    if backup.is_dir() and not backup.is_symlink():
        shutil.rmtree(backup)
    else:
        backup.unlink()


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _remove_stale_temporary_folders(out_dir: Path) -> None:
    """Remove the temporary folders that a killed earlier run left next to ``out_dir``.

    Only folders named like the ones this module creates are removed, such as
    ``raw.extract-k6nspdce`` next to ``raw``.
    """
    # NOTE: a second download into the same out_dir running at this moment would lose its
    # temporary folders. DVC's repository lock keeps `dvc repro` and `dvc exp run` from
    # running two at once, but two direct calls of the stage script are not guarded.
    if not out_dir.parent.is_dir():
        return
    kinds = "|".join(_TEMPORARY_KINDS)
    pattern = re.compile(rf"{re.escape(out_dir.name)}\.(?:{kinds}){_TEMPORARY_SUFFIX}")
    for entry in sorted(out_dir.parent.iterdir()):
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            logger.warning("Removed %s, a temporary folder left by an earlier run that was stopped", entry)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Raise ``SystemExit(143)`` on SIGTERM inside the block, so that cleanup code runs.

    ``timeout``, CI cancellation and ``kill`` send SIGTERM, whose default action ends the
    process without removing temporary folders. A SIGTERM handler that the caller set is left
    in place, and outside the main thread nothing changes, because Python runs signal handlers
    only in the main thread.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    received = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        # 128 + the signal number is the exit status that a shell reports for a killed process.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except SystemExit:
        if received:
            logger.warning("Stopped by SIGTERM after removing the temporary folders of this run")
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Zip archives


def _import_zip(archive_path: Path, out_dir: Path, progress: bool) -> list[ManifestRow]:
    with _open_zip(archive_path) as archive:
        members = _checked_members(archive, archive_path)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}.extract-", dir=out_dir.parent) as extract_dir:
            _extract_members(archive, members, Path(extract_dir))
            return _write_raw_dir(Path(extract_dir), out_dir, progress)


@contextlib.contextmanager
def _open_zip(archive_path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DownloadError(f"{archive_path} is not a readable zip archive: {exc}.") from exc
    with archive:
        yield archive


def _checked_members(archive: zipfile.ZipFile, archive_path: Path) -> list[zipfile.ZipInfo]:
    """Check every entry of an archive before anything is extracted.

    The sum of the declared sizes bounds what extraction writes, because ``zipfile`` stops
    reading an entry at its declared size and fails on the CRC if the data goes on.
    """
    members = archive.infolist()
    if len(members) > MAX_ARCHIVE_ENTRIES:
        raise UnsafeArchiveError(
            f"{archive_path} has {len(members)} entries, more than the limit of {MAX_ARCHIVE_ENTRIES}; "
            f"it is not the chest CT dataset."
        )

    seen = set()
    total_bytes = 0
    for member in members:
        _check_member(member, archive_path)
        name = member.filename.rstrip("/")
        if name in seen:
            raise UnsafeArchiveError(f"{archive_path} contains the entry {member.filename!r} more than once.")
        seen.add(name)
        total_bytes += member.file_size

    if total_bytes > MAX_ARCHIVE_BYTES:
        raise UnsafeArchiveError(
            f"{archive_path} would extract to {total_bytes} bytes, more than the limit of "
            f"{MAX_ARCHIVE_BYTES} bytes; it is not the chest CT dataset."
        )
    return members


def _check_member(member: zipfile.ZipInfo, archive_path: Path) -> None:
    name = member.filename

    if stat.S_ISLNK(member.external_attr >> 16):
        reason = "is a symbolic link"
    elif "\\" in name:
        reason = "contains a backslash, which Windows reads as a folder separator"
    elif name.startswith("/") or _DRIVE_LETTER.match(name):
        reason = "is an absolute path"
    elif ".." in name.split("/"):
        reason = "has a '..' component that leads out of the extraction folder"
    elif member.flag_bits & 0x1:
        reason = "is encrypted"
    else:
        return

    raise UnsafeArchiveError(f"Rejected {archive_path}: the entry {name!r} {reason}. Nothing was extracted.")


def _extract_members(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    for member in members:
        destination = target / member.filename
        # A second guard behind _check_member: no entry may resolve to a path outside target.
        if not destination.resolve().is_relative_to(target):
            raise UnsafeArchiveError(
                f"Rejected {archive.filename}: the entry {member.filename!r} leads outside {target}."
            )
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(member) as reader, destination.open("wb") as writer:
                shutil.copyfileobj(reader, writer, _COPY_CHUNK_BYTES)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"Entry {member.filename!r} of {archive.filename} is corrupt: {exc}.") from exc


# Kaggle


def _download_from_kaggle(kaggle_dataset: Any, out_dir: Path, progress: bool) -> list[ManifestRow]:
    if not isinstance(kaggle_dataset, str) or not _KAGGLE_DATASET_PATTERN.fullmatch(kaggle_dataset):
        raise DownloadError(
            f"Invalid data.kaggle_dataset {kaggle_dataset!r}: expected owner/dataset-slug or "
            f"owner/dataset-slug/version, e.g. mohamedhanyyy/chest-ctscan-images."
        )

    credentials = find_kaggle_credentials()
    if credentials is None:
        raise CredentialsError(_missing_credentials_message(kaggle_dataset))
    logger.info("Downloading Kaggle dataset %s with the credentials from %s", kaggle_dataset, credentials)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}.kaggle-", dir=out_dir.parent) as download_dir:
        # Importing the client authenticates, which can send requests too.
        with _requests_timeout(KAGGLE_TIMEOUT_SECONDS):
            api = _kaggle_client(credentials)
            _request_download(api, kaggle_dataset, Path(download_dir), credentials, progress)
        archive_path = _downloaded_zip(Path(download_dir), kaggle_dataset)
        logger.info("Downloaded %s (%d bytes)", archive_path.name, archive_path.stat().st_size)
        return _import_zip(archive_path, out_dir, progress)


def _kaggle_client(credentials: str) -> Any:
    """Import the ``kaggle`` package and return its authenticated ``kaggle.api`` client.

    Tests replace this function, because importing ``kaggle`` can authenticate over the network.

    Raises:
        CredentialsError: if the client could not authenticate with the credentials found.
    """
    # kaggle/__init__.py of kaggle 2.2.5 calls api.authenticate() and swallows its failure,
    # including the exit(1) that the client makes when it finds no usable credentials.
    import kaggle

    api = kaggle.api
    # kaggle 1.x has no such flag, because its kaggle/__init__.py lets authenticate() raise.
    if not getattr(api, "_authenticated", True):
        raise CredentialsError(
            f"The Kaggle client could not authenticate with the credentials from {credentials}: "
            f"Kaggle rejected them, or could not be reached to check them. Create a new API token "
            f"at https://www.kaggle.com/settings/api or run `kaggle auth login`, or set "
            f"data.source to a local folder or .zip in the Kaggle layout."
        )
    return api


def _request_download(api: Any, kaggle_dataset: str, download_dir: Path, credentials: str, progress: bool) -> None:
    # requests is a dependency of the kaggle client, so it is present whenever the client is.
    import requests

    try:
        api.dataset_download_files(kaggle_dataset, path=str(download_dir), unzip=False, quiet=not progress)
    except requests.HTTPError as exc:
        raise _http_error(exc, kaggle_dataset, credentials) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        failure = f"Could not reach Kaggle to download {kaggle_dataset} ({type(exc).__name__})."
        if _is_timeout(exc):
            failure = (
                f"Could not reach Kaggle to download {kaggle_dataset}: the request timed out after "
                f"{KAGGLE_TIMEOUT_SECONDS} s without data ({type(exc).__name__})."
            )
        raise DownloadError(
            f"{failure} Check the network connection and any proxy in HTTPS_PROXY, or set "
            f"data.source to a local folder or .zip in the Kaggle layout."
        ) from exc


@contextlib.contextmanager
def _requests_timeout(seconds: float) -> Iterator[None]:
    """Limit every ``requests`` call inside the block to ``seconds`` per connection and per read.

    kaggle 2.2.5 and kagglesdk 0.1.38 send their API requests through ``requests.Session.send``
    without a timeout. ``socket.setdefaulttimeout`` does not help, because requests 2.34 hands
    urllib3 an explicit ``None``, which blocks. So ``HTTPAdapter.send``, which every session
    calls, gets the limit until the block ends. Larger timeouts are lowered as well, such as the
    300 s of the client's retries of a broken file download.
    """
    # NOTE: the patch applies to every thread of the process while the block runs. The client
    # retries a file download that stalls up to 5 times (kaggle 2.2.5 download_file), so by an
    # estimate from its source a transfer that keeps stalling fails after 6 timeouts plus about
    # 65 s of backoff.
    from requests.adapters import HTTPAdapter

    original_send = HTTPAdapter.send

    def send_with_timeout(adapter, request, stream=False, timeout=None, *args, **kwargs):
        return original_send(adapter, request, stream, _limited_timeout(timeout, seconds), *args, **kwargs)

    HTTPAdapter.send = send_with_timeout
    try:
        yield
    finally:
        HTTPAdapter.send = original_send


def _limited_timeout(timeout: Any, limit: float) -> Any:
    """Return a requests ``timeout`` value whose connect and read parts are at most ``limit``."""
    if timeout is None:
        return limit
    if isinstance(timeout, int | float):
        return min(timeout, limit)
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return tuple(limit if part is None else min(part, limit) for part in timeout)
    # NOTE: a urllib3 Timeout object passes unchanged. Neither kaggle 2.2.5 nor kagglesdk 0.1.38 passes one.
    return timeout


def _is_timeout(exc: BaseException) -> bool:
    """Return whether ``exc`` or an error that it wraps is a timeout.

    requests 2.34 reports a read that timed out while a streamed body downloads as a
    ``ConnectionError`` around urllib3's ``ReadTimeoutError``, so the type of ``exc`` alone does
    not tell.
    """
    import requests
    import urllib3.exceptions

    timeout_types = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    pending = [exc]
    seen = set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, timeout_types):
            return True
        wrapped = [error.__cause__, error.__context__, getattr(error, "reason", None), *error.args]
        pending += [item for item in wrapped if isinstance(item, BaseException)]
    return False


def _http_error(exc: Any, kaggle_dataset: str, credentials: str) -> DownloadError:
    # The message names only the status, because the status is enough to act on and the
    # error's own text is whatever the server sent.
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)

    if status in (401, 403):
        return CredentialsError(
            f"Kaggle rejected the download of {kaggle_dataset} with HTTP {status}: the credentials "
            f"from {credentials} are invalid or expired, or the account may not access this dataset. "
            f"Create a new API token at https://www.kaggle.com/settings/api or run `kaggle auth login`, "
            f"or set data.source to a local folder or .zip in the Kaggle layout."
        )
    if status == 404:
        return DownloadError(f"Kaggle dataset {kaggle_dataset} not found (HTTP 404); check data.kaggle_dataset.")
    return DownloadError(f"Download of Kaggle dataset {kaggle_dataset} failed with HTTP {status}.")


def _downloaded_zip(download_dir: Path, kaggle_dataset: str) -> Path:
    archives = sorted(download_dir.glob("*.zip"))
    if len(archives) != 1:
        found = ", ".join(path.name for path in sorted(download_dir.iterdir())) or "nothing"
        raise DownloadError(f"Expected one zip from the Kaggle download of {kaggle_dataset}, found {found}.")
    return archives[0]


# Kaggle credentials, in the places that kaggle 2.2.5 and kagglesdk 0.1.38 read them


def _home() -> Path:
    # The client expands "~" with os.path.expanduser, which reads HOME on POSIX.
    return Path(os.path.expanduser("~"))


def _find_access_token() -> str | None:
    environ = os.environ

    # Inside a Kaggle notebook the client reads a token file that the notebook provides.
    if environ.get("KAGGLE_KERNEL_RUN_TYPE") is not None and environ.get("KAGGLE_DATA_PROXY_URL") is not None:
        if _has_token_file(environ.get("KAGGLE_API_V1_TOKEN")):
            return "the Kaggle notebook token file KAGGLE_API_V1_TOKEN"

    token = environ.get("KAGGLE_API_TOKEN")
    if token:
        # The variable contains either the token or the path of a file that contains it. An empty
        # file makes the client go on to the other credentials.
        if not Path(token).exists():
            return "environment variable KAGGLE_API_TOKEN"
        if _has_token_file(token):
            return "the file named by environment variable KAGGLE_API_TOKEN"

    # These two files are always below ~/.kaggle, because the client ignores KAGGLE_CONFIG_DIR for them.
    for name in ("access_token", "access_token.txt"):
        path = _home() / ".kaggle" / name
        if _has_token_file(path):
            return str(path)
    return None


def _has_token_file(path: str | Path | None) -> bool:
    if not path:
        return False
    path = Path(path)
    try:
        return path.is_file() and bool(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return False


def _legacy_config_dir() -> Path:
    """Return the folder of ``kaggle.json``, as ``KaggleApi.config_dir`` chooses it."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)

    default = _home() / ".kaggle"
    if sys.platform.startswith("linux") and not default.exists():
        xdg_config = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
        return Path(xdg_config) / "kaggle"
    return default


def _find_legacy_key() -> str | None:
    sources = _legacy_key_sources()
    if len(sources) < 2:
        return None
    return " and ".join(dict.fromkeys(sources.values()))


def _legacy_key_sources() -> dict[str, str]:
    """Map each legacy credential field found, ``username`` or ``key``, to where it was found."""
    config_file = _legacy_config_dir() / "kaggle.json"
    values = _read_json_object(config_file)
    sources = {field: str(config_file) for field in ("username", "key") if values.get(field)}

    # The client lets KAGGLE_USERNAME and KAGGLE_KEY override the file, one by one.
    for field in ("username", "key"):
        if os.environ.get(f"KAGGLE_{field.upper()}"):
            sources[field] = f"environment variable KAGGLE_{field.upper()}"
    return sources


def _missing_legacy_half() -> str | None:
    """Describe a legacy key that has only one of username and key, or return None."""
    sources = _legacy_key_sources()
    if len(sources) != 1:
        return None
    present, where = next(iter(sources.items()))
    missing = "key" if present == "username" else "username"
    config_file = _legacy_config_dir() / "kaggle.json"
    return (
        f"Found the Kaggle {present} in {where} but no {missing}: set KAGGLE_{missing.upper()}, "
        f'or add "{missing}" to {config_file}.'
    )


def _find_oauth_credentials() -> str | None:
    path = _home() / ".kaggle" / "credentials.json"
    if _read_json_object(path).get("refresh_token"):
        return str(path)
    return None


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        # The client skips an unreadable file in the same way. The file's content is not logged.
        logger.warning("Ignoring %s: it is not a readable JSON file.", path)
        return {}
    return data if isinstance(data, dict) else {}


def _missing_credentials_message(kaggle_dataset: str) -> str:
    """Build the message for missing credentials: a short first line, then one line per way to fix it."""
    home = _home()
    lines = [f"No Kaggle credentials found to download {kaggle_dataset}."]

    missing_half = _missing_legacy_half()
    if missing_half:
        lines.append(missing_half)

    lines += [
        "Create an API token at https://www.kaggle.com/settings/api and provide it in one of these ways:",
        "  - set KAGGLE_API_TOKEN to the token, or to the path of a file that contains it",
        f"  - save the token to {home / '.kaggle' / 'access_token'}",
        f"  - run `kaggle auth login`, which writes {home / '.kaggle' / 'credentials.json'}",
        f"  - put kaggle.json with username and key in {_legacy_config_dir()} or in $KAGGLE_CONFIG_DIR",
        "  - set KAGGLE_USERNAME and KAGGLE_KEY to the legacy username and key",
        "Or set data.source to a local folder or .zip in the Kaggle layout, for example:",
        "  dvc exp run -S data.source=/path/to/chest-ctscan-images",
    ]
    return "\n".join(lines)
