"""Health checks after each release, and what their outcome records: a healthy mark, or a rollback.

A deploy is done when the hub works. After a release materializes, the same step runs every enabled check of
the hub (`health` in hubploy.yaml): helm's record of the release, the workloads' rollout, the hub API, and a
test user's server; a run of the checks alone (the watch sensor's, a soak's end, the UI's) runs only them.
Blocking checks that fail stop the run before prod; when every blocking check passes, the revision and the
hub's configuration fingerprint are recorded as healthy (the deploy record), which is what rollback returns to
and what the promotion gate asks of the next environment.
"""

from collections.abc import Callable, Generator
from typing import Any

import dagster as dg
import yaml

from hubploy_dagster.config import CheckSettings
from hubploy_dagster.deployment import Hub
from hubploy_dagster.drift import drift_outcome
from hubploy_dagster.health_api import CheckOutcome, check_hub_api, check_test_user, sleep_backoff
from hubploy_dagster.health_cluster import check_release, check_workloads
from hubploy_dagster.keys import release_key
from hubploy_dagster.policy import roll_back
from hubploy_dagster.record import DeployRecord, Fact, Healthy, Release, observation
from hubploy_dagster.resources import TAG_PURPOSE, DeploymentRepoResource, SopsResource
from hubploy_dagster.secrets import decrypted_files
from hubploy_dagster.session import HubSession

BACKOFF_SECONDS = 2.0
CHECK_NAMES = ("release_deployed", "workloads_ready", "hub_api", "test_user_server", "drift")


def enabled_checks(hub: Hub, env: str, watched: bool = False) -> dict[str, CheckSettings]:
    """The checks this hub runs in this environment; the API checks need the environment's URL, and the drift
    check runs where the chain watches the releases (`watch`), after deploys and on its schedule."""
    health = hub.config.health
    candidates = {
        "release_deployed": health.release,
        "workloads_ready": health.workloads,
        "hub_api": health.hub_api,
        "test_user_server": health.test_user,
        "drift": health.drift,
    }
    needs_url = {"hub_api", "test_user_server"}
    return {
        name: settings
        for name, settings in candidates.items()
        if settings.enabled and (hub.url(env) or name not in needs_url) and (watched or name != "drift")
    }


def retried(check: Callable[[], CheckOutcome], settings: CheckSettings) -> CheckOutcome:
    """A cluster check, retried as the API checks are (`sleep_backoff`): new pods take a while to become ready."""
    for attempt in range(1, settings.retries + 2):
        sleep_backoff(attempt, BACKOFF_SECONDS)
        outcome = check()
        if outcome.passed:
            break
    return CheckOutcome(outcome.passed, outcome.description, {**outcome.metadata, "attempts": attempt})


def admin_token(session: HubSession, path: str) -> str | None:
    """The hub's admin service token from its decrypted secrets (the last values file that sets it wins)."""
    snapshot, hub = session.deployment.snapshot, session.hub
    values_files = session.deployment.values_files(hub, session.env)
    files = [(snapshot.describe(f.path), snapshot.read(f.path) or b"") for f in values_files if f.secret]
    token = None
    with decrypted_files(files, session.sops, session.masker, hub.config.secrets.encryption) as paths:
        for path_on_disk in paths:
            value: Any = yaml.safe_load(path_on_disk.read_text()) or {}
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str):
                token = value
    return token


def _metadata(outcome: CheckOutcome) -> dict[str, Any]:
    return {
        key: value if isinstance(value, str | int | float | bool) else dg.MetadataValue.json(value)
        for key, value in outcome.metadata.items()
        if value is not None
    }


def health_check_specs(hub: Hub, env: str, watched: bool = False) -> list[dg.AssetCheckSpec]:
    """The release's checks, as its asset declares them (they run in the releases' step, `health_results`)."""
    key = release_key(hub.name, env)
    return [
        dg.AssetCheckSpec(name, asset=key, blocking=settings.blocking)
        for name, settings in enabled_checks(hub, env, watched).items()
    ]


def health_results(
    context: dg.AssetExecutionContext,
    hub: Hub,
    env: str,
    watched: bool,
    names: list[str],
    deployment_repo: DeploymentRepoResource,
    sops: SopsResource,
) -> Generator[dg.AssetCheckResult | dg.AssetObservation, None, bool]:
    """The checks `names` of the release's latest materialization, then the healthy record or a rollback;
    returns whether every blocking one passed."""
    key = release_key(hub.name, env)
    enabled = enabled_checks(hub, env, watched)
    checks = {name: enabled[name] for name in names}
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        for name in checks:
            yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=False, description="never deployed")
        return not any(settings.blocking for settings in checks.values())
    recorded = Release.of({k: v.value for k, v in event.asset_materialization.metadata.items()})
    session = HubSession.at(deployment_repo.open(), recorded.git_sha, hub.name, env, sops.sops(), context.log.info)
    record = DeployRecord(context.instance)
    ours = record.hubploy_revisions(hub.name, env) if "drift" in checks else set()
    outcomes = run_checks(session, recorded, checks, ours)
    for name, outcome in outcomes.items():
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=name,
            passed=outcome.passed,
            description=session.masker(outcome.description),
            metadata=_metadata(outcome),
            severity=dg.AssetCheckSeverity.WARN if name == "drift" else dg.AssetCheckSeverity.ERROR,
        )
    failed = [name for name, outcome in outcomes.items() if not outcome.passed and checks[name].blocking]
    watching = context.run.tags.get(TAG_PURPOSE) == "watch"  # a hub that broke later is reported, not rolled back
    blocking = {name for name, settings in enabled.items() if settings.blocking}
    if not failed and blocking <= set(checks):  # only a run of every blocking check makes a healthy mark
        fact: Fact = Healthy(recorded.helm_revision, recorded.fingerprint or "", recorded.git_sha)
    elif session.hub.config.rollback == "on-failure" and not watching:
        cause = {"failed_checks": ", ".join(failed)}
        fact = roll_back(record, session, recorded.helm_revision, cause, context.log)
    else:
        return not failed
    yield observation(hub.name, env, fact)
    return not failed


def run_checks(
    session: HubSession, recorded: Release, checks: dict[str, CheckSettings], ours: set[int]
) -> dict[str, CheckOutcome]:
    """`ours`: the helm revisions hubploy made (the drift check names any other as made outside)."""
    namespace, release, log, masker = recorded.namespace, recorded.release, session.log, session.masker
    url = session.hub.url(session.env) or ""
    outcomes: dict[str, CheckOutcome] = {}
    with session.cluster(namespace) as cluster:
        runners: dict[str, Callable[[], CheckOutcome]] = {
            "release_deployed": lambda: retried(
                lambda: check_release(cluster.helm, release, namespace, recorded.helm_revision),
                checks["release_deployed"],
            ),
            "workloads_ready": lambda: retried(
                lambda: check_workloads(cluster.login, release, namespace, checks["workloads_ready"].timeout_seconds),
                checks["workloads_ready"],
            ),
            "hub_api": lambda: check_hub_api(url, checks["hub_api"].timeout_seconds, checks["hub_api"].retries),
            "test_user_server": lambda: user_server_outcome(session, url),
            "drift": lambda: drift_outcome(session, cluster, recorded.helm_revision, ours),
        }
        for name in checks:
            log(f"checking {name} of {release} in {namespace}")
            outcomes[name] = runners[name]()
            log(f"{name}: {'passed' if outcomes[name].passed else 'FAILED'}: {masker(outcomes[name].description)}")
    return outcomes


def user_server_outcome(session: HubSession, url: str) -> CheckOutcome:
    settings = session.hub.config.health.test_user
    token = admin_token(session, settings.token_values_path)
    if token is None:
        return CheckOutcome(
            False, f"no admin token at {settings.token_values_path} in the hub's {session.env} secrets", {}
        )
    return check_test_user(url, token, settings.username, settings.timeout_seconds, settings.retries)
