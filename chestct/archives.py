"""Checking and extracting zip archives, such as the Kaggle download of the dataset.

Every entry is checked before anything is written: no entry may land outside the extraction
folder, be a symbolic link, be encrypted or appear twice, and the archive may not exceed
``MAX_ARCHIVE_BYTES`` or ``MAX_ARCHIVE_ENTRIES``.
"""

import contextlib
import re
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

from chestct.download_errors import DownloadError, UnsafeArchiveError

# The Kaggle dataset contains 1000 images, about 125 MB in all. These limits are far above that
# and stop a zip bomb before it fills the disk.
MAX_ARCHIVE_BYTES = 4 * 1024**3
MAX_ARCHIVE_ENTRIES = 100_000

_COPY_CHUNK_BYTES = 1024 * 1024
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")


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
    with open_zip(archive_path) as archive:
        members = checked_members(archive, archive_path)
        extract_members(archive, members, Path(target))


@contextlib.contextmanager
def open_zip(archive_path: Path) -> Iterator[zipfile.ZipFile]:
    """Open a zip archive for reading, or raise ``DownloadError`` if it is not a readable zip."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DownloadError(f"{archive_path} is not a readable zip archive: {exc}.") from exc
    with archive:
        yield archive


def checked_members(archive: zipfile.ZipFile, archive_path: Path) -> list[zipfile.ZipInfo]:
    """Check every entry of an archive before anything is extracted.

    The sum of the declared sizes bounds what extraction writes, because ``zipfile`` stops
    reading an entry at its declared size and fails on the CRC if the data goes on.

    Returns:
        All entries, in archive order.
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


def extract_members(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path) -> None:
    """Write the entries that ``checked_members`` returned below ``target``.

    Raises:
        UnsafeArchiveError: if an entry resolves to a path outside ``target``.
        DownloadError: if the data of an entry is corrupt.
    """
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
