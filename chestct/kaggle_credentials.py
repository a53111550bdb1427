"""Finding Kaggle credentials in the places that kaggle 2.2.5 and kagglesdk 0.1.38 read them.

The lookup sends no network request and puts no credential value into a message or a log line,
so a missing or half-configured setup can be reported before the client is imported.
"""

import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def find_kaggle_credentials() -> str | None:
    """Find the credentials that the ``kaggle`` client 2.2.5 would use, without a network request.

    The order follows ``KaggleApi.authenticate``: an access token, then a legacy API key, then
    OAuth credentials from ``kaggle auth login``.

    Returns:
        Where the credentials are, such as ``"environment variable KAGGLE_API_TOKEN"`` or a file
        path, never their value; ``None`` if there are none.
    """
    return _find_access_token() or _find_legacy_key() or _find_oauth_credentials()


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


def missing_credentials_message(kaggle_dataset: str) -> str:
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
