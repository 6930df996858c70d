"""Health checks after each release, and what their outcome records: a healthy mark, or a rollback.

A deploy is done when the hub works. After a release asset materializes, one check step runs every enabled
check of the hub (`health` in hubploy.yaml): helm's record of the release, the workloads' rollout, the hub
API, and a test user's server. Blocking checks that fail stop the run before prod; when every blocking
check passes, the revision and the hub's configuration fingerprint are recorded as healthy (the deploy
record), which is what rollback returns to and what the promotion gate asks of the next environment.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import yaml

from hubploy_dagster.cloud import cluster_login
from hubploy_dagster.config import CheckSettings
from hubploy_dagster.deployment import Deployment, Hub, load_deployment
from hubploy_dagster.health_api import CheckOutcome, check_hub_api, check_test_user
from hubploy_dagster.health_cluster import check_release, check_workloads
from hubploy_dagster.keys import group_name, release_key
from hubploy_dagster.policy import roll_back
from hubploy_dagster.record import DeployRecord, Fact, Healthy, Release, observation
from hubploy_dagster.resources import DeploymentRepoResource, SopsResource
from hubploy_dagster.secrets import Masker, Sops, decrypted_files

CHECK_NAMES = ("release_deployed", "workloads_ready", "hub_api", "test_user_server")


def enabled_checks(hub: Hub, env: str) -> dict[str, CheckSettings]:
    """The checks this hub runs in this environment; the API checks need the environment's URL."""
    health = hub.config.health
    candidates = {
        "release_deployed": health.release,
        "workloads_ready": health.workloads,
        "hub_api": health.hub_api,
        "test_user_server": health.test_user,
    }
    needs_url = {"hub_api", "test_user_server"}
    return {
        name: settings
        for name, settings in candidates.items()
        if settings.enabled and (hub.url(env) or name not in needs_url)
    }


def retried(check: Callable[[], CheckOutcome], settings: CheckSettings) -> CheckOutcome:
    """Retry a cluster check within its time budget: new pods take a while to become ready."""
    deadline = time.monotonic() + settings.timeout_seconds
    attempt = 0
    while True:
        attempt += 1
        outcome = check()
        if outcome.passed or attempt > settings.retries or time.monotonic() >= deadline:
            return CheckOutcome(outcome.passed, outcome.description, {**outcome.metadata, "attempts": attempt})
        time.sleep(min(2.0 * attempt, max(0.0, deadline - time.monotonic())))


def admin_token(deployment: Deployment, hub: Hub, env: str, path: str, sops: Sops, masker: Masker) -> str | None:
    """The hub's admin service token from its decrypted secrets (the last values file that sets it wins)."""
    snapshot = deployment.snapshot
    files = [
        (snapshot.describe(f.path), snapshot.read(f.path) or b"") for f in deployment.values_files(hub, env) if f.secret
    ]
    token = None
    with decrypted_files(files, sops, masker, hub.config.secrets.encryption) as paths:
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


def release_health_checks(hub: Hub, env: str) -> dg.AssetChecksDefinition | None:
    """One check step for the release: every enabled check, then the healthy record or a rollback."""
    checks = enabled_checks(hub, env)
    if not checks:
        return None
    key = release_key(hub.name, env)
    specs = [dg.AssetCheckSpec(name, asset=key, blocking=settings.blocking) for name, settings in checks.items()]

    @dg.multi_asset_check(specs=specs, name=f"{group_name(hub.name)}__{env}_health", can_subset=True)
    def _health(
        context: dg.AssetCheckExecutionContext, deployment_repo: DeploymentRepoResource, sops: SopsResource
    ) -> Iterator[dg.AssetCheckResult]:
        event = context.instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            for name in checks:
                yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=False, description="never deployed")
            return
        recorded = Release.of({k: v.value for k, v in event.asset_materialization.metadata.items()})
        deployment = load_deployment(deployment_repo.open().snapshot(recorded.git_sha))
        current = deployment.hub(hub.name)
        masker = Masker()
        outcomes = run_checks(context, deployment, current, env, recorded, checks, sops.sops(), masker)
        for name, outcome in outcomes.items():
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=outcome.passed,
                description=masker(outcome.description),
                metadata=_metadata(outcome),
            )
        failed = [name for name, outcome in outcomes.items() if not outcome.passed and checks[name].blocking]
        if not failed:
            fact: Fact = Healthy(recorded.helm_revision, recorded.fingerprint or "", recorded.git_sha)
        elif current.config.rollback == "on-failure":
            cause = {"failed_checks": ", ".join(failed)}
            record = DeployRecord(context.instance)
            fact = roll_back(record, deployment, current, env, recorded.helm_revision, cause, sops.sops(), context.log)
        else:
            return
        context.op_execution_context.log_event(observation(hub.name, env, fact))

    return _health


def run_checks(
    context: dg.AssetCheckExecutionContext,
    deployment: Deployment,
    hub: Hub,
    env: str,
    recorded: Release,
    checks: dict[str, CheckSettings],
    sops: Sops,
    masker: Masker,
) -> dict[str, CheckOutcome]:
    namespace, release = recorded.namespace, recorded.release
    url = hub.url(env) or ""
    outcomes: dict[str, CheckOutcome] = {}
    with cluster_login(hub, deployment.snapshot, namespace, sops, masker) as login:
        helm = login.helm(masker, context.log.info)
        runners: dict[str, Callable[[], CheckOutcome]] = {
            "release_deployed": lambda: retried(
                lambda: check_release(helm, release, namespace, recorded.helm_revision),
                checks["release_deployed"],
            ),
            "workloads_ready": lambda: retried(
                lambda: check_workloads(login, release, namespace), checks["workloads_ready"]
            ),
            "hub_api": lambda: check_hub_api(url, checks["hub_api"].timeout_seconds, checks["hub_api"].retries),
            "test_user_server": lambda: user_server_outcome(deployment, hub, env, url, sops, masker),
        }
        for name in checks:
            context.log.info(f"checking {name} of {release} in {namespace}")
            outcomes[name] = runners[name]()
            context.log.info(
                f"{name}: {'passed' if outcomes[name].passed else 'FAILED'}: {masker(outcomes[name].description)}"
            )
    return outcomes


def user_server_outcome(
    deployment: Deployment, hub: Hub, env: str, url: str, sops: Sops, masker: Masker
) -> CheckOutcome:
    settings = hub.config.health.test_user
    token = admin_token(deployment, hub, env, settings.token_values_path, sops, masker)
    if token is None:
        return CheckOutcome(False, f"no admin token at {settings.token_values_path} in the hub's {env} secrets", {})
    return check_test_user(url, token, settings.username, settings.timeout_seconds, settings.retries)
