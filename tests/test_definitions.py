"""The code location loads, and its asset graph has every hub's image -> staging -> prod chain."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest
from services.repos import RepoBuilder, hub_files

from hubploy_dagster.definitions import build_definitions
from hubploy_dagster.errors import ConfigError


def graph_snapshot(defs: dg.Definitions) -> dict[str, dict]:
    """Keys, groups, deps and kinds: an accidental change to the per-hub graph shows up here."""
    graph = defs.resolve_asset_graph()
    snapshot = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        snapshot[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "kinds": sorted(node.kinds),
        }
    return snapshot


def expected_hub_graph(hub: str, group: str | None = None) -> dict[str, dict]:
    group = group or hub
    return {
        f"{hub}/image": {"group": group, "deps": [], "kinds": ["docker"]},
        f"{hub}/staging": {"group": group, "deps": [f"{hub}/image"], "kinds": ["helm", "kubernetes"]},
        f"{hub}/prod": {"group": group, "deps": [f"{hub}/staging"], "kinds": ["helm", "kubernetes"]},
    }


def test_every_hub_on_either_branch_has_its_assets(two_hub_repo: RepoBuilder):
    two_hub_repo.branch("prod")
    two_hub_repo.commit("new hub on staging only", hub_files("data-8"))
    defs = build_definitions(str(two_hub_repo.path))
    assert graph_snapshot(defs) == {
        **expected_hub_graph("alpha"),
        **expected_hub_graph("beta"),
        **expected_hub_graph("data-8", group="data_8"),
    }
    # no job spans every hub (each would copy the whole graph into the snapshot): only the code location's
    # own asset job, which runs whatever assets a run selects, and the two operator jobs
    assert {job.name for job in defs.resolve_all_job_defs()} == {
        "__ASSET_JOB",
        "rollback",
        "plan",
        "release_hold",
        "reject",
    }
    assert defs.resolve_sensor_def("git_branches").targets == []


def test_release_metadata_names_release_namespace_and_url(two_hub_repo: RepoBuilder):
    extra = "environments:\n  prod: {release: alpha, namespace: alpha-ns, url: https://alpha.example.org}\n"
    two_hub_repo.commit("alpha prod settings", hub_files("alpha", extra=extra))
    defs = build_definitions(str(two_hub_repo.path))
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == dg.AssetKey(["alpha", "prod"]))
    assert spec.metadata["release"] == "alpha" and spec.metadata["namespace"] == "alpha-ns"
    assert spec.metadata["url"].url == "https://alpha.example.org"


def test_hub_names_that_collide_as_group_names_are_rejected(two_hub_repo: RepoBuilder):
    two_hub_repo.commit("collide", {**hub_files("a-b"), **hub_files("a_b")})
    with pytest.raises(ConfigError, match="map to one group name"):
        build_definitions(str(two_hub_repo.path))


def test_code_location_loads_from_the_environment(two_hub_repo: RepoBuilder, monkeypatch):
    """The module `dagster dev` loads, validated by Dagster's own CLI in a fresh process."""
    monkeypatch.setenv("HUBPLOY_REPO", str(two_hub_repo.path))
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "hubploy_dagster.definitions"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.delenv("HUBPLOY_REPO")
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "hubploy_dagster.definitions"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "HUBPLOY_REPO is not set" in result.stdout + result.stderr
