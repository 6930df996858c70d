"""Dagster resources: the deployment repository, the Docker engine, sops; and the commit a run is pinned to.

A run deploys exactly one commit. Whoever requests the run (the git sensor, the CLI, an operator in the UI)
pins it with the `git_sha` run tag; a run launched without one pins the branch head once, at its start,
and records it, so every asset of the run sees the same commit.
"""

from __future__ import annotations

import dagster as dg
import docker
from pydantic import Field

from hubploy_dagster.chain import DEFAULT_ENVIRONMENTS
from hubploy_dagster.errors import HubployError
from hubploy_dagster.images import docker_client
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Sops

TAG_HUB = "hub"
TAG_ENV = "env"
TAG_GIT_SHA = "git_sha"
TAG_BRANCH = "branch"
TAG_PROMOTION_OVERRIDE = "promotion_override"  # its value: who overrode the gate and why
TAG_WINDOW_OVERRIDE = "window_override"  # its value: who deployed outside the deploy windows and why
TAG_CLUSTER = "cluster"  # the hub's cluster (Hub.cluster): dagster.yaml limits deploys per cluster by it
TAG_SENSOR = "dagster/sensor_name"  # set by the daemon on every run a sensor requests
TAG_PURPOSE = "purpose"  # `watch`: the scheduled checks of a deployed release (sensors/watch.py), never a rollback


class DeploymentRepoResource(dg.ConfigurableResource):
    """The deployment repository (a path or a git URL) and the branch each environment of its chain follows."""

    source: str = Field(description="Path or git URL of the deployment repository")
    env_branches: dict[str, str] = Field(
        default={env: env for env in DEFAULT_ENVIRONMENTS},
        description="Environment -> the branch it follows, in promotion order (the repository's chain)",
    )

    def open(self) -> DeploymentRepo:
        return DeploymentRepo(self.source)

    def branch(self, env: str) -> str:
        if env not in self.env_branches:
            raise HubployError(f"environment {env!r} is not one of {', '.join(self.env_branches)}")
        return self.env_branches[env]

    def pinned_commit(self, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, env: str) -> str:
        repo = self.open()
        pinned = context.run.tags.get(TAG_GIT_SHA)
        if pinned:
            return repo.resolve(pinned)
        branch = self.branch(env)
        head = repo.heads([branch]).get(branch)
        if head is None:
            raise HubployError(f"the run has no {TAG_GIT_SHA} tag and {self.source} has no branch {branch!r}")
        sha = repo.resolve(head)
        context.log.info(f"no {TAG_GIT_SHA} run tag: pinned {sha} (head of {branch})")
        return sha


class DockerEngineResource(dg.ConfigurableResource):
    """The Docker engine images are built with (DOCKER_HOST, else the local socket)."""

    base_url: str | None = Field(None, description="Engine address; default: DOCKER_HOST or the local socket")
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Build arguments for every image, e.g. BASE_IMAGE for a local base image"
    )
    no_cache: bool = False

    def client(self) -> docker.DockerClient:
        return docker_client(self.base_url)


class SopsResource(dg.ConfigurableResource):
    """How secrets are decrypted: sops with an age key file (None: sops' own environment and defaults)."""

    age_key_file: str | None = None

    def sops(self) -> Sops:
        return Sops(age_key_file=self.age_key_file)
