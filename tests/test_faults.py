"""Fault injection: what the sensor does on a bad day, each case asserting the end state, not just an error.

Real git repositories (a bare remote pushed to, as operators do) and the real sensor evaluated tick after
tick with its cursor (tests/services/ticker.py). The cases needing the Docker engine, a registry, the
cluster or the daemon are in tests/test_faults_runtime.py; docs/guarantees.md links each case.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from services.repos import RepoBuilder, hub_files
from services.ticker import Ticker, head


@pytest.fixture
def remote(two_hub_repo: RepoBuilder, tmp_path: Path) -> Path:
    """A bare remote holding `staging` and `prod` of the two-hub repository; the sensor watches it."""
    origin = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=staging", str(origin)], check=True)
    push(two_hub_repo, origin, "staging:staging", "staging:prod")
    return origin


def push(builder: RepoBuilder, origin: Path, *refspecs: str) -> None:
    builder.repo.git.push("--force", str(origin), *refspecs)


def deploy_everything(ticker: Ticker) -> None:
    """First tick, then record every requested deploy as done (and staging as healthy), as the runs would."""
    for _ in range(2):  # staging first; prod once staging passed
        deployed(ticker, ticker.tick()[0])


def deployed(ticker: Ticker, requests: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Record the requested deploys as done, staging ones as healthy: what successful runs would leave."""
    for hub, env, sha in requests:
        ticker.mark_deployed(hub, env, sha)
        if env == "staging":
            ticker.mark_staging_healthy(hub, sha)
    return requests


def test_remote_unreachable_for_ticks_then_back_loses_no_change(two_hub_repo: RepoBuilder, remote: Path):
    ticker = Ticker(two_hub_repo, source=str(remote))
    deploy_everything(ticker)
    cursor = ticker.cursor
    away = remote.with_name("remote-away.git")
    remote.rename(away)  # the forge is unreachable from the sensor...
    sha = two_hub_repo.commit(
        "alpha while the remote is unreachable", {"hubs/alpha/config/common.yaml": "jupyterhub: {a: 1}\n"}
    )
    push(two_hub_repo, away, "staging:staging")  # ...while operators still push to it
    for _ in range(3):
        requests, skipped = ticker.tick()
        assert requests == [] and "cannot read branch heads" in skipped[0], skipped
        assert ticker.cursor == cursor  # nothing forgotten, nothing half-recorded
    away.rename(remote)
    assert ticker.tick()[0] == [("alpha", "staging", sha)]
    assert ticker.tick()[0] == []  # and only once


def test_force_push_to_an_older_commit_then_to_an_unrelated_history(two_hub_repo: RepoBuilder, remote: Path):
    ticker = Ticker(two_hub_repo, source=str(remote))
    deploy_everything(ticker)
    older = two_hub_repo.commit("alpha: x=1", {"hubs/alpha/config/common.yaml": "jupyterhub: {x: 1}\n"})
    push(two_hub_repo, remote, "staging:staging")
    assert deployed(ticker, ticker.tick()[0]) == [("alpha", "staging", older)]
    newer = two_hub_repo.commit(
        "alpha: x=2, beta: y=1",
        {
            "hubs/alpha/config/common.yaml": "jupyterhub: {x: 2}\n",
            "hubs/beta/config/common.yaml": "jupyterhub: {y: 1}\n",
        },
    )
    push(two_hub_repo, remote, "staging:staging")
    assert deployed(ticker, ticker.tick()[0]) == [("alpha", "staging", newer), ("beta", "staging", newer)]

    # staging force-pushed back to the older commit: both hubs follow it back (their configuration changed).
    push(two_hub_repo, remote, f"{older}:staging")
    assert deployed(ticker, ticker.tick()[0]) == [("alpha", "staging", older), ("beta", "staging", older)]
    assert ticker.tick()[0] == []
    ticker.cursor = None  # even a lost cursor deploys nothing twice
    assert ticker.tick()[0] == []

    # staging force-pushed to an unrelated history whose alpha equals what is deployed and whose beta differs;
    # the old head is then pruned from the remote (no common commit to compare with at all).
    two_hub_repo.repo.git.checkout("--orphan", "rewritten", older)
    two_hub_repo.write({"hubs/beta/config/common.yaml": "jupyterhub: {rewritten: true}\n"})
    unrelated = two_hub_repo.commit("history rewritten")
    push(two_hub_repo, remote, "rewritten:staging", "rewritten:prod")
    subprocess.run(["git", "-C", str(remote), "reflog", "expire", "--expire=now", "--all"], check=True)
    subprocess.run(["git", "-C", str(remote), "gc", "-q", "--prune=now"], check=True)
    assert not two_hub_repo.repo.is_ancestor(older, unrelated)
    # alpha's configuration passed staging before: straight to prod; beta's waits for its staging checks.
    assert deployed(ticker, ticker.tick()[0]) == [("beta", "staging", unrelated), ("alpha", "prod", unrelated)]
    assert deployed(ticker, ticker.tick()[0]) == [("beta", "prod", unrelated)]
    assert ticker.tick()[0] == []


def test_two_merges_within_a_second_for_one_hub_deploy_the_newest_once(two_hub_repo: RepoBuilder, remote: Path):
    ticker = Ticker(two_hub_repo, source=str(remote))
    deploy_everything(ticker)
    two_hub_repo.commit(
        "alpha and beta",
        {
            "hubs/alpha/config/common.yaml": "jupyterhub: {m: 1}\n",
            "hubs/beta/config/common.yaml": "jupyterhub: {m: 1}\n",
        },
    )
    push(two_hub_repo, remote, "staging:staging")
    second = two_hub_repo.commit("alpha again", {"hubs/alpha/config/common.yaml": "jupyterhub: {m: 2}\n"})
    push(two_hub_repo, remote, "staging:staging")  # both pushes land between two ticks
    # Both commits are considered (beta changed only in the first), each hub deployed once, at the newest commit.
    assert deployed(ticker, ticker.tick()[0]) == [("alpha", "staging", second), ("beta", "staging", second)]
    assert ticker.tick()[0] == []
    # A third push right after that tick, while those runs may still be queued: a run of its own for alpha, at
    # the newest commit (one run per hub at a time, in request order: dagster.yaml and the end-to-end test).
    third = two_hub_repo.commit("alpha a third time", {"hubs/alpha/config/common.yaml": "jupyterhub: {m: 3}\n"})
    push(two_hub_repo, remote, "staging:staging")
    assert ticker.tick()[0] == [("alpha", "staging", third)]


BAD_COMMITS = {
    "malformed YAML": ({"hubs/alpha/hubploy.yaml": "images: [unclosed\n"}, "hubs/alpha/hubploy.yaml"),
    "unknown key": ({"hubs/alpha/hubploy.yaml": "images:\n  image_name: x\nchart: chart\nimagez: {}\n"}, "imagez"),
    "unencrypted secret": (
        {"hubs/alpha/secrets/staging.yaml": "jupyterhub:\n  hub:\n    cookieSecret: plaintext\n"},
        "hubs/alpha/secrets/staging.yaml",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMITS))
def test_a_broken_hub_is_reported_and_the_others_in_the_commit_still_deploy(
    case: str, two_hub_repo: RepoBuilder, remote: Path, capfd
):
    ticker = Ticker(two_hub_repo, source=str(remote))
    deploy_everything(ticker)
    capfd.readouterr()
    files, named = BAD_COMMITS[case]
    sha = two_hub_repo.commit(case, {**files, "hubs/beta/config/common.yaml": "jupyterhub: {fine: true}\n"})
    push(two_hub_repo, remote, "staging:staging")
    assert ticker.tick()[0] == [("beta", "staging", sha)]
    errors = capfd.readouterr().err
    assert "hubs/alpha/" in errors and named in errors, errors
    assert json.loads(ticker.cursor or "")["staging"] == sha  # reported once, not retried at every tick
    fixed = two_hub_repo.commit(f"fix {case}", hub_files("alpha", extra="# fixed\n"))
    two_hub_repo.remove("hubs/alpha/secrets") if case == "unencrypted secret" else None
    fixed = two_hub_repo.commit(f"fix {case}") if case == "unencrypted secret" else fixed
    push(two_hub_repo, remote, "staging:staging")
    assert ticker.tick()[0] == [("alpha", "staging", fixed)]


def test_a_hub_folder_without_hubploy_yaml_is_reported(two_hub_repo: RepoBuilder, remote: Path, capfd):
    ticker = Ticker(two_hub_repo, source=str(remote))
    deploy_everything(ticker)
    capfd.readouterr()
    sha = two_hub_repo.commit(
        "a half-made hub",
        {"hubs/gamma/config/common.yaml": "jupyterhub: {}\n", "hubs/beta/config/staging.yaml": "x: 1\n"},
    )
    push(two_hub_repo, remote, "staging:staging")
    assert ticker.tick()[0] == [("beta", "staging", sha)]
    assert "hubs/gamma" in (err := capfd.readouterr().err) and "no hubploy.yaml" in err, err
    assert head(two_hub_repo) == sha
