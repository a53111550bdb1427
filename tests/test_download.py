"""Tests of the download stage's library and of its stage script.

The library is chestct.download and the modules it builds on: chestct.archives, chestct.staging,
chestct.kaggle_credentials and chestct.kaggle_source. Most tests go through ``download_dataset``,
and each monkeypatch replaces a name in the module that defines it.
"""

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import requests
import requests.adapters

from chestct import archives, download, download_errors, kaggle_credentials, kaggle_source
from chestct.archives import extract_zip
from chestct.download import (
    CredentialsError,
    DownloadError,
    SourceNotFoundError,
    UnsafeArchiveError,
    download_dataset,
)
from chestct.kaggle_credentials import find_kaggle_credentials
from chestct.layout import LayoutError, read_manifest
from chestct.paths import REPO_ROOT
from tests.datasets import make_dataset

KAGGLE_DATASET = "mohamedhanyyy/chest-ctscan-images"
SECRET = "kgat_0123456789abcdef_do_not_log"
IMAGES_PER_DATASET = 3 * 4 * 3 + 2  # 3 splits x 4 classes x 3 images, plus 2 copies of a train image


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A generated dataset with ``Data/`` directly below the returned folder. Tests only read it."""
    return make_dataset(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def dataset_zip(dataset_dir, tmp_path_factory) -> Path:
    """The generated dataset as a zip laid out like Kaggle's: ``Data/<split>/...`` at the top."""
    return zip_folder(dataset_dir, tmp_path_factory.mktemp("archive") / "chest-ctscan-images.zip")


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "repo" / "data" / "raw"


@pytest.fixture
def existing_raw(out_dir) -> Path:
    """An output folder left by an earlier run, with one marker file."""
    marker = out_dir / "earlier-run.txt"
    marker.parent.mkdir(parents=True)
    marker.write_text("earlier run", encoding="utf-8")
    return marker


@pytest.fixture
def kaggle_home(tmp_path, monkeypatch) -> Path:
    """An empty home folder and an environment without any Kaggle variable."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


class StandInKaggleApi:
    """Replaces ``kaggle.api``: its download writes a given zip where the real client writes its own."""

    def __init__(self, archive: Path | None = None, error: Exception | None = None):
        self.archive = archive
        self.error = error
        self.calls = []

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        self.calls.append({"dataset": dataset, "path": path, "unzip": unzip})
        if self.error is not None:
            raise self.error
        shutil.copyfile(self.archive, Path(path) / f"{dataset.split('/')[1]}.zip")


def use_kaggle_client(monkeypatch, api: StandInKaggleApi) -> None:
    monkeypatch.setattr(kaggle_source, "_kaggle_client", lambda credentials: api)


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


def zip_folder(folder: Path, archive_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return archive_path


def zip_with_extra_entry(dataset_zip: Path, archive_path: Path, entry: zipfile.ZipInfo, data: bytes) -> Path:
    shutil.copyfile(dataset_zip, archive_path)
    with zipfile.ZipFile(archive_path, "a") as archive:
        archive.writestr(entry, data)
    return archive_path


def folder_listing(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def source_file(dataset_dir: Path, manifest_path: str) -> Path:
    # A manifest path is images/<split>/<class folder>/<file>, and the source has Data/ in place of images/.
    return dataset_dir / "Data" / Path(manifest_path).relative_to("images")


@contextlib.contextmanager
def fails_after(seconds: float):
    """Fail the test if the block runs longer than ``seconds``, where it would otherwise hang."""

    def expire(signum, frame):
        pytest.fail(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def stalled_server() -> str:
    """The URL of a server on 127.0.0.1 that never sends a response.

    The kernel completes the TCP handshake for connections in the listen backlog, so clients
    connect and send, and then wait for a response that never comes.
    """
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


# Public names


@pytest.mark.parametrize(
    "name, module",
    [
        ("DownloadError", download_errors),
        ("CredentialsError", download_errors),
        ("UnsafeArchiveError", download_errors),
        ("SourceNotFoundError", download_errors),
        ("extract_zip", archives),
        ("find_kaggle_credentials", kaggle_credentials),
    ],
)
def test_download_reexports_name(name, module):
    assert getattr(download, name) is getattr(module, name)
    assert name in download.__all__


# Local sources


def test_folder_source_copies_images(dataset_dir, out_dir):
    rows = download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert len(rows) == IMAGES_PER_DATASET
    assert sorted(row.path for row in rows) == sorted(path for path in folder_listing(out_dir) if path.count("/") == 3)
    for row in rows:
        assert (out_dir / row.path).read_bytes() == source_file(dataset_dir, row.path).read_bytes(), row.path


def test_folder_one_level_down(dataset_dir, tmp_path, out_dir):
    parent = tmp_path / "downloads"
    shutil.copytree(dataset_dir, parent / "chest-ctscan-images")

    rows = download_dataset(str(parent), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert len(rows) == IMAGES_PER_DATASET


@pytest.mark.parametrize("prefix", ["", "chest-ctscan-images/"])
def test_zip_source(dataset_dir, tmp_path, out_dir, prefix):
    archive_path = zip_folder(dataset_dir, tmp_path / "dataset.zip", prefix)

    rows = download_dataset(str(archive_path), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert len(rows) == IMAGES_PER_DATASET
    for row in rows:
        assert (out_dir / row.path).read_bytes() == source_file(dataset_dir, row.path).read_bytes(), row.path


def test_zip_source_leaves_no_temporary_folders(dataset_zip, out_dir):
    download_dataset(str(dataset_zip), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert os.listdir(out_dir.parent) == ["raw"]


def test_relative_source_resolves_against_repo_root(dataset_dir, tmp_path):
    repo_root = tmp_path / "repo"
    shutil.copytree(dataset_dir, repo_root / "datasets" / "chest")

    rows = download_dataset("datasets/chest", KAGGLE_DATASET, out_dir="data/raw", repo_root=repo_root, progress=False)

    assert len(rows) == IMAGES_PER_DATASET
    assert (repo_root / "data" / "raw" / "manifest.csv").is_file()


def test_missing_source_names_resolved_path(tmp_path, out_dir):
    with pytest.raises(SourceNotFoundError) as raised:
        download_dataset("no-such-folder", KAGGLE_DATASET, out_dir=out_dir, repo_root=tmp_path, progress=False)

    assert str(tmp_path / "no-such-folder") in str(raised.value)
    assert not out_dir.parent.exists()


def test_file_that_is_not_zip_rejected(tmp_path, out_dir):
    not_zip = tmp_path / "dataset.zip"
    not_zip.write_bytes(b"not a zip archive")

    with pytest.raises(DownloadError, match="neither a folder nor a zip"):
        download_dataset(str(not_zip), KAGGLE_DATASET, out_dir=out_dir, progress=False)


@pytest.mark.parametrize("source", [None, 123, "", "  ", ["kaggle"]])
def test_invalid_source_value(tmp_path, out_dir, source):
    with pytest.raises(DownloadError, match="Invalid data.source") as raised:
        download_dataset(source, KAGGLE_DATASET, out_dir=out_dir, repo_root=tmp_path, progress=False)

    assert repr(source) in str(raised.value)
    assert not out_dir.parent.exists()


def test_path_object_source_accepted(dataset_dir, out_dir):
    rows = download_dataset(dataset_dir, KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert len(rows) == IMAGES_PER_DATASET


def test_fifo_source_rejected(tmp_path, out_dir):
    fifo = tmp_path / "dataset.zip"
    os.mkfifo(fifo)

    with fails_after(10), pytest.raises(DownloadError, match="neither a folder nor a regular file") as raised:
        download_dataset(str(fifo), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert str(fifo) in str(raised.value)


def test_fifo_inside_folder_rejected(dataset_dir, tmp_path, out_dir):
    source = tmp_path / "source"
    shutil.copytree(dataset_dir, source)
    fifo = source / "Data" / "train" / "normal" / "fifo.png"
    os.mkfifo(fifo)

    with fails_after(10), pytest.raises(LayoutError, match="neither a regular file nor a folder") as raised:
        download_dataset(str(source), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert str(fifo) in str(raised.value)
    assert not out_dir.parent.exists()


@pytest.mark.parametrize(
    "link, target",
    [
        ("Data/train/normal/link.png", "/etc/hostname"),
        ("Data/train/normal/copy.png", "Data/train/normal/normal_000.png"),
        ("Data/valid/normal", "Data/train/normal"),
    ],
    ids=["file-outside", "file-inside", "class-folder"],
)
def test_symlink_in_folder_source_rejected(dataset_dir, tmp_path, out_dir, link, target):
    source = tmp_path / "source"
    shutil.copytree(dataset_dir, source)
    link_path = source / link
    if link_path.is_dir():
        shutil.rmtree(link_path)
    link_path.symlink_to(Path(target) if Path(target).is_absolute() else source / target)

    with pytest.raises(LayoutError, match="symbolic link") as raised:
        download_dataset(str(source), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert str(link_path) in str(raised.value)
    assert not out_dir.parent.exists()


def test_source_inside_output_rejected(dataset_dir, out_dir):
    shutil.copytree(dataset_dir, out_dir / "chest")

    with pytest.raises(DownloadError, match="inside the output folder"):
        download_dataset(str(out_dir / "chest"), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert (out_dir / "chest" / "Data").is_dir()


# Manifest


def test_manifest_rows(dataset_dir, out_dir):
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)
    rows = {row.path: row for row in read_manifest(out_dir / "manifest.csv")}

    train = rows["images/train/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib/adenocarcinoma_000.png"]
    assert train.split == "train"
    assert train.class_folder == "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"
    assert train.subtype == "adenocarcinoma"
    assert train.label == 1

    test = rows["images/test/large.cell.carcinoma/large_cell_carcinoma_002.png"]
    assert test.split == "test"
    assert test.subtype == "large_cell_carcinoma"
    assert test.label == 1

    normal = rows["images/valid/normal/normal_001.png"]
    assert normal.subtype == "normal"
    assert normal.label == 0


def test_manifest_hashes_and_sizes(dataset_dir, out_dir):
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    for row in read_manifest(out_dir / "manifest.csv"):
        data = source_file(dataset_dir, row.path).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest(), row.path
        assert row.bytes == len(data), row.path


def test_manifest_sorted_by_path(dataset_dir, out_dir):
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)
    paths = [row.path for row in read_manifest(out_dir / "manifest.csv")]

    assert paths == sorted(paths)


def test_manifest_bytes_repeatable(dataset_dir, dataset_zip, tmp_path):
    first = tmp_path / "first" / "raw"
    second = tmp_path / "second" / "raw"
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=first, progress=False)
    download_dataset(str(dataset_zip), KAGGLE_DATASET, out_dir=second, progress=False)

    assert (first / "manifest.csv").read_bytes() == (second / "manifest.csv").read_bytes()


# Replacing the output folder


def test_existing_output_replaced(dataset_dir, out_dir, existing_raw):
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert not existing_raw.exists()
    assert (out_dir / "manifest.csv").is_file()
    assert os.listdir(out_dir.parent) == ["raw"]


def test_output_folder_mode_follows_umask(dataset_dir, out_dir):
    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)
    umask = os.umask(0)
    os.umask(umask)

    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o777 & ~umask


def test_layout_error_keeps_existing_output(dataset_dir, tmp_path, out_dir, existing_raw):
    broken = tmp_path / "broken"
    shutil.copytree(dataset_dir, broken)
    shutil.rmtree(broken / "Data" / "valid" / "normal")

    with pytest.raises(LayoutError, match="no images of class normal"):
        download_dataset(str(broken), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert existing_raw.read_text(encoding="utf-8") == "earlier run"
    assert os.listdir(out_dir.parent) == ["raw"]


def test_copy_failure_keeps_existing_output(dataset_dir, out_dir, existing_raw, monkeypatch):
    copied = []
    original_copy = download._copy_and_hash

    def copy_then_fail(source, target):
        if len(copied) == 5:
            raise OSError("disk full")
        copied.append(source)
        return original_copy(source, target)

    monkeypatch.setattr(download, "_copy_and_hash", copy_then_fail)

    with pytest.raises(OSError, match="disk full"):
        download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert folder_listing(out_dir) == ["earlier-run.txt"]
    assert os.listdir(out_dir.parent) == ["raw"]


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_keyboard_interrupt_keeps_existing_output(dataset_dir, dataset_zip, out_dir, existing_raw, monkeypatch, kind):
    source = dataset_dir if kind == "folder" else dataset_zip

    def interrupt(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_copy_and_hash", interrupt)

    with pytest.raises(KeyboardInterrupt):
        download_dataset(str(source), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert folder_listing(out_dir) == ["earlier-run.txt"]
    assert os.listdir(out_dir.parent) == ["raw"]


def test_stale_temporary_folders_removed(dataset_dir, out_dir, caplog):
    caplog.set_level(logging.INFO, logger="chestct.staging")
    stale = ["raw.extract-k6nspdce", "raw.kaggle-wk2gwplf", "raw.partial-a_b0c1d2", "raw.old-12345678"]
    kept_folders = ["raw.partial-short", "raw.notes", "other.extract-abcdefgh", "raw.extract-abcdefgh.bak"]
    out_dir.parent.mkdir(parents=True)
    for name in stale + kept_folders:
        (out_dir.parent / name / "images").mkdir(parents=True)
        (out_dir.parent / name / "images" / "image.png").write_bytes(b"image")
    # Only folders are removed, even when a file has a matching name.
    (out_dir.parent / "raw.partial-abcdefgh").write_text("a file", encoding="utf-8")

    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert sorted(os.listdir(out_dir.parent)) == sorted(["raw", "raw.partial-abcdefgh", *kept_folders])
    for name in stale:
        assert str(out_dir.parent / name) in caplog.text, name
    for name in kept_folders:
        assert str(out_dir.parent / name) not in caplog.text, name


def test_stale_folders_not_followed_through_link(dataset_dir, tmp_path, out_dir):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    out_dir.parent.mkdir(parents=True)
    (out_dir.parent / "raw.extract-abcdefgh").symlink_to(elsewhere)

    download_dataset(str(dataset_dir), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert (elsewhere / "keep").is_dir()
    assert (out_dir.parent / "raw.extract-abcdefgh").is_symlink()


# Runs download_dataset in a child process that pauses after copying its first image, so that
# the test can send SIGTERM while the temporary folders exist.
PAUSING_DOWNLOAD = """
import sys
import time

from chestct import download

original_copy = download._copy_and_hash


def copy_then_pause(source, target):
    result = original_copy(source, target)
    print("copied", flush=True)
    time.sleep(60)
    return result


download._copy_and_hash = copy_then_pause
download.download_dataset(sys.argv[1], "owner/slug", out_dir=sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_sigterm_removes_temporary_folders(dataset_dir, dataset_zip, out_dir, kind):
    source = dataset_dir if kind == "folder" else dataset_zip
    out_dir.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSING_DOWNLOAD, str(source), str(out_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "copied\n", child.stderr.read()
        assert os.listdir(out_dir.parent), "no temporary folder while the download runs"
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    stderr = child.stderr.read()
    child.stdout.close()
    child.stderr.close()

    assert child.returncode == 128 + signal.SIGTERM, stderr
    assert "Stopped by SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert os.listdir(out_dir.parent) == []


# Unsafe archives


@pytest.mark.parametrize(
    "entry_name",
    [
        "../evil.png",
        "Data/../../evil.png",
        "{tmp_path}/evil.png",
        "C:/evil.png",
        "..\\evil.png",
        "Data\\..\\..\\evil.png",
    ],
)
def test_unsafe_entry_rejected(dataset_zip, tmp_path, out_dir, existing_raw, entry_name):
    # The absolute entry points into tmp_path, so that a failing check cannot write elsewhere.
    entry_name = entry_name.format(tmp_path=tmp_path)
    archive_path = zip_with_extra_entry(dataset_zip, tmp_path / "unsafe.zip", zipfile.ZipInfo(entry_name), b"evil")

    with pytest.raises(UnsafeArchiveError) as raised:
        download_dataset(str(archive_path), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert repr(entry_name) in str(raised.value)
    assert folder_listing(out_dir) == ["earlier-run.txt"]
    assert os.listdir(out_dir.parent) == ["raw"]
    assert not (tmp_path / "evil.png").exists()
    assert not (out_dir.parent.parent / "evil.png").exists()


def test_absolute_entry_keeps_leading_slash(dataset_zip, tmp_path):
    # The rejection test above is only meaningful if zipfile stores the name unchanged.
    entry_name = f"{tmp_path}/evil.png"
    archive_path = zip_with_extra_entry(dataset_zip, tmp_path / "unsafe.zip", zipfile.ZipInfo(entry_name), b"x")

    with zipfile.ZipFile(archive_path) as archive:
        assert entry_name in archive.namelist()


@pytest.mark.parametrize("entry_name", ["../evil.png", "{tmp_path}/evil.png"])
def test_extraction_guard_behind_name_checks(dataset_zip, tmp_path, monkeypatch, entry_name):
    entry_name = entry_name.format(tmp_path=tmp_path)
    archive_path = zip_with_extra_entry(dataset_zip, tmp_path / "unsafe.zip", zipfile.ZipInfo(entry_name), b"evil")
    monkeypatch.setattr(archives, "_check_member", lambda member, archive_path: None)

    with pytest.raises(UnsafeArchiveError, match="leads outside"):
        extract_zip(archive_path, tmp_path / "extracted" / "inner")

    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "extracted" / "evil.png").exists()


def test_symlink_entry_rejected(dataset_zip, tmp_path, out_dir):
    link = zipfile.ZipInfo("Data/train/normal/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive_path = zip_with_extra_entry(dataset_zip, tmp_path / "symlink.zip", link, b"/etc/passwd")

    with pytest.raises(UnsafeArchiveError, match="symbolic link") as raised:
        download_dataset(str(archive_path), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert "Data/train/normal/link.png" in str(raised.value)
    assert not out_dir.parent.exists()


def test_duplicate_entry_rejected(dataset_zip, tmp_path, out_dir):
    entry = zipfile.ZipInfo("Data/train/normal/normal_000.png")
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive_path = zip_with_extra_entry(dataset_zip, tmp_path / "duplicate.zip", entry, b"other bytes")

    with pytest.raises(UnsafeArchiveError, match="more than once"):
        download_dataset(str(archive_path), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert not out_dir.parent.exists()


def test_archive_over_size_limit_rejected(dataset_zip, out_dir, monkeypatch):
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 1000)

    with pytest.raises(UnsafeArchiveError, match="more than the limit of 1000 bytes"):
        download_dataset(str(dataset_zip), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert not out_dir.parent.exists()


def test_archive_over_entry_limit_rejected(dataset_zip, out_dir, monkeypatch):
    monkeypatch.setattr(archives, "MAX_ARCHIVE_ENTRIES", 10)

    with pytest.raises(UnsafeArchiveError, match="more than the limit of 10"):
        download_dataset(str(dataset_zip), KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert not out_dir.parent.exists()


def test_extract_zip_writes_entries(dataset_zip, dataset_dir, tmp_path):
    extract_zip(dataset_zip, tmp_path / "extracted")

    assert folder_listing(tmp_path / "extracted") == folder_listing(dataset_dir)


# Kaggle credentials


@pytest.mark.parametrize(
    "setup, expected",
    [
        ({"env": {"KAGGLE_API_TOKEN": SECRET}}, "environment variable KAGGLE_API_TOKEN"),
        ({"files": {"token.txt": SECRET}, "env": {"KAGGLE_API_TOKEN": "{home}/token.txt"}}, "named by environment"),
        ({"files": {".kaggle/access_token": SECRET}}, ".kaggle/access_token"),
        ({"files": {".kaggle/access_token.txt": SECRET}}, ".kaggle/access_token.txt"),
        ({"files": {".kaggle/kaggle.json": {"username": "someone", "key": SECRET}}}, ".kaggle/kaggle.json"),
        ({"files": {".config/kaggle/kaggle.json": {"username": "someone", "key": SECRET}}}, ".config/kaggle"),
        (
            {
                "files": {"elsewhere/kaggle.json": {"username": "someone", "key": SECRET}},
                "env": {"KAGGLE_CONFIG_DIR": "{home}/elsewhere"},
            },
            "elsewhere/kaggle.json",
        ),
        ({"env": {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": SECRET}}, "environment variable KAGGLE_KEY"),
        ({"files": {".kaggle/credentials.json": {"refresh_token": SECRET}}}, ".kaggle/credentials.json"),
    ],
    ids=[
        "token-env",
        "token-env-file",
        "access-token",
        "access-token-txt",
        "kaggle-json",
        "kaggle-json-xdg",
        "kaggle-json-config-dir",
        "username-key-env",
        "oauth",
    ],
)
def test_credentials_found(kaggle_home, monkeypatch, setup, expected):
    write_credentials(kaggle_home, monkeypatch, setup)

    found = find_kaggle_credentials()

    assert found is not None
    assert expected in found
    assert SECRET not in found


@pytest.mark.parametrize(
    "setup",
    [
        {},
        {"files": {".kaggle/access_token": "  \n"}},
        {"files": {"empty.txt": ""}, "env": {"KAGGLE_API_TOKEN": "{home}/empty.txt"}},
        {"env": {"KAGGLE_USERNAME": "someone"}},
        {"files": {".kaggle/kaggle.json": {"username": "someone"}}},
        {"files": {".kaggle/kaggle.json": "not json"}},
        {"files": {".kaggle/credentials.json": {"access_token": SECRET}}},
        {
            "files": {".kaggle/kaggle.json": {"username": "someone", "key": SECRET}},
            "env": {"KAGGLE_CONFIG_DIR": "{home}/elsewhere"},
        },
    ],
    ids=[
        "nothing",
        "blank-access-token",
        "empty-token-file",
        "username-only",
        "kaggle-json-without-key",
        "kaggle-json-invalid",
        "oauth-without-refresh-token",
        "kaggle-json-outside-config-dir",
    ],
)
def test_credentials_not_found(kaggle_home, monkeypatch, setup):
    write_credentials(kaggle_home, monkeypatch, setup)

    assert find_kaggle_credentials() is None


def write_credentials(home: Path, monkeypatch, setup: dict) -> None:
    for relative, content in setup.get("files", {}).items():
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)
        path.write_text(text, encoding="utf-8")
    for name, value in setup.get("env", {}).items():
        monkeypatch.setenv(name, value.format(home=home))


def test_missing_credentials_raise_before_import(kaggle_home, out_dir, monkeypatch):
    # A None entry in sys.modules makes any `import kaggle` raise ImportError.
    monkeypatch.setitem(sys.modules, "kaggle", None)
    monkeypatch.setattr(kaggle_source, "_kaggle_client", lambda credentials: pytest.fail("client created"))

    with pytest.raises(CredentialsError) as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    message = str(raised.value)
    ways = ("KAGGLE_API_TOKEN", "access_token", "kaggle auth login", "kaggle.json", "KAGGLE_CONFIG_DIR", "KAGGLE_KEY")
    for way in ways:
        assert way in message, way
    assert "data.source" in message
    assert not out_dir.parent.exists()


def test_missing_credentials_message_lines(kaggle_home, out_dir):
    with pytest.raises(CredentialsError) as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)
    lines = str(raised.value).splitlines()

    assert lines[0] == f"No Kaggle credentials found to download {KAGGLE_DATASET}."
    assert len([line for line in lines if line.startswith("  - ")]) == 5
    assert lines[-1] == "  dvc exp run -S data.source=/path/to/chest-ctscan-images"
    # The home folder of a test is long, so the limit applies to each line with it shortened to "~".
    for line in lines:
        assert len(line.replace(str(kaggle_home), "~")) <= 100, line


@pytest.mark.parametrize(
    "setup, expected",
    [
        ({"env": {"KAGGLE_USERNAME": "someone"}}, "username in environment variable KAGGLE_USERNAME but no key"),
        ({"env": {"KAGGLE_KEY": SECRET}}, "key in environment variable KAGGLE_KEY but no username"),
        ({"files": {".kaggle/kaggle.json": {"username": "someone"}}}, "kaggle.json but no key"),
    ],
    ids=["username-env", "key-env", "kaggle-json-username"],
)
def test_missing_credentials_half_named(kaggle_home, out_dir, monkeypatch, setup, expected):
    write_credentials(kaggle_home, monkeypatch, setup)
    missing = "KAGGLE_USERNAME" if "no username" in expected else "KAGGLE_KEY"

    with pytest.raises(CredentialsError) as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)
    second_line = str(raised.value).splitlines()[1]

    assert expected in second_line
    assert f"set {missing}" in second_line
    assert SECRET not in str(raised.value)


def test_kaggle_source_uses_client(kaggle_home, dataset_zip, out_dir, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    api = StandInKaggleApi(dataset_zip)
    use_kaggle_client(monkeypatch, api)

    rows = download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert len(rows) == IMAGES_PER_DATASET
    assert len(api.calls) == 1
    assert api.calls[0]["dataset"] == KAGGLE_DATASET
    assert api.calls[0]["unzip"] is False
    assert os.listdir(out_dir.parent) == ["raw"]


def test_kaggle_download_matches_zip_source(kaggle_home, dataset_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    use_kaggle_client(monkeypatch, StandInKaggleApi(dataset_zip))
    from_kaggle = tmp_path / "kaggle" / "raw"
    from_zip = tmp_path / "zip" / "raw"

    download_dataset("kaggle", KAGGLE_DATASET, out_dir=from_kaggle, progress=False)
    download_dataset(str(dataset_zip), KAGGLE_DATASET, out_dir=from_zip, progress=False)

    assert (from_kaggle / "manifest.csv").read_bytes() == (from_zip / "manifest.csv").read_bytes()


@pytest.mark.parametrize("status", [401, 403])
def test_kaggle_rejected_credentials(kaggle_home, out_dir, existing_raw, monkeypatch, caplog, status):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    use_kaggle_client(monkeypatch, StandInKaggleApi(error=http_error(status)))

    with pytest.raises(CredentialsError) as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert f"HTTP {status}" in str(raised.value)
    assert "KAGGLE_KEY" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in caplog.text
    assert existing_raw.read_text(encoding="utf-8") == "earlier run"
    assert os.listdir(out_dir.parent) == ["raw"]


def test_kaggle_dataset_not_found(kaggle_home, out_dir, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    use_kaggle_client(monkeypatch, StandInKaggleApi(error=http_error(404)))

    with pytest.raises(DownloadError, match="not found"):
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)


def test_kaggle_unreachable(kaggle_home, out_dir, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    use_kaggle_client(monkeypatch, StandInKaggleApi(error=requests.ConnectionError("no route to host")))

    with pytest.raises(DownloadError, match="Could not reach Kaggle"):
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert os.listdir(out_dir.parent) == []


def test_kaggle_interrupt_removes_download_folder(kaggle_home, out_dir, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    use_kaggle_client(monkeypatch, StandInKaggleApi(error=KeyboardInterrupt()))

    with pytest.raises(KeyboardInterrupt):
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert os.listdir(out_dir.parent) == []


class StalledKaggleApi:
    """Replaces ``kaggle.api``: its download sends a request to a server that never responds."""

    def __init__(self, url: str, timeout: float | None):
        self.url = url
        self.timeout = timeout

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        # kagglesdk 0.1.38 sends its API requests like this, with no timeout at all.
        request = requests.Request("POST", f"{self.url}/api/v1/datasets.DatasetApiService/DownloadDataset")
        with requests.Session() as session:
            session.send(request.prepare(), stream=True, timeout=self.timeout)


@pytest.mark.parametrize("client_timeout", [None, 300])
def test_kaggle_stall_times_out(kaggle_home, out_dir, monkeypatch, stalled_server, client_timeout):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    monkeypatch.setattr(kaggle_source, "KAGGLE_TIMEOUT_SECONDS", 0.5)
    use_kaggle_client(monkeypatch, StalledKaggleApi(stalled_server, client_timeout))
    original_send = requests.adapters.HTTPAdapter.send
    start = time.monotonic()

    with fails_after(20), pytest.raises(DownloadError) as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert time.monotonic() - start < 10
    assert "Could not reach Kaggle" in str(raised.value)
    assert "timed out after 0.5 s" in str(raised.value)
    assert os.listdir(out_dir.parent) == []
    assert requests.adapters.HTTPAdapter.send is original_send


@pytest.mark.parametrize(
    "timeout, expected",
    [(None, 0.5), (300, 0.5), (0.1, 0.1), ((None, 300), (0.5, 0.5)), ((0.1, None), (0.1, 0.5))],
)
def test_limited_timeout(timeout, expected):
    assert kaggle_source._limited_timeout(timeout, 0.5) == expected


# Runs download_dataset with the real kaggle client in a child process, so that importing the
# client cannot change the test process. Name lookups other than of 127.0.0.1 fail, so even a
# proxy setting that did not apply could not send a request off this machine.
REAL_CLIENT_DOWNLOAD = """
import socket
import sys

lookup = socket.getaddrinfo


def lookup_local_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
        raise OSError(f"lookup of {host} blocked by the test")
    return lookup(host, *args, **kwargs)


socket.getaddrinfo = lookup_local_only

from chestct import download, kaggle_source

kaggle_source.KAGGLE_TIMEOUT_SECONDS = 1
try:
    download.download_dataset("kaggle", sys.argv[1], out_dir=sys.argv[2], progress=False)
except download.DownloadError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.skipif(importlib.util.find_spec("kaggle") is None, reason="the kaggle client is not installed")
def test_real_kaggle_client_stall_times_out(tmp_path, out_dir, stalled_server):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KAGGLE_") and name.lower() not in {"no_proxy", "all_proxy", "xdg_config_home"}
    }
    # Fake legacy credentials, and every request through a proxy that never responds.
    env.update(
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT),
        KAGGLE_USERNAME="someone",
        KAGGLE_KEY=SECRET,
        HTTPS_PROXY=stalled_server,
        https_proxy=stalled_server,
        HTTP_PROXY=stalled_server,
        http_proxy=stalled_server,
    )

    result = subprocess.run(
        [sys.executable, "-c", REAL_CLIENT_DOWNLOAD, KAGGLE_DATASET, str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 3, result.stderr
    assert "Could not reach Kaggle" in result.stdout
    assert "timed out after 1 s" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert os.listdir(out_dir.parent) == []


def test_kaggle_client_not_authenticated(kaggle_home, out_dir, monkeypatch, caplog):
    # The real _kaggle_client runs against a stand-in module, because importing the real
    # package would authenticate over the network.
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    module = types.ModuleType("kaggle")
    module.api = types.SimpleNamespace(_authenticated=False)
    monkeypatch.setitem(sys.modules, "kaggle", module)

    with pytest.raises(CredentialsError, match="could not authenticate") as raised:
        download_dataset("kaggle", KAGGLE_DATASET, out_dir=out_dir, progress=False)

    assert "KAGGLE_API_TOKEN" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert SECRET not in caplog.text


def test_kaggle_client_authenticated(monkeypatch):
    module = types.ModuleType("kaggle")
    module.api = types.SimpleNamespace(_authenticated=True)
    monkeypatch.setitem(sys.modules, "kaggle", module)

    assert kaggle_source._kaggle_client("environment variable KAGGLE_API_TOKEN") is module.api


@pytest.mark.parametrize("dataset", ["", "chest-ctscan-images", "owner/slug/latest", "a/b/1/2", None, 123])
def test_invalid_kaggle_dataset(kaggle_home, out_dir, dataset):
    with pytest.raises(DownloadError, match="Invalid data.kaggle_dataset") as raised:
        download_dataset("kaggle", dataset, out_dir=out_dir, progress=False)

    assert repr(dataset) in str(raised.value)


# Stage script


def test_stage_exits_without_traceback(tmp_path):
    missing = tmp_path / "missing-dataset"
    (tmp_path / "params.yaml").write_text(
        f"data:\n  source: {missing}\n  kaggle_dataset: {KAGGLE_DATASET}\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "download.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def run_stage(folder: Path, source: str, env: dict | None = None) -> subprocess.CompletedProcess:
    (folder / "params.yaml").write_text(
        f"data:\n  source: {source}\n  kaggle_dataset: {KAGGLE_DATASET}\n", encoding="utf-8"
    )
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "download.py")],
        cwd=folder,
        env={**(env or os.environ), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("source", ["null", "123", "''"])
def test_stage_rejects_invalid_source(tmp_path, source):
    result = run_stage(tmp_path, source)

    assert result.returncode == 1
    assert "Invalid data.source" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_logs_credentials_help_on_lines(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("KAGGLE_")}
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(home)

    result = run_stage(tmp_path, "kaggle", env)
    lines = result.stderr.splitlines()
    first = next(line for line in lines if "Download failed" in line)

    assert result.returncode == 1
    assert first.endswith(
        f"ERROR stages.download: Download failed: No Kaggle credentials found to download {KAGGLE_DATASET}."
    )
    assert "  - set KAGGLE_USERNAME and KAGGLE_KEY to the legacy username and key" in lines
    assert "Traceback" not in result.stderr


# Runs the stage script in a child process. Its download writes to a test folder in place of
# data/raw of the repository, and pauses after copying its first image so that the test can
# send SIGINT while the temporary folders exist.
INTERRUPTED_STAGE = """
import runpy
import signal
import sys
import time

from chestct import download

# A shell without job control starts background commands with SIGINT ignored, and Python then
# raises no KeyboardInterrupt. Ctrl-C in a terminal reaches a process with the default handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

original_download = download.download_dataset
original_copy = download._copy_and_hash


def download_to_test_folder(source, kaggle_dataset):
    return original_download(source, kaggle_dataset, out_dir=sys.argv[2], progress=False)


def copy_then_pause(source, target):
    result = original_copy(source, target)
    print("copied", flush=True)
    time.sleep(60)
    return result


download.download_dataset = download_to_test_folder
download._copy_and_hash = copy_then_pause
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_stage_sigint_exits_130(dataset_dir, tmp_path, out_dir):
    (tmp_path / "params.yaml").write_text(
        f"data:\n  source: {dataset_dir}\n  kaggle_dataset: {KAGGLE_DATASET}\n", encoding="utf-8"
    )
    out_dir.parent.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_STAGE, str(REPO_ROOT / "stages" / "download.py"), str(out_dir)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "copied\n", child.stderr.read()
        assert os.listdir(out_dir.parent), "no temporary folder while the download runs"
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    stderr = child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    interrupt_lines = [line for line in stderr.splitlines() if "SIGINT" in line]

    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert len(interrupt_lines) == 1, stderr
    assert interrupt_lines[0].endswith("ERROR stages.download: Download stopped by SIGINT (Ctrl-C)")
    assert stderr.splitlines()[-1] == interrupt_lines[0]
    assert os.listdir(out_dir.parent) == []
