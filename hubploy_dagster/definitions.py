"""The code location: one asset group per hub of the deployment repository named by `HUBPLOY_REPO`.

Settings come from the environment: HUBPLOY_REPO (path or git URL), HUBPLOY_BRANCHES (`staging,prod`),
HUBPLOY_SENSOR_INTERVAL (seconds), HUBPLOY_WEBSERVER_URL (for reloads and links), HUBPLOY_WEBHOOK_URL
(failure notifications), HUBPLOY_BUILD_ARGS, SOPS_AGE_KEY_FILE; helm and kubectl read their own (KUBECONFIG...).

Dagster builds the asset graph when the code location loads, so the hubs are read here, once, from the
heads of the watched branches (every hub on staging or prod gets its assets).
"""

from __future__ import annotations

import functools
import os

import dagster as dg

from hubploy_dagster.assets import hub_assets
from hubploy_dagster.deployment import Hub, load_deployment
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.keys import group_name
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.resources import DeploymentRepoResource, DockerEngineResource, SopsResource
from jobs.deploy import deploy_jobs, rollback
from jobs.plan import plan
from sensors.git_sensor import WEBSERVER_ENV, build_git_sensor
from sensors.notify import build_failure_sensor

DEFAULT_BRANCHES = ("staging", "prod")


def hubs_on_branches(repo: DeploymentRepo, branches: tuple[str, ...]) -> list[Hub]:
    """Every valid hub found at the head of any branch (the first branch's config wins for a name)."""
    heads = repo.heads(list(branches))
    revs = [heads[b] for b in branches if b in heads] or ["HEAD"]
    hubs: dict[str, Hub] = {}
    for rev in revs:
        for name, hub in load_deployment(repo.snapshot(rev)).hubs.items():
            hubs.setdefault(name, hub)
    return [hubs[name] for name in sorted(hubs)]


def build_definitions(source: str, branches: tuple[str, ...] = DEFAULT_BRANCHES) -> dg.Definitions:
    hubs = hubs_on_branches(DeploymentRepo(source), branches)
    groups: dict[str, str] = {}
    for hub in hubs:
        other = groups.setdefault(group_name(hub.name), hub.name)
        if other != hub.name:
            raise ConfigError.single(hub.config_path, "", f"hubs {other!r} and {hub.name!r} map to one group name")
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    checks: list[dg.AssetChecksDefinition] = []
    for hub in hubs:
        hub_asset_list, hub_checks = hub_assets(hub)
        assets += hub_asset_list
        checks += hub_checks
    staging_branch, prod_branch = branches[0], branches[-1]
    sensors = [
        build_git_sensor(
            source,
            {"staging": staging_branch, "prod": prod_branch},
            int(os.environ.get("HUBPLOY_SENSOR_INTERVAL", "30")),
        ),
        build_failure_sensor(os.environ.get("HUBPLOY_WEBHOOK_URL"), os.environ.get(WEBSERVER_ENV)),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*deploy_jobs(hubs), rollback, plan],
        sensors=sensors,
        resources=resources_from_environment(source, branches),
        # A deploy's steps run one after the other anyway (image, release, checks); a process per step cost
        # 3-5 s each at start-up for no isolation worth having.
        executor=dg.in_process_executor,
    )


def resources_from_environment(source: str, branches: tuple[str, ...]) -> dict[str, dg.ConfigurableResource]:
    """Resources configured from the environment, so that `make run` and production differ only in variables.

    HUBPLOY_BUILD_ARGS: `KEY=VALUE,...` build arguments for every image (the example sets BASE_IMAGE to a
    locally made base image where the upstream one cannot be pulled); SOPS_AGE_KEY_FILE: the age key.
    """
    build_args = dict(item.split("=", 1) for item in os.environ.get("HUBPLOY_BUILD_ARGS", "").split(",") if "=" in item)
    return {
        "deployment_repo": DeploymentRepoResource(source=source, staging_branch=branches[0], prod_branch=branches[-1]),
        "docker_engine": DockerEngineResource(build_args=build_args),
        "sops": SopsResource(age_key_file=os.environ.get("SOPS_AGE_KEY_FILE")),
    }


def _source_from_environment() -> str:
    source = os.environ.get("HUBPLOY_REPO")
    if not source:
        raise RuntimeError(
            "HUBPLOY_REPO is not set: point it at the deployment repository (a path or a git URL); "
            "`make run` sets it to the bundled example"
        )
    return source


def _branches_from_environment() -> tuple[str, ...]:
    return tuple(os.environ.get("HUBPLOY_BRANCHES", ",".join(DEFAULT_BRANCHES)).split(","))


@dg.definitions
@functools.cache
def defs() -> dg.Definitions:
    """Built once per process: Dagster calls this twice when a code server starts (4 s each at 300 hubs).

    A reload of the code location starts a new process, so new hubs are still picked up.
    """
    return build_definitions(_source_from_environment(), _branches_from_environment())
