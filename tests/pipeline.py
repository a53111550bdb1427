"""A throwaway git + DVC copy of this repository, for end-to-end pipeline tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from chestct.paths import REPO_ROOT

COPIED = ("dvc.yaml", "params.yaml", "stages", "chestct")


class PipelineRepo:
    """A git repository with DVC initialised, holding a copy of the pipeline's code."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(root),
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "chestct tests",
            "GIT_AUTHOR_EMAIL": "tests@chestct.invalid",
            "GIT_COMMITTER_NAME": "chestct tests",
            "GIT_COMMITTER_EMAIL": "tests@chestct.invalid",
        }

    @classmethod
    def create(cls, root: Path, params: dict) -> "PipelineRepo":
        """Copy the pipeline into ``root``, apply ``params`` (dotted keys) and commit it."""
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, root / name)

        repo = cls(root)
        repo.set_params(params)
        repo.run("git", "init", "-q")
        repo.run("dvc", "init", "-q")
        repo.run("dvc", "config", "core.autostage", "true")
        repo.commit("Pipeline under test")
        return repo

    def set_params(self, params: dict) -> None:
        """Set dotted keys such as ``data.source`` in the copy's ``params.yaml``."""
        yaml = YAML()
        path = self.root / "params.yaml"
        document = yaml.load(path.read_text(encoding="utf-8"))
        for dotted, value in params.items():
            *sections, key = dotted.split(".")
            node = document
            for section in sections:
                node = node[section]
            node[key] = value
        with path.open("w", encoding="utf-8") as stream:
            yaml.dump(document, stream)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command in the repository and return its completed process."""
        result = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def commit(self, message: str) -> None:
        """Stage everything and commit it."""
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)
