"""The git sensor on real repositories: exactly the changed hubs, at the new commit, once, staging first."""

from __future__ import annotations

import json

import dagster as dg
import httpx
import pytest
from services.repos import RepoBuilder, hub_files
from services.ticker import BRANCHES, Ticker, head

from hubploy_dagster.chain import Chain
from sensors.git_sensor import build_git_sensor
from sensors.notify import failure_message


@pytest.fixture
def watched(two_hub_repo: RepoBuilder) -> RepoBuilder:
    two_hub_repo.branch("prod")
    return two_hub_repo


def test_first_tick_deploys_staging_then_prod_once_staging_is_healthy(watched: RepoBuilder):
    ticker = Ticker(watched)
    requests, _ = ticker.tick()
    sha = head(watched)
    assert requests == [("alpha", "staging", sha), ("beta", "staging", sha)]
    assert json.loads(ticker.cursor or "") == {"staging": sha}, "prod's move waits for staging's checks"
    assert ticker.tick()[0] == []
    ticker.mark_staging_healthy("alpha", sha)
    assert ticker.tick()[0] == [("alpha", "prod", sha)]
    ticker.mark_deployed("alpha", "prod", sha)
    ticker.mark_staging_healthy("beta", sha)
    assert ticker.tick()[0] == [("beta", "prod", sha)]
    assert json.loads(ticker.cursor or "") == {"prod": sha, "staging": sha}
    assert ticker.tick() == ([], ["no new commit on staging, prod"])


def test_a_prod_push_of_a_configuration_staging_never_passed_is_held(watched: RepoBuilder):
    ticker = Ticker(watched)
    ticker.tick()
    for hub in ("alpha", "beta"):
        ticker.mark_staging_healthy(hub, head(watched))
    ticker.tick()
    untested = watched.commit("straight to prod", {"hubs/beta/config/prod.yaml": "jupyterhub: {p: 1}\n"})
    watched.branch("prod", untested)
    watched.repo.git.reset("--hard", "HEAD~1")  # staging never saw it
    requests, _ = ticker.tick()
    assert ("beta", "prod", untested) not in requests
    ticker.mark_staging_healthy("beta", untested)  # once that configuration passes staging, prod follows
    assert ("beta", "prod", untested) in ticker.tick()[0]


def test_single_hub_change_deploys_that_hub_at_that_commit(watched: RepoBuilder):
    ticker = Ticker(watched)
    ticker.tick()
    sha = watched.commit("alpha values", {"hubs/alpha/config/staging.yaml": "jupyterhub: {a: 1}\n"})
    requests, _ = ticker.tick()
    assert requests == [("alpha", "staging", sha)]


def test_chart_change_deploys_every_hub(watched: RepoBuilder):
    ticker = Ticker(watched)
    ticker.tick()
    sha = watched.commit("chart", {"chart/values.yaml": "jupyterhub: {cull: {enabled: true}}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", sha), ("beta", "staging", sha)]


def test_two_pushes_between_ticks_deploy_each_changed_hub_once_at_the_newest_commit(watched: RepoBuilder):
    ticker = Ticker(watched)
    ticker.tick()
    watched.commit("alpha", {"hubs/alpha/config/common.yaml": "jupyterhub: {x: 1}\n"})
    newest = watched.commit("beta", {"hubs/beta/config/common.yaml": "jupyterhub: {y: 1}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", newest), ("beta", "staging", newest)]


def test_force_push_compares_trees(watched: RepoBuilder):
    ticker = Ticker(watched)
    base = head(watched)
    watched.commit("beta change", {"hubs/beta/config/common.yaml": "jupyterhub: {y: 1}\n"})
    ticker.tick()
    watched.repo.git.reset("--hard", base)  # staging force-pushed back: beta's change is gone again
    sha = watched.commit("alpha instead", {"hubs/alpha/config/common.yaml": "jupyterhub: {x: 2}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", sha), ("beta", "staging", sha)]


def test_new_hub_waits_for_a_reload_then_deploys(watched: RepoBuilder):
    ticker = Ticker(watched)
    ticker.tick()
    sha = watched.commit("new hub", hub_files("gamma"))
    assert ticker.tick()[0] == []  # gamma has no assets yet: nothing requested, the move is kept for later
    assert json.loads(ticker.cursor or "")["staging"] != sha
    ticker.reload()
    assert ticker.tick()[0] == [("gamma", "staging", sha)]


def test_removed_hub_is_reported_never_uninstalled(watched: RepoBuilder, capfd):
    ticker = Ticker(watched)
    ticker.tick()
    watched.remove("hubs/beta")
    sha = watched.commit("retire beta")
    requests, _ = ticker.tick()
    assert requests == []
    assert json.loads(ticker.cursor or "")["staging"] == sha
    assert "hub beta was removed from staging" in capfd.readouterr().err


def test_cursor_reset_redeploys_nothing_already_deployed(watched: RepoBuilder):
    ticker = Ticker(watched)
    first, _ = ticker.tick()
    for hub, env, sha in first:
        ticker.mark_deployed(hub, env, sha)
    ticker.cursor = None  # lost cursor, or a new daemon
    assert ticker.tick()[0] == []
    sha = watched.commit("alpha", {"hubs/alpha/config/common.yaml": "jupyterhub: {z: 1}\n"})
    ticker.cursor = None
    assert ticker.tick()[0] == [("alpha", "staging", sha)]


def test_invalid_hub_is_reported_and_others_still_deploy(watched: RepoBuilder, capfd):
    ticker = Ticker(watched)
    ticker.tick()
    sha = watched.commit(
        "one good, one broken",
        {"hubs/alpha/config/common.yaml": "jupyterhub: {ok: 1}\n", "hubs/beta/hubploy.yaml": "imagez: {}\n"},
    )
    assert ticker.tick()[0] == [("alpha", "staging", sha)]
    assert f"hubs/beta/hubploy.yaml@{sha[:7]}: imagez: unknown key" in capfd.readouterr().err


def test_unreachable_remote_skips_the_tick_and_keeps_the_cursor(watched: RepoBuilder, tmp_path):
    ticker = Ticker(watched)
    ticker.tick()
    cursor = ticker.cursor
    sensor = build_git_sensor(str(tmp_path / "gone.git"), Chain(BRANCHES))
    result = sensor(dg.build_sensor_context(instance=ticker.instance, cursor=cursor, definitions=ticker.defs))
    assert isinstance(result, dg.SkipReason) and "cannot list branches of" in (result.skip_message or "")


def test_failure_message_is_slack_shaped_and_names_hub_env_sha_step_and_run():
    run = dg.DagsterRun(
        job_name="deploy_staging",
        run_id="0123456789abcdef",
        tags={"hub": "alpha", "env": "staging", "git_sha": "a" * 40},
    )
    message = failure_message(run, ["alpha__staging"], "http://127.0.0.1:3000")
    assert message == {
        "text": ":x: deploy of *alpha* to *staging* at `aaaaaaa` failed in alpha__staging: "
        "<http://127.0.0.1:3000/runs/0123456789abcdef|run 01234567>"
    }
    assert httpx.Request("POST", "http://x", json=message).headers["content-type"] == "application/json"
