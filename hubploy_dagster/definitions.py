"""The code location: one asset group per hub of the deployment repository named by `HUBPLOY_REPO`.

Its settings (`hubploy_dagster.settings`: HUBPLOY_REPO, HUBPLOY_BRANCHES, HUBPLOY_SENSOR_INTERVAL,
HUBPLOY_WEBSERVER_URL, HUBPLOY_WEBHOOK_URL, HUBPLOY_BUILD_ARGS, SOPS_AGE_KEY_FILE...) are read once, when the
code location loads, and passed to the sensors and resources; helm and kubectl read their own (KUBECONFIG...).

Dagster builds the asset graph when the code location loads, so the chain of environments (read at the
repository's HEAD: `hubploy-environments.yaml`, or staging -> prod) and the hubs (from the heads of the
chain's branches: every hub on any of them gets its assets) are read here, once; a reload re-reads them.
"""

from __future__ import annotations

import functools
import gc

import dagster as dg

from hubploy_dagster.assets import hub_assets
from hubploy_dagster.chain import Chain, repository_chain
from hubploy_dagster.deployment import Hub, load_deployment
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.keys import group_name
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.resources import DeploymentRepoResource, DockerEngineResource, SopsResource
from hubploy_dagster.run_worker import hubs_of_this_run
from hubploy_dagster.settings import Settings, current
from jobs.deploy import rollback
from jobs.holds import reject, release_hold
from jobs.plan import plan
from sensors.git_sensor import build_git_sensor
from sensors.notify import build_event_notifier, build_failure_sensor
from sensors.watch import build_watch_sensor


def hubs_on_branches(repo: DeploymentRepo, branches: list[str], only: set[str] | None = None) -> list[Hub]:
    """Every valid hub found at the head of any branch (the first branch's config wins for a name)."""
    heads = repo.heads(list(branches))
    revs = [heads[b] for b in branches if b in heads] or ["HEAD"]
    hubs: dict[str, Hub] = {}
    for rev in revs:
        for name, hub in load_deployment(repo.snapshot(rev), only).hubs.items():
            hubs.setdefault(name, hub)
    return [hubs[name] for name in sorted(hubs)]


def build_definitions(
    source: str, settings: Settings | None = None, only_hubs: set[str] | None = None
) -> dg.Definitions:
    """The definitions for the deployment repository at `source` (default settings: the environment's); with
    `only_hubs`, the assets of those hubs only (what a run worker executes, `run_worker.py`)."""
    settings = settings or current()
    repo = DeploymentRepo(source)
    chain = repository_chain(repo, settings.branches)
    hubs = hubs_on_branches(repo, list(chain.branches.values()), only_hubs)
    groups: dict[str, str] = {}
    for hub in hubs:
        other = groups.setdefault(group_name(hub.name), hub.name)
        if other != hub.name:
            raise ConfigError.single(hub.config_path, "", f"hubs {other!r} and {hub.name!r} map to one group name")
    assets = [definition for hub in hubs for definition in hub_assets(hub, chain)]
    owners = {hub.name: hub.config.owners for hub in hubs}
    sensors = [
        build_git_sensor(source, chain, settings.sensor_interval),
        build_failure_sensor(settings.webhook_url, settings.webserver_url, owners),
        build_event_notifier(settings.webhook_url, owners, settings.sensor_interval),
        *([build_watch_sensor(chain)] if chain.watch else []),
    ]
    return dg.Definitions(
        assets=assets,
        # No job spanning every hub (each would be a copy of the whole graph in the snapshot): the sensor and
        # the UI run the code location's own asset job with the assets they select.
        jobs=[rollback, plan, release_hold, reject],
        sensors=sensors,
        resources=resources_from_settings(source, settings, chain),
        # A deploy's steps run one after the other anyway (image, release, checks); a process per step cost
        # 3-5 s each at start-up for no isolation worth having.
        executor=dg.in_process_executor,
    )


def resources_from_settings(source: str, settings: Settings, chain: Chain) -> dict[str, dg.ConfigurableResource]:
    """Resources configured from the settings, so that `make run` and production differ only in variables.

    HUBPLOY_BUILD_ARGS: build arguments for every image (the example sets BASE_IMAGE to a locally made base
    image where the upstream one cannot be pulled); SOPS_AGE_KEY_FILE: the age key.
    """
    age_key_file = settings.sops_age_key_file
    return {
        "deployment_repo": DeploymentRepoResource(source=source, env_branches=chain.branches),
        "docker_engine": DockerEngineResource(build_args=settings.build_args),
        "sops": SopsResource(age_key_file=str(age_key_file) if age_key_file else None),
    }


@dg.definitions
@functools.cache
def defs() -> dg.Definitions:
    """Built once per process: Dagster calls this twice when a code server starts (4 s each at 300 hubs).

    A reload of the code location starts a new process, so new hubs are still picked up.
    """
    settings = current()
    definitions = build_definitions(settings.require_repo(), settings, only_hubs=hubs_of_this_run())
    definitions.get_repository_def()  # resolved now (cached), so that the freeze below covers it too
    # Everything the load made lives as long as the process: frozen, no garbage collection walks it again,
    # not even the one at interpreter exit (0.6 s of every code server and run worker at 300 hubs).
    gc.freeze()
    return definitions
