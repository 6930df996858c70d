"""Deploy windows (issue 18): a release changes only inside its allowed windows and never inside a freeze.

Windows are judged by `hubploy_dagster.rollout.now`, replaced here by a test clock: nothing waits for a real
window. The sensor on a real repository holds a deploy (visibly: a `held` fact on the release, recorded once)
and deploys the newest commit when the hold ends; on the cluster, a run launched by hand inside a freeze is
refused unless a run tag overrides it, and a sensor's run that meets a freeze waits for its end.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from services.lab import Lab
from services.repos import RepoBuilder, hub_files
from services.ticker import Ticker, head

from hubploy_dagster import policy, rollout
from hubploy_dagster.cli import main
from hubploy_dagster.config import RolloutSettings, load_hubploy_config
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.holds import reject_configuration, release_held_configuration
from hubploy_dagster.record import DeployRecord, Held, HoldReleased, RefusedPromotion, Rejected, Rollback, observation
from hubploy_dagster.resources import TAG_CLUSTER, TAG_SENSOR, DeploymentRepoResource
from jobs.holds import reject, release_hold
from sensors.git_sensor import build_git_sensor

# Monday to Friday from 08:00 to 18:00 in Berlin (CET, UTC+1 in winter): "no deploys during classes".
CLASSES = {"cron": "0 8 * * 1-5", "duration": "10h", "timezone": "Europe/Berlin"}
MONDAY_NOON = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
MONDAY_EVENING = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # 19:00 in Berlin
SATURDAY_NOON = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)


def settings(**keys: object) -> RolloutSettings:
    return RolloutSettings.model_validate(keys)


@pytest.mark.parametrize(
    ("moment", "held_until"),
    [
        (MONDAY_NOON, datetime(2026, 11, 30, 17, 0, tzinfo=UTC)),
        (datetime(2026, 11, 30, 7, 0, tzinfo=UTC), datetime(2026, 11, 30, 17, 0, tzinfo=UTC)),  # 08:00: opens
        (datetime(2026, 11, 30, 16, 59, tzinfo=UTC), datetime(2026, 11, 30, 17, 0, tzinfo=UTC)),
        (datetime(2026, 11, 30, 17, 0, tzinfo=UTC), None),  # 18:00: closed again
        (MONDAY_EVENING, None),
        (SATURDAY_NOON, None),
    ],
)
def test_a_deny_window_holds_while_it_is_open(moment: datetime, held_until: datetime | None):
    hold = rollout.window_hold(settings(deny=[CLASSES]), moment)
    assert (hold.until if hold else None) == held_until
    if hold:
        assert hold.kind == "window" and "until 2026-11-30 17:00 UTC" in hold.reason


def test_allow_windows_hold_until_the_next_opens_and_deny_windows_win():
    nights = {"cron": "0 22 * * *", "duration": "4h"}  # 22:00 to 02:00 UTC
    hold = rollout.window_hold(settings(allow=[nights]), MONDAY_NOON)
    assert hold is not None and hold.until == datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    assert "the next opens at 2026-11-30 22:00 UTC" in hold.reason
    assert rollout.window_hold(settings(allow=[nights]), datetime(2026, 12, 1, 1, 30, tzinfo=UTC)) is None
    finals = {"cron": "0 0 1 12 *", "duration": "14d"}  # a freeze over the first two weeks of December
    frozen = rollout.window_hold(settings(allow=[nights], deny=[finals]), datetime(2026, 12, 1, 23, 0, tzinfo=UTC))
    assert frozen is not None and frozen.until == datetime(2026, 12, 15, 0, 0, tzinfo=UTC)


def test_a_hubs_keys_override_the_repositorys_and_bad_settings_name_their_key():
    repository = settings(deny=[CLASSES], soak="30m")
    assert settings(deny=[]).over(repository) == settings(deny=[], soak="30m")
    assert settings().over(repository) == repository
    bad = (
        "chart: chart\nenvironments:\n  prod:\n    rollout:\n      deny: [{cron: 'at noon', duration: 2h}]\n"
        "      allow: [{cron: '0 1 * * *', duration: 2 hours, timezone: Mars/Olympus}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_hubploy_config(bad, "hubs/a/hubploy.yaml")
    problems = {problem.key: problem.reason for problem in caught.value.problems}
    assert "not a cron expression" in problems["environments.prod.rollout.deny.0.cron"]
    assert "not a duration" in problems["environments.prod.rollout.allow.0.duration"]
    assert "not a time zone" in problems["environments.prod.rollout.allow.0.timezone"]


def chain_file(staging: dict[str, object] | None = None, prod: dict[str, object] | None = None) -> dict[str, str]:
    entries = [{"name": name, **({"rollout": r} if r else {})} for name, r in (("staging", staging), ("prod", prod))]
    return {"hubploy-environments.yaml": yaml.safe_dump({"environments": entries})}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    now = [MONDAY_NOON]
    monkeypatch.setattr(rollout, "now", lambda: now[0])
    return now


def held_facts(ticker: Ticker, hub: str, env: str = "staging") -> list[Held]:
    return [fact for _, fact in DeployRecord(ticker.instance).facts(hub, env) if isinstance(fact, Held)]


def test_the_sensor_holds_a_frozen_deploy_then_deploys_the_newest_commit_once(
    two_hub_repo: RepoBuilder, clock: list[datetime]
):
    two_hub_repo.branch("prod")
    frozen = two_hub_repo.commit("classes freeze", chain_file(staging={"deny": [CLASSES]}))
    ticker = Ticker(two_hub_repo)
    assert ticker.tick()[0] == [], "nothing is deployed during classes"
    assert ticker.cursor is None or head(two_hub_repo) not in ticker.cursor, "the move is planned again"
    assert ticker.tick()[0] == []
    [fact] = held_facts(ticker, "alpha")  # visible on the release, once however many ticks
    assert (fact.kind, fact.until, fact.git_sha) == ("window", "2026-11-30 17:00 UTC", frozen)

    newest = two_hub_repo.commit("alpha values", {"hubs/alpha/config/staging.yaml": "jupyterhub: {a: 1}\n"})
    assert ticker.tick()[0] == []
    assert held_facts(ticker, "alpha")[0].git_sha == newest, "the hold names the commit that waits"
    clock[0] = MONDAY_EVENING
    assert ticker.tick()[0] == [("alpha", "staging", newest), ("beta", "staging", newest)]
    assert ticker.tick()[0] == [], "deployed once"


def test_a_hub_without_the_freeze_deploys_while_the_others_wait(two_hub_repo: RepoBuilder, clock: list[datetime]):
    two_hub_repo.branch("prod")
    two_hub_repo.commit("classes freeze", chain_file(staging={"deny": [CLASSES]}))
    sha = two_hub_repo.commit(
        "alpha has no classes",
        hub_files("alpha", extra="environments:\n  staging:\n    rollout: {deny: []}\n"),
    )
    ticker = Ticker(two_hub_repo)
    assert ticker.tick()[0] == [("alpha", "staging", sha)]
    assert held_facts(ticker, "beta") and not held_facts(ticker, "alpha")


def test_prod_promotes_only_after_the_soak_and_the_checks_run_again_at_its_end(two_hub_repo: RepoBuilder):
    """Real time and a 2-second soak: a healthy mark's time is the instance's clock, not a test clock."""
    two_hub_repo.branch("prod")
    sha = two_hub_repo.commit("prod soaks", chain_file(prod={"soak": "2s"}))
    two_hub_repo.branch("prod", sha)
    ticker = Ticker(two_hub_repo)
    ticker.tick()
    ticker.mark_staging_healthy("alpha", sha)
    assert ticker.tick()[0] == [], "healthy in staging, but not for 2 s yet"
    [soaking] = held_facts(ticker, "alpha", "prod")
    assert soaking.kind == "soak" and "soaking 2s" in soaking.reason and soaking.until
    time.sleep(2.5)
    assert ticker.tick()[0] == [] and [r[:2] for r in ticker.rechecks] == [("alpha", "staging")], "checks again"
    assert ticker.tick()[0] == [] and len(set(ticker.rechecks)) == 1, "the same run key: the daemon runs it once"
    ticker.mark_staging_healthy("alpha", sha)  # what the re-run checks record when they pass
    assert ticker.tick()[0] == [("alpha", "prod", sha)]


def a_failing_canary(builder: RepoBuilder) -> tuple[Ticker, str]:
    """Two waves in staging: alpha, the canary, passed its checks once; then a chart bump it fails (the ticker
    and the bump's commit)."""
    builder.branch("prod")
    builder.commit("every hub in wave 1", chain_file(staging={"wave": 1}))
    canary = "environments:\n  staging:\n    rollout: {wave: 0}\n"
    first = builder.commit("alpha is the canary", hub_files("alpha", extra=canary))
    ticker = Ticker(builder)
    assert ticker.tick()[0] == [("alpha", "staging", first)], "the canary first"
    [wave] = held_facts(ticker, "beta")
    assert wave.kind == "wave" and "alpha" in wave.reason
    ticker.mark_deployed("alpha", "staging", first)
    ticker.mark_staging_healthy("alpha", first)
    assert ticker.tick()[0] == [("beta", "staging", first)], "the next wave once the canary passed its checks"
    ticker.mark_deployed("beta", "staging", first)

    bump = builder.commit("chart bump", {"chart/values.yaml": "jupyterhub: {bumped: true}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", bump)]
    ticker.mark_deployed("alpha", "staging", bump)  # deployed, but its checks fail: no healthy mark
    for _ in range(2):
        assert ticker.tick()[0] == [], "a failing canary holds the later waves"
    assert len([f for f in held_facts(ticker, "beta") if f.git_sha == bump]) == 1, "recorded once"
    return ticker, bump


def test_canary_waves_deploy_in_order_and_a_failing_canary_holds_the_rest(two_hub_repo: RepoBuilder):
    ticker, _ = a_failing_canary(two_hub_repo)
    fixed = two_hub_repo.commit("alpha fixed", {"hubs/alpha/config/staging.yaml": "jupyterhub: {fixed: 1}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", fixed)], "a new configuration of the canary deploys"
    ticker.mark_deployed("alpha", "staging", fixed)
    ticker.mark_staging_healthy("alpha", fixed)
    assert ticker.tick()[0] == [("beta", "staging", fixed)]


def test_an_operator_resumes_the_waves_a_failing_canary_holds(two_hub_repo: RepoBuilder):
    ticker, bump = a_failing_canary(two_hub_repo)
    record = DeployRecord(ticker.instance)
    resumed = release_held_configuration(record, "beta", "staging", "carol", "alpha fails for its own reasons")
    [hold, *_] = held_facts(ticker, "beta")
    assert resumed.fingerprint == hold.fingerprint != "" and (resumed.by, hold.git_sha) == ("carol", bump)
    assert ticker.tick()[0] == [("beta", "staging", bump)], "resumed: the held wave deploys at the held commit"
    assert isinstance(record.latest_fact("beta", "staging"), HoldReleased), "the decision is on the release"


def test_each_run_is_tagged_with_its_hubs_cluster(two_hub_repo: RepoBuilder):
    cluster = "cluster: {provider: kubeconfig, kubeconfig: {filename: kube.yaml, context: campus}}\n"
    two_hub_repo.commit("alpha on campus", hub_files("alpha", extra=cluster))
    two_hub_repo.branch("prod")
    ticker = Ticker(two_hub_repo)
    sensor = build_git_sensor(str(two_hub_repo.path), ticker.chain)
    result = sensor(dg.build_sensor_context(instance=ticker.instance, definitions=ticker.defs))
    tags = {request.tags["hub"]: request.tags[TAG_CLUSTER] for request in result.run_requests}
    assert tags == {"alpha": "kubeconfig:campus", "beta": "current-context"}


# -- the release asset on the cluster --------------------------------------------------------------------------


def frozen_environments(lab: Lab) -> str:
    always = "rollout: {deny: [{cron: '0 0 * * *', duration: 1d}]}"  # every moment is inside
    return f"environments:\n  staging: {{namespace: {lab.namespace}, {always}}}\n  prod: {{namespace: {lab.namespace}-p}}\n"


def test_a_run_launched_inside_a_freeze_is_refused_unless_overridden(lab: Lab):
    lab.configure(frozen_environments(lab))
    lab.push_current_image()
    refused = lab.materialize("staging")
    assert refused.success and "lab/staging" not in refused.materialized(), refused.materialized()
    fact = DeployRecord(lab.instance).latest_fact("lab", "staging")
    assert isinstance(fact, Held) and fact.kind == "window" and not lab.release_exists()

    forced = lab.materialize("staging", tags={"window_override": "alice: security fix, ticket 7"})
    assert forced.success and forced.metadata("staging")["window_override"] == "alice: security fix, ticket 7"
    assert [h["revision"] for h in lab.history()] == [1]


def test_a_sensor_run_that_meets_a_freeze_waits_for_its_end(
    lab: Lab, clock: list[datetime], monkeypatch: pytest.MonkeyPatch
):
    lab.configure(lab.environments().replace("staging: {", f"staging: {{rollout: {{deny: [{CLASSES}]}}, "))
    lab.push_current_image()
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the test clock moves instead
        slept.append(seconds)
        clock[0] += timedelta(seconds=seconds)

    monkeypatch.setattr(policy.time, "sleep", sleep)
    monkeypatch.setattr(policy, "HOLD_POLL_SECONDS", 3600.0)
    run = lab.materialize("staging", tags={TAG_SENSOR: "git_branches"})
    assert run.success and "lab/staging" in run.materialized()
    assert clock[0] >= datetime(2026, 11, 30, 17, 0, tzinfo=UTC) and len(slept) == 6, slept
    assert "waiting to deploy lab to staging: inside the deny window" in run.log_text()


def test_a_prod_run_during_the_soak_is_refused_unless_overridden(lab: Lab):
    lab.configure(lab.environments().replace("prod: {", "prod: {rollout: {soak: 1h}, "))
    lab.push_current_image()
    staged = lab.materialize("staging", checks=True)
    assert staged.success and staged.checks() and all(c.passed for c in staged.checks().values())
    refused = lab.materialize("prod")
    assert "lab/prod" not in refused.materialized()
    fact = DeployRecord(lab.instance).latest_fact("lab", "prod")
    assert isinstance(fact, RefusedPromotion) and "is not promoted yet" in fact.reason and "soaking 1h" in fact.reason
    forced = lab.materialize("prod", tags={"promotion_override": "alice: the soak is not needed for this fix"})
    assert forced.success and "lab/prod" in forced.materialized()


def test_a_rolled_back_configuration_is_held_until_released_and_a_rejected_one_never_deploys(
    two_hub_repo: RepoBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Rollback holds and rejections (issue 19): a failed upgrade's rollback recorded, then the CLI's
    `release-hold` and `reject` on the same Dagster instance the sensor reads."""
    two_hub_repo.branch("prod")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    ticker = Ticker(two_hub_repo)
    ticker.instance = dg.DagsterInstance.get()
    sha = head(two_hub_repo)
    deployment = load_deployment(two_hub_repo.open().snapshot(sha))
    rolled_back = Rollback("done", None, 1, 2, {"failed_upgrade": "x"}, deployment.fingerprint(deployment.hub("alpha")))
    ticker.instance.report_runless_asset_event(observation("alpha", "staging", rolled_back))
    runner = CliRunner(env={"HUBPLOY_ACTOR": "alice"})
    rejected = runner.invoke(main, ["reject", "beta", "--repo", str(two_hub_repo.path), "--reason", "leaks a token"])
    assert rejected.exit_code == 0 and "rejected everywhere (by alice)" in rejected.stdout, rejected.output

    assert ticker.tick()[0] == [], "the rolled-back configuration is held, the rejected one never deploys"
    assert (held_facts(ticker, "alpha")[0].kind, held_facts(ticker, "beta")[0].kind) == ("rollback", "rejected")
    released = runner.invoke(main, ["release-hold", "alpha", "staging", "--reason", "the registry is back"])
    assert released.exit_code == 0, released.output
    assert ticker.tick()[0] == [("alpha", "staging", sha)], "released: it deploys; the rejected one still not"
    assert any(
        isinstance(f, Rejected) and f.by == "alice" for _, f in DeployRecord(ticker.instance).facts("beta", "prod")
    )
    bump = two_hub_repo.commit("chart bump", {"chart/values.yaml": "jupyterhub: {bumped: true}\n"})
    assert ticker.tick()[0] == [("alpha", "staging", bump), ("beta", "staging", bump)], "new configurations deploy"
    nothing = runner.invoke(main, ["release-hold", "beta", "prod", "--reason", "?"])
    assert (
        nothing.exit_code == 1
        and "no rollback or canary wave of hub beta in prod holds a configuration" in nothing.output
    )


def test_a_release_of_a_rejected_configuration_is_refused(lab: Lab):
    lab.push_current_image()
    record = DeployRecord(lab.instance)
    reject_configuration(record, lab.builder.open(), "HEAD", "lab", "bob", "breaks the proxy")
    run = lab.materialize("staging")
    assert run.success and "lab/staging" not in run.materialized() and not lab.release_exists()
    fact = record.latest_fact("lab", "staging")
    assert isinstance(fact, Held) and fact.kind == "rejected" and "rejected by bob: breaks the proxy" in fact.reason


def test_the_release_hold_and_reject_jobs_record_the_operators_decision(two_hub_repo: RepoBuilder):
    """The UI's way to the same decisions: the jobs, their run named as who decided."""
    instance = dg.DagsterInstance.ephemeral()
    deployment = load_deployment(two_hub_repo.open().snapshot("HEAD"))
    fingerprint = deployment.fingerprint(deployment.hub("alpha"))
    instance.report_runless_asset_event(observation("alpha", "staging", Rollback("done", 2, 1, 3, {}, fingerprint)))
    resources = {"deployment_repo": DeploymentRepoResource(source=str(two_hub_repo.path))}
    config = {"hub": "alpha", "env": "staging", "reason": "fixed upstream"}
    released = release_hold.execute_in_process(
        run_config={"ops": {"release_hold_op": {"config": config}}}, instance=instance
    )
    fact = DeployRecord(instance).latest_fact("alpha", "staging")
    assert fact == HoldReleased(fingerprint, f"run {released.run_id}", "fixed upstream")
    config = {"hub": "beta", "rev": "HEAD", "reason": "breaks logins"}
    rejected = reject.execute_in_process(
        run_config={"ops": {"reject_configuration_op": {"config": config}}}, instance=instance, resources=resources
    )
    for env in ("staging", "prod"):
        fact = DeployRecord(instance).latest_fact("beta", env)
        assert isinstance(fact, Rejected) and fact.by == f"run {rejected.run_id}" and fact.reason == "breaks logins"


def test_plan_names_the_holds_the_deploy_record_puts_on_a_hub(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    lab.push_current_image()
    instance = dg.DagsterInstance.get()
    reject_configuration(DeployRecord(instance), lab.builder.open(), "HEAD", "lab", "bob", "breaks the proxy")
    runner = CliRunner(env={"SOPS_AGE_KEY_FILE": str(lab.age_key)})
    result = runner.invoke(main, ["plan", "--repo", str(lab.builder.path), "--env", "staging", "--json"])
    assert result.exit_code == 0, result.output
    assert "rejected by bob: breaks the proxy" in json.loads(result.stdout)["holds"]["lab"]
