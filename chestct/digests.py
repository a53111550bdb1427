"""Content digests that tie the pipeline's files to each other.

``models/threshold.json`` records the SHA-256 of the weights it was chosen for, the export
manifest records the SHA-256 of every exported file, and ``dvc.lock`` records the MD5 of each
stage output. Comparing these digests is how the command line and the web service prove that
the model, its threshold and its preprocessing belong together.
"""

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    return _file_digest(path, hashlib.sha256())


def file_md5(path: str | Path) -> str:
    """Return the MD5 hex digest of a file's bytes, as DVC 3 records it in ``dvc.lock``."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def path_sha256(path: str | Path) -> str:
    """Return the SHA-256 of a file, or of a directory's files and their relative paths.

    A directory's digest covers every file below it, in sorted path order, so that a
    SavedModel directory gets one version like a single model file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found.")

    digest = hashlib.sha256()
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_digest(path: str | Path, digest) -> str:
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
