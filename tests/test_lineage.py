"""Lineage in a release's metadata: the commit on its forge, the image, the run, and for prod the staging pass.

The forge table is pure logic; the deploys are real (helm and the jupyterhub chart on the local control
plane, tests/services/lab.py).
"""

from __future__ import annotations

import dagster as dg
import pytest
from services.lab import Lab

from hubploy_dagster.keys import release_key
from hubploy_dagster.lineage import commit_url, run_url

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        (
            "https://github.com/berkeley-dsep-infra/datahub.git",
            "https://github.com/berkeley-dsep-infra/datahub/commit/",
        ),
        ("https://github.com/berkeley-dsep-infra/datahub", "https://github.com/berkeley-dsep-infra/datahub/commit/"),
        ("git@github.com:2i2c-org/infrastructure.git", "https://github.com/2i2c-org/infrastructure/commit/"),
        ("ssh://git@github.com/org/hubs.git", "https://github.com/org/hubs/commit/"),
        ("https://GitHub.com/org/hubs/", "https://github.com/org/hubs/commit/"),
        ("https://gitlab.com/group/subgroup/hubs.git", "https://gitlab.com/group/subgroup/hubs/-/commit/"),
        ("git@gitlab.com:group/hubs.git", "https://gitlab.com/group/hubs/-/commit/"),
        ("https://bitbucket.org/team/hubs.git", "https://bitbucket.org/team/hubs/commits/"),
        ("git@bitbucket.org:team/hubs.git", "https://bitbucket.org/team/hubs/commits/"),
    ],
)
def test_known_forges_link_the_commit_page(remote: str, expected: str):
    assert commit_url(remote, SHA) == expected + SHA


@pytest.mark.parametrize(
    "remote",
    [
        "https://git.example.org/org/hubs.git",  # a forge we do not know how to link to
        "git@git.example.org:org/hubs.git",
        "/srv/git/hubs.git",
        "file:///srv/git/hubs.git",
        "https://github.com/just-an-owner",
        "",
        None,
    ],
)
def test_other_remotes_have_no_link(remote: str | None):
    assert commit_url(remote, SHA) is None


def test_credentials_in_a_remote_never_reach_the_link():
    url = commit_url("https://deploy-bot:ghp_SECRETTOKEN@github.com/org/hubs.git", SHA)
    assert url == f"https://github.com/org/hubs/commit/{SHA}"


def test_run_link_needs_the_webserver():
    assert run_url("http://dagster.example.org:3000/", "abc") == "http://dagster.example.org:3000/runs/abc"
    assert run_url(None, "abc") is None and run_url("http://dagster.example.org", None) is None


@pytest.mark.integration
def test_release_metadata_links_commit_image_and_run_and_prod_names_the_staging_it_promoted(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HUBPLOY_WEBSERVER_URL", "http://dagster.example.org:3000")
    lab.builder.repo.create_remote("origin", "git@github.com:example-org/hubs.git")
    tag = lab.push_current_image()
    sha = lab.builder.repo.head.commit.hexsha
    staging = lab.materialize(checks=True)
    assert staging.success, staging.error()
    prod = lab.materialize("prod")
    assert prod.success, prod.error()

    meta = staging.metadata()
    assert meta["commit"] == f"https://github.com/example-org/hubs/commit/{sha}"
    assert meta["git_sha"] == sha and meta["image"] == f"{lab.image}:{tag}"
    assert meta["run"] == f"http://dagster.example.org:3000/runs/{staging.result.run_id}"
    [event] = lab.instance.fetch_materializations(release_key("lab", "staging"), limit=1).records
    promoted = prod.metadata("prod")
    assert promoted["promoted_from_run"] == staging.result.run_id
    assert promoted["promoted_from_storage_id"] == event.storage_id
    assert promoted["promoted_from_time"] == pytest.approx(event.timestamp)
    assert promoted["promoted_from_run_link"] == f"http://dagster.example.org:3000/runs/{staging.result.run_id}"
    assert promoted["run"] == f"http://dagster.example.org:3000/runs/{prod.result.run_id}"


@pytest.mark.integration
def test_without_a_forge_or_webserver_the_sha_is_plain_text(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HUBPLOY_WEBSERVER_URL", raising=False)
    lab.push_current_image()
    run = lab.materialize()
    assert run.success, run.error()
    [event] = run.result.get_asset_materialization_events()
    commit = event.materialization.metadata["commit"]
    assert isinstance(commit, dg.TextMetadataValue) and commit.value == lab.builder.repo.head.commit.hexsha
    assert "run" not in event.materialization.metadata
