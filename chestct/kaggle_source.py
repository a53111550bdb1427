"""Downloading the dataset zip with the official ``kaggle`` client.

Every request of the client runs under ``KAGGLE_TIMEOUT_SECONDS``, a timeout that kaggle 2.2.5
does not set itself. ``_kaggle_client`` is the boundary to the client that tests replace.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chestct.download_errors import CredentialsError, DownloadError

# Maximum wait, in seconds, for a connection to Kaggle or for the next data of a response.
# kaggle 2.2.5 sends its API requests without a timeout, so a stalled connection would
# otherwise block the stage forever.
KAGGLE_TIMEOUT_SECONDS = 60


def download_kaggle_zip(kaggle_dataset: str, download_dir: Path, credentials: str, progress: bool) -> Path:
    """Download ``kaggle_dataset`` into ``download_dir`` and return the path of its zip.

    Args:
        kaggle_dataset: The Kaggle dataset as ``owner/slug`` or ``owner/slug/version``.
        download_dir: An empty folder for the client to write the zip to.
        credentials: Where the credentials are, as ``find_kaggle_credentials`` returns it. Only
            error messages use it.
        progress: Whether the client shows its progress bar.

    Raises:
        CredentialsError: if the client cannot authenticate, or Kaggle rejects the credentials.
        DownloadError: if Kaggle cannot be reached or sends no data for ``KAGGLE_TIMEOUT_SECONDS``,
            on another HTTP error, or if the download is not exactly one zip.
    """
    # Importing the client authenticates, which can send requests too.
    with _requests_timeout(KAGGLE_TIMEOUT_SECONDS):
        api = _kaggle_client(credentials)
        _request_download(api, kaggle_dataset, download_dir, credentials, progress)
    return _downloaded_zip(download_dir, kaggle_dataset)


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
