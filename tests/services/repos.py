"""Real git repositories and hubs that tests build commit by commit, and the secrets they encrypt."""

from __future__ import annotations

import subprocess
import textwrap
import uuid
from pathlib import Path

import git

from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.tools import find_tool

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RepoBuilder:
    """A real git repository a test writes and commits to; commit dates advance one minute per commit."""

    def __init__(self, path: Path):
        self.path = path
        self.repo = git.Repo.init(path, initial_branch="staging")
        with self.repo.config_writer() as config:
            config.set_value("user", "name", "Test Operator")
            config.set_value("user", "email", "operator@example.org")
        self._clock = 1_700_000_000

    def write(self, files: dict[str, str]) -> RepoBuilder:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content))
        return self

    def remove(self, *names: str) -> RepoBuilder:
        self.repo.index.remove(list(names), r=True, working_tree=True)
        return self

    def commit(self, message: str = "change", files: dict[str, str] | None = None) -> str:
        if files:
            self.write(files)
        self.repo.git.add("--all")
        self._clock += 60
        date = f"{self._clock} +0000"
        self.repo.git.commit("--allow-empty", "-m", message, env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
        return self.repo.head.commit.hexsha

    def branch(self, name: str, start: str = "HEAD") -> None:
        self.repo.git.branch("-f", name, start)

    def checkout(self, name: str) -> None:
        self.repo.git.checkout(name)

    def merge(self, other: str, message: str | None = None) -> str:
        self._clock += 60
        date = f"{self._clock} +0000"
        self.repo.git.merge(
            "--no-ff",
            "-m",
            message or f"Merge {other}",
            other,
            env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date},
        )
        return self.repo.head.commit.hexsha

    def open(self) -> DeploymentRepo:
        return DeploymentRepo(self.path)


def hub_files(name: str, root: str = "hubs", image_name: str | None = None, extra: str = "") -> dict[str, str]:
    """The files of a minimal valid hub in hubploy's layout."""
    image = image_name or f"registry.example.org/{name}-image"
    return {
        f"{root}/{name}/hubploy.yaml": f"images:\n  image_name: {image}\nchart: chart\n{extra}",
        f"{root}/{name}/image/Dockerfile": "FROM scratch\n",
        f"{root}/{name}/config/common.yaml": f"jupyterhub:\n  hub:\n    config: {{}}\n# {name}\n",
        f"{root}/{name}/config/staging.yaml": "jupyterhub: {}\n",
    }


CHART_FILES = {
    "chart/Chart.yaml": "apiVersion: v2\nname: hub\nversion: 0.1.0\n",
    "chart/values.yaml": "jupyterhub: {}\n",
}


def new_age_key(folder: Path, name: str = "age") -> tuple[Path, str]:
    """A fresh age key pair (Debian's age-keygen): the key file and its public recipient."""
    key = folder / f"{name}-{uuid.uuid4().hex[:6]}.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
    return key, recipient


def sops_encrypt(folder: Path, recipient: str, plaintext: str, kind: str = "yaml") -> str:
    """`sops --encrypt` of a YAML or JSON document to one age recipient; the plaintext file is removed."""
    source = folder / f"plain-{uuid.uuid4().hex[:6]}.{kind}"
    source.write_text(plaintext)
    try:
        command = [
            find_tool("sops", "tests"),
            "--encrypt",
            "--age",
            recipient,
            "--input-type",
            kind,
            "--output-type",
            kind,
        ]
        return subprocess.run([*command, str(source)], check=True, capture_output=True, text=True).stdout
    finally:
        source.unlink()
