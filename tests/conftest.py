"""Shared fixtures: real git repositories built commit by commit inside the test (helpers: services/repos.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from services.repos import CHART_FILES, PROJECT_ROOT, RepoBuilder, hub_files

from hubploy_dagster.tools import find_tool

pytest_plugins = [
    "services.registry",
    "services.postgres",
    "services.cluster",
    "services.jupyterhub",
    "services.lab",
    "services.dagster_dev",
    "services.dagster_split",
]


@pytest.fixture
def repo_builder(tmp_path: Path) -> RepoBuilder:
    return RepoBuilder(tmp_path / "deploy-repo")


@pytest.fixture
def two_hub_repo(repo_builder: RepoBuilder) -> Iterator[RepoBuilder]:
    """A deployment repository with hubs `alpha` and `beta` and the chart, one commit on staging."""
    repo_builder.commit("initial", {**CHART_FILES, **hub_files("alpha"), **hub_files("beta")})
    yield repo_builder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own tag index and mirror cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def example_repo(repo_builder: RepoBuilder) -> RepoBuilder:
    """The bundled example (the project's hubs/ and chart/) committed to a fresh deployment repository."""
    for folder in ("hubs", "chart"):
        shutil.copytree(PROJECT_ROOT / folder, repo_builder.path / folder, ignore=shutil.ignore_patterns("charts"))
    repo_builder.commit("bundled example")
    repo_builder.branch("prod")
    return repo_builder


JUPYTERHUB_CHART_VERSION = "3.3.8"


@pytest.fixture(scope="session")
def jupyterhub_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged jupyterhub chart: JUPYTERHUB_CHART_TGZ, by default the shared copy beside the project.

    Where neither exists, it is pulled from the public chart repository (machines with internet access).
    """
    default = PROJECT_ROOT.parent / "shared" / "charts" / f"jupyterhub-{JUPYTERHUB_CHART_VERSION}.tgz"
    archive = Path(os.environ.get("JUPYTERHUB_CHART_TGZ", default))
    if archive.exists():
        return archive
    target = tmp_path_factory.mktemp("chart-pull")
    subprocess.run(
        [find_tool("helm", "pulling the jupyterhub chart"), "pull", "jupyterhub", "--version", JUPYTERHUB_CHART_VERSION,
         "--repo", "https://hub.jupyter.org/helm-chart/", "--destination", str(target)],
        check=True,
    )  # fmt: skip
    return target / archive.name


@pytest.fixture
def chart_cache(jupyterhub_chart: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Deploys take the chart's dependency from this folder instead of downloading it."""
    monkeypatch.setenv("HUBPLOY_CHART_CACHE", str(jupyterhub_chart.parent))
    return jupyterhub_chart.parent
