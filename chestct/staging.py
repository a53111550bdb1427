"""The temporary folders that a download creates next to its output folder.

The new output folder is built in a sibling folder and renamed into place only when complete,
so a failed run leaves an existing output folder as it was. The temporary folders are removed
on any error and on SIGTERM, and at the start of the next run if a kill left them.
"""

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The kinds of temporary folder that a download creates next to the output folder: "partial"
# and "old" here, "extract" and "kaggle" in chestct.download. The suffix is the 8 characters
# that tempfile.mkdtemp adds (CPython 3.11 tempfile._RandomNameSequence).
_TEMPORARY_KINDS = ("partial", "extract", "kaggle", "old")
_TEMPORARY_SUFFIX = r"-[a-z0-9_]{8}"


@contextlib.contextmanager
def replace_on_success(out_dir: Path) -> Iterator[Path]:
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


def remove_stale_temporary_folders(out_dir: Path) -> None:
    """Remove the temporary folders that a killed earlier run left next to ``out_dir``.

    Only folders named like the ones a download creates are removed, such as
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
def exit_on_sigterm() -> Iterator[None]:
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
