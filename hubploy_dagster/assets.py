"""The per-hub asset graph: `<hub>/image` -> one release per environment of the chain, one group per hub.

The graph is built from the hubs the deployment repository holds when the code location loads; the keys
read as the operator thinks of them ("datahub / staging"), and the lineage is the promotion path. A hub
without an `images` block (hubploy 1.2: the image pinned in its values) has no image asset: its first
release deploys what its values pin.
"""

import json
from collections.abc import Generator, Iterator
from typing import Any

import dagster as dg

from hubploy_dagster.build import BuildRequest, build_hub_images
from hubploy_dagster.chain import Chain
from hubploy_dagster.checks import admin_token, health_check_specs, health_results
from hubploy_dagster.cloud import registry_login
from hubploy_dagster.config import IdleWait
from hubploy_dagster.deployment import Hub, load_deployment
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.idle import wait_for_idle
from hubploy_dagster.images import BuildOptions, ImageResult
from hubploy_dagster.keys import group_name, hub_pool, image_key, release_key
from hubploy_dagster.policy import deploy_window, held, promotion, record_holds, roll_back, soaking
from hubploy_dagster.queue_wait import queue_wait
from hubploy_dagster.record import DeployRecord, Superseded, observation, release_record_metadata
from hubploy_dagster.registry import RegistryAuthError, RegistryClient, RegistryError
from hubploy_dagster.release import DeployOptions, UpgradeFailedError, deploy_hub
from hubploy_dagster.resources import (
    TAG_PROMOTION_OVERRIDE,
    DeploymentRepoResource,
    DockerEngineResource,
    SopsResource,
)
from hubploy_dagster.rollout import hub_rollout
from hubploy_dagster.secrets import Masker
from hubploy_dagster.session import HubSession
from hubploy_dagster.superseded import superseding_run

TRANSIENT_RETRIES = 2
TRANSIENT_RETRY_SECONDS = 5


def image_metadata(sha: str, results: list[ImageResult]) -> dict[str, Any]:
    return {
        "git_sha": sha,
        "image": ", ".join(r.reference for r in results),
        "tag": ", ".join(r.tag for r in results),
        "digest": ", ".join(r.digest or "" for r in results),
        "built": any(r.built for r in results),
        "build_seconds": round(sum(r.build_seconds for r in results), 3),
        "cache_from": ", ".join(r.cache_from for r in results if r.cache_from) or "none",
        "images": dg.MetadataValue.json(
            [
                {"image": r.image, "tag": r.tag, "digest": r.digest, "built": r.built, "cache_from": r.cache_from}
                for r in results
            ]
        ),
    }


def image_asset(hub: Hub, chain: Chain) -> dg.AssetsDefinition:
    """The hub's images and their `image_in_registry` check, in one step (one op per hub's image: the code
    location's load and snapshot grow with the ops, issue 16); either runs alone when selected alone."""
    key = image_key(hub.name)
    spec = dg.AssetSpec(
        key,
        group_name=group_name(hub.name),
        kinds={"docker"},
        description=f"The user image(s) of hub {hub.name}, tagged by the last commit touching the image folder.",
        metadata={"hub_path": hub.path, "images": [image.name for image in hub.images()]},
    )
    check = dg.AssetCheckSpec("image_in_registry", asset=key, blocking=True)

    @dg.multi_asset(
        specs=[spec],
        check_specs=[check],
        name=f"{group_name(hub.name)}__image",
        pool=hub_pool(hub.name),
        can_subset=True,
    )
    def _image(
        context: dg.AssetExecutionContext,
        deployment_repo: DeploymentRepoResource,
        docker_engine: DockerEngineResource,
        sops: SopsResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        if key in context.selected_asset_keys:
            yield build_image(context, hub, chain.first, deployment_repo, docker_engine, sops)
        if context.selected_asset_check_keys:
            yield image_in_registry(context, hub, deployment_repo, sops)

    return _image


def build_image(
    context: dg.AssetExecutionContext,
    hub: Hub,
    env: str,
    deployment_repo: DeploymentRepoResource,
    docker_engine: DockerEngineResource,
    sops: SopsResource,
) -> dg.MaterializeResult:
    """Builds and pushes the hub's images at the run's commit, unless the registry already has their tags."""
    repo = deployment_repo.open()
    sha = deployment_repo.pinned_commit(context, env)
    deployment = load_deployment(repo.snapshot(sha))
    options = BuildOptions(no_cache=docker_engine.no_cache, build_args=docker_engine.build_args)
    try:
        results = build_hub_images(
            repo,
            deployment,
            deployment.hub(hub.name),
            docker_engine.client(),
            sops.sops(),
            BuildRequest(options),
            context.log.info,
        )
    except RegistryAuthError:
        raise  # wrong credentials do not get better by waiting
    except RegistryError as exc:  # down or unreachable: transient, so the step is retried
        context.log.warning(f"{exc}: retrying in {TRANSIENT_RETRY_SECONDS}s")
        raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=TRANSIENT_RETRY_SECONDS) from exc
    return dg.MaterializeResult(
        asset_key=image_key(hub.name),
        metadata=image_metadata(sha, results),
        data_version=dg.DataVersion(",".join(r.tag for r in results)),
    )


def image_in_registry(
    context: dg.AssetExecutionContext, hub: Hub, deployment_repo: DeploymentRepoResource, sops: SopsResource
) -> dg.AssetCheckResult:
    """The tags the latest materialization recorded are in the registry, with the digests it recorded."""
    key = image_key(hub.name)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(
            asset_key=key, check_name="image_in_registry", passed=False, description="the image was never materialized"
        )
    metadata = event.asset_materialization.metadata
    recorded = metadata["images"].value
    deployment = load_deployment(deployment_repo.open().snapshot(str(metadata["git_sha"].value)))
    with registry_login(deployment.hub(hub.name), deployment.snapshot, sops.sops(), Masker()) as login:
        registry = RegistryClient(login.credentials)
        found = {f"{i['image']}:{i['tag']}": registry.manifest_digest(i["image"], i["tag"]) for i in recorded}
    expected = {f"{i['image']}:{i['tag']}": i["digest"] for i in recorded}
    missing = sorted(ref for ref, digest in found.items() if digest is None or digest != expected[ref])
    return dg.AssetCheckResult(
        asset_key=key,
        check_name="image_in_registry",
        passed=not missing,
        description=f"not in the registry as recorded: {', '.join(missing)}" if missing else None,
        metadata={"images": dg.MetadataValue.json(json.loads(json.dumps(found)))},
    )


def upstream_key(hub: Hub, chain: Chain, env: str) -> dg.AssetKey | None:
    """What a release deploys: the environment before's release, or for the first the hub's image (if any)."""
    before = chain.before(env)
    if before is not None:
        return release_key(hub.name, before)
    return image_key(hub.name) if hub.images() else None


def wait_for_users(context: dg.AssetExecutionContext, session: HubSession, wait: IdleWait) -> dict[str, Any]:
    """`wait_for_idle`: before the upgrade, wait until the hub's users have left; the metadata the release records.

    The hub is asked at its `url` with the admin service token the test-user check uses; a first install (no
    release yet) has nobody to wait for.
    """
    hub, env = session.hub, session.env
    snapshot = session.deployment.snapshot
    why = f"wait_for_idle is set for hub {hub.name} in {env}, and asking the hub how many user servers run needs"
    url = hub.url(env)
    if not url:
        raise ConfigError.single(snapshot.describe(hub.config_path), f"environments.{env}.url", f"{why} its URL")
    path = hub.config.health.test_user.token_values_path
    token = admin_token(session, path)
    if not token:
        secrets = [snapshot.describe(f.path) for f in session.deployment.values_files(hub, env) if f.secret]
        where = ", ".join(secrets) or f"{hub.path}/secrets/{env}.yaml (no such file)"
        raise ConfigError.single(
            where, path, f"{why} the admin service token there (health.test_user.token_values_path in hubploy.yaml)"
        )
    with session.cluster() as cluster:
        installed = cluster.helm.status(session.release, session.namespace) is not None
    if not installed:
        context.log.info(
            f"not waiting for users to leave: {session.release} is not installed in {session.namespace} yet "
            "(a first install has no hub to ask)"
        )
        return {"idle_wait": "skipped: first install"}
    context.log.info(f"waiting for users of {hub.name} in {env} to leave before the upgrade (wait_for_idle)")
    return wait_for_idle(url, token, wait, context.log.info).metadata()


def release_spec(hub: Hub, chain: Chain, env: str) -> dg.AssetSpec:
    """The hub's Helm release in one environment: after the environment before's (or the image), skippable (a
    refused promotion or a hold materializes nothing)."""
    key = release_key(hub.name, env)
    return dg.AssetSpec(
        key,
        deps=[upstream] if (upstream := upstream_key(hub, chain, env)) else [],
        group_name=group_name(hub.name),
        kinds={"helm", "kubernetes"},
        skippable=True,
        description=f"The {env} Helm release of hub {hub.name}.",
        metadata={
            "release": hub.release_name(env),
            "namespace": hub.namespace(env),
            **({"url": dg.MetadataValue.url(hub.url(env) or "")} if hub.url(env) else {}),
        },
    )


def release_assets(hub: Hub, chain: Chain) -> dg.AssetsDefinition:
    """Every release of the hub, with its health checks, in one step: the selected environments in the chain's
    order, each release checked before the next deploys.

    One op for all of a hub's releases keeps the code location's load and snapshot small at hundreds of hubs
    (issue 16); subsetting keeps each run to what it selected: a sensor's deploy (one release and its checks), a
    check-only run (the watch sensor's, a soak's end), or the UI's choice.
    """
    specs = [release_spec(hub, chain, env) for env in chain.names]
    check_specs = [spec for env in chain.names for spec in health_check_specs(hub, env, env in chain.watch)]

    @dg.multi_asset(
        specs=specs,
        check_specs=check_specs,
        name=f"{group_name(hub.name)}__releases",
        pool=hub_pool(hub.name),
        can_subset=True,
    )
    def _releases(
        context: dg.AssetExecutionContext, deployment_repo: DeploymentRepoResource, sops: SopsResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult | dg.AssetObservation]:
        blocked = False  # a release that did not deploy, or failed blocking checks: no later release deploys
        queued = queue_wait(context.instance, context.run) if context.selected_asset_keys else {}
        if queued:
            context.log.info(f"waited {queued['queued_seconds']}s in the run queue: {queued['queued_behind']}")
        for env in chain.names:
            key = release_key(hub.name, env)
            deploying = key in context.selected_asset_keys
            if deploying and (
                blocked or not (yield from release_events(context, hub, chain, env, queued, deployment_repo, sops))
            ):
                blocked = True
                continue  # nor are its checks run (as Dagster skips a step whose asset did not materialize)
            names = [check.name for check in context.selected_asset_check_keys if check.asset_key == key]
            if names:
                watched = env in chain.watch
                blocked |= not (yield from health_results(context, hub, env, watched, names, deployment_repo, sops))

    return _releases


def release_events(
    context: dg.AssetExecutionContext,
    hub: Hub,
    chain: Chain,
    env: str,
    queued: dict[str, Any],
    deployment_repo: DeploymentRepoResource,
    sops: SopsResource,
) -> Generator[dg.MaterializeResult | dg.AssetObservation, None, bool]:
    """`helm upgrade --install` of the hub in one environment at the run's commit; returns whether it deployed.

    Past the first environment, the promotion gate (`policy.promotion`) decides whether it deploys. `queued`:
    the run's wait in the queue (`queue_wait`), recorded with the release.
    """
    repo = deployment_repo.open()
    sha = deployment_repo.pinned_commit(context, env)
    session = HubSession.at(repo, sha, hub.name, env, sops.sops(), context.log.info)
    fingerprint = session.deployment.fingerprint(session.hub)
    newer = superseding_run(context.instance, context.run, hub.name, env)
    if newer is not None:
        context.log.warning(
            f"this automatic retry stands down: run {newer.run_id}, requested later, deploys {hub.name} to {env}"
        )
        yield observation(hub.name, env, Superseded(newer.run_id, sha))
        return False
    record = DeployRecord(context.instance)
    override = context.run.tags.get(TAG_PROMOTION_OVERRIDE)
    soak = soaking(record, chain, env, {hub.name: session.hub}, {hub.name: fingerprint}).get(hub.name)
    gate = promotion(record, chain.before(env), hub.name, sha, fingerprint, override, soak)
    if gate.refused:
        context.log.warning(
            f"not promoting to {env}: {gate.refused.reason} (run tag {TAG_PROMOTION_OVERRIDE} overrides)"
        )
        yield observation(hub.name, env, gate.refused)
        return False
    if gate.overridden:
        context.log.warning(f"promoting to {env} although {gate.overridden}: overridden by run tag ({override})")
    rollout = hub_rollout(chain, session.hub, env)
    rejected = record_holds(record, env, {hub.name: fingerprint}).get(hub.name)
    if rejected is not None and rejected.kind == "rejected":
        context.log.warning(f"not deploying {hub.name} to {env}: {rejected.reason}")
        yield observation(hub.name, env, held(rejected, sha))
        return False
    window = deploy_window(context, rollout, hub.name, env, sha)
    if window is None:
        return False
    idle = wait_for_users(context, session, rollout.wait_for_idle) if rollout.wait_for_idle else {}
    try:
        result = deploy_hub(session, DeployOptions(check_registry=True))
    except UpgradeFailedError:
        if session.hub.config.rollback == "on-failure":
            # yielded, not logged: the step's failure would drop a logged event
            cause = {"failed_upgrade": f"helm upgrade of {session.release}"}
            yield observation(hub.name, env, roll_back(record, session, None, cause, context.log))
        raise
    metadata = release_record_metadata(
        result, repo, context.run.run_id, fingerprint, **gate.metadata, **window, **idle, **queued
    )
    yield dg.MaterializeResult(
        asset_key=release_key(hub.name, env), metadata=metadata, data_version=dg.DataVersion(fingerprint)
    )
    return True


def hub_assets(hub: Hub, chain: Chain) -> list[dg.AssetsDefinition]:
    """Everything one hub contributes to the code location: its image (if it has one) and its releases."""
    return [*([image_asset(hub, chain)] if hub.images() else []), release_assets(hub, chain)]
