"""Hub discovery in both layouts, hubploy's values order, names, and read-at-commit without a work tree."""

from __future__ import annotations

import pytest
from services.repos import CHART_FILES, RepoBuilder, hub_files

from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.errors import ConfigError, UnknownHubError


def test_both_layouts_are_discovered(repo_builder: RepoBuilder):
    repo_builder.commit("x", {**CHART_FILES, **hub_files("new", "hubs"), **hub_files("classic", "deployments")})
    deployment = load_deployment(repo_builder.open().snapshot("HEAD"))
    assert {n: h.path for n, h in deployment.hubs.items()} == {"new": "hubs/new", "classic": "deployments/classic"}
    assert deployment.problems == []


def test_values_files_in_hubploy_order_missing_ones_skipped(repo_builder: RepoBuilder):
    files = {
        **CHART_FILES,
        **hub_files("h"),
        "hubs/h/config/prod.yaml": "jupyterhub: {}\n",
        "hubs/h/secrets/prod.yaml": "sops: {}\n",
        "secrets/deployments/h/secrets/prod.yaml": "sops: {}\n",
        "hubs/h/secrets/staging.yaml": "sops: {}\n",
    }
    repo_builder.commit("x", files)
    deployment = load_deployment(repo_builder.open().snapshot("HEAD"))
    hub = deployment.hub("h")
    assert [(f.path, f.secret) for f in deployment.values_files(hub, "prod")] == [
        ("hubs/h/config/common.yaml", False),
        ("hubs/h/config/prod.yaml", False),
        ("hubs/h/secrets/prod.yaml", True),
        ("secrets/deployments/h/secrets/prod.yaml", True),
    ]
    assert [f.path for f in deployment.values_files(hub, "staging")] == [
        "hubs/h/config/common.yaml",
        "hubs/h/config/staging.yaml",
        "hubs/h/secrets/staging.yaml",
    ]
    assert [f.path for f in deployment.values_files(hub, "develop")] == ["hubs/h/config/common.yaml"]


def test_release_and_namespace_default_to_hub_dash_env_and_can_be_overridden(repo_builder: RepoBuilder):
    extra = "environments:\n  prod: {namespace: datahub, release: datahub, url: https://hub.example.org}\n"
    repo_builder.commit("x", {**CHART_FILES, **hub_files("h", extra=extra)})
    hub = load_deployment(repo_builder.open().snapshot("HEAD")).hub("h")
    assert (hub.release_name("staging"), hub.namespace("staging"), hub.url("staging")) == (
        "h-staging",
        "h-staging",
        None,
    )
    assert (hub.release_name("prod"), hub.namespace("prod"), hub.url("prod")) == (
        "datahub",
        "datahub",
        "https://hub.example.org",
    )


def test_reads_the_commit_not_the_work_tree(two_hub_repo: RepoBuilder):
    first = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.commit("third hub", hub_files("gamma"))
    two_hub_repo.write({"hubs/alpha/hubploy.yaml": "broken: [\n"})  # uncommitted garbage in the work tree
    repo = two_hub_repo.open()
    assert sorted(load_deployment(repo.snapshot(first)).hubs) == ["alpha", "beta"]
    assert sorted(load_deployment(repo.snapshot("HEAD")).hubs) == ["alpha", "beta", "gamma"]


def test_invalid_hub_is_reported_and_other_hubs_still_load(two_hub_repo: RepoBuilder):
    two_hub_repo.commit(
        "bad hubs",
        {
            "hubs/typo/hubploy.yaml": "imagez: {}\n",
            "hubs/noconfig/config/common.yaml": "{}\n",
            "hubs/noimage/hubploy.yaml": "images: {image_name: a/b}\nchart: chart\n",
            "hubs/nochart/hubploy.yaml": "chart: missing-chart\n",
            "hubs/README.md": "not a hub: files beside hub folders are ignored\n",
        },
    )
    deployment = load_deployment(two_hub_repo.open().snapshot("HEAD"))
    # A missing chart folder is no discovery problem (`hubploy build` needs no chart): deploys and validate name it.
    assert sorted(deployment.hubs) == ["alpha", "beta", "nochart"]
    sha = deployment.sha[:7]
    messages = sorted(str(p) for p in deployment.problems)
    assert messages == [
        f"hubs/noconfig@{sha}: hub folder has no hubploy.yaml",
        f"hubs/noimage/hubploy.yaml@{sha}: images.image_name: image folder hubs/noimage/image does not exist",
        f"hubs/typo/hubploy.yaml@{sha}: imagez: unknown key",
    ]
    with pytest.raises(ConfigError, match="imagez: unknown key"):
        deployment.hub("typo")
    with pytest.raises(UnknownHubError, match=r"no hub named 'nope'.*alpha, beta"):
        deployment.hub("nope")


def test_same_hub_in_both_layouts_is_an_error(repo_builder: RepoBuilder):
    repo_builder.commit("x", {**CHART_FILES, **hub_files("dup", "hubs"), **hub_files("dup", "deployments")})
    deployment = load_deployment(repo_builder.open().snapshot("HEAD"))
    assert deployment.hubs == {}
    assert [str(p) for p in deployment.invalid["dup"]] == [
        f"hubs/dup@{deployment.sha[:7]}: hub 'dup' is defined twice: in hubs/dup/ and deployments/dup/"
    ]


def test_fingerprint_follows_content_of_hub_chart_and_watch_paths(two_hub_repo: RepoBuilder):
    repo = two_hub_repo.open()

    def prints(rev: str) -> dict[str, str]:
        deployment = load_deployment(repo.snapshot(rev))
        return {name: deployment.fingerprint(hub) for name, hub in deployment.hubs.items()}

    start = prints("HEAD")
    two_hub_repo.commit("docs", {"README.md": "docs only\n"})
    assert prints("HEAD") == start
    two_hub_repo.commit("alpha", {"hubs/alpha/config/common.yaml": "jupyterhub: {}\n"})
    after_alpha = prints("HEAD")
    assert after_alpha["alpha"] != start["alpha"] and after_alpha["beta"] == start["beta"]
    two_hub_repo.commit("chart", {"chart/values.yaml": "jupyterhub: {cull: {}}\n"})
    after_chart = prints("HEAD")
    assert all(after_chart[h] != after_alpha[h] for h in ("alpha", "beta"))
