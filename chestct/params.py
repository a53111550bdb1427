"""Reading ``params.yaml``.

The file is read with ruamel.yaml, the YAML 1.2 loader that DVC itself uses: PyYAML follows
YAML 1.1 and reads values such as ``1e-4`` as strings.

Stage scripts list the dotted keys they use in ``PARAMS`` and load only those, so reading any
other key raises ``KeyError``. ``tests/test_dvc_yaml.py`` checks that ``dvc.yaml`` declares
every key in ``PARAMS`` except the few that change only speed, such as ``preprocess.workers``.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML


def load_params(path: str | Path = "params.yaml", keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Load a parameters file into plain Python dictionaries and lists.

    Args:
        path: the YAML file.
        keys: dotted keys (``"data.source"``) to keep; all keys when None.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError: if one of ``keys`` is not in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Parameters file {path} not found; run the stage from the repository root.")

    yaml = YAML(typ="safe", pure=True)
    with path.open(encoding="utf-8") as stream:
        params = yaml.load(stream)

    if not isinstance(params, dict):
        raise ValueError(f"{path} must contain a mapping of parameter sections, got {type(params).__name__}.")
    return params if keys is None else select_params(params, keys, source=path)


def select_params(params: dict[str, Any], keys: Iterable[str], source: str | Path = "params") -> dict[str, Any]:
    """Return a nested copy of ``params`` that holds only the given dotted keys.

    Raises:
        KeyError: naming the first key that ``params`` lacks.
    """
    selected: dict[str, Any] = {}
    for dotted in keys:
        *sections, name = dotted.split(".")
        node, target = params, selected
        for section in sections:
            if not isinstance(node.get(section), dict):
                raise KeyError(f"Parameter {dotted!r} not found in {source}.")
            node, target = node[section], target.setdefault(section, {})
        if name not in node:
            raise KeyError(f"Parameter {dotted!r} not found in {source}.")
        target[name] = node[name]
    return selected
