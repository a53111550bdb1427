"""Checks that dvc.yaml declares what each stage script really reads.

Stage scripts load only the parameter keys listed in their ``PARAMS``, so comparing ``PARAMS``
with the stage's ``params`` in dvc.yaml covers every parameter a stage can read.
"""

import ast
import importlib.util
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from chestct.paths import REPO_ROOT

STAGES = YAML(typ="safe").load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = YAML(typ="safe").load((REPO_ROOT / "params.yaml").read_text())

# Parameters that change how fast a stage runs but not what it writes; declaring them would
# re-run the stage for nothing.
UNDECLARED_ON_PURPOSE = {"audit.workers", "preprocess.workers"}


def chestct_imports(path: Path) -> set[str]:
    """Return the ``chestct`` modules a file imports, as repository-relative paths."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chestct"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("chestct")]
        else:
            continue
        for name in names:
            module = REPO_ROOT / (name.replace(".", "/") + ".py")
            if module.is_file():
                modules.add(module.relative_to(REPO_ROOT).as_posix())
    return modules


def transitive_imports(path: Path) -> set[str]:
    """Return every ``chestct`` module that a file imports, directly or through others."""
    seen, pending = set(), chestct_imports(path)
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending |= chestct_imports(REPO_ROOT / module)
    return seen


def flatten(section: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        keys |= flatten(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
    return keys


def stage_module(name: str):
    """Import a stage script as a module; its ``main`` only runs as ``__main__``."""
    spec = importlib.util.spec_from_file_location(f"stages.{name}", REPO_ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_script_and_modules(name):
    stage = STAGES[name]
    script = REPO_ROOT / "stages" / f"{name}.py"

    expected = {f"stages/{name}.py"} | transitive_imports(script)

    assert expected <= set(stage["deps"])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_params_it_reads(name):
    read = set(stage_module(name).PARAMS) - UNDECLARED_ON_PURPOSE

    assert read == set(STAGES[name].get("params", []))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_declared_params_exist(name):
    assert set(STAGES[name].get("params", [])) <= flatten(PARAMS)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_command_runs_its_script(name):
    assert STAGES[name]["cmd"] == f"python stages/{name}.py"
