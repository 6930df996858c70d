"""`hubploy build` for one hub at one commit: the code the image asset and the CLI both run.

Registry credentials are taken for the hub's registry only while its images are checked, built and pushed;
every log line passes through the masker first, so a credential can never reach a log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import docker

from hubploy_dagster.cloud import registry_login
from hubploy_dagster.deployment import Deployment, Hub
from hubploy_dagster.errors import HubployError
from hubploy_dagster.images import BuildOptions, ImageBuilder, ImageResult, earlier_tags, recipe_for
from hubploy_dagster.registry import RegistryClient
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Masker, Sops
from hubploy_dagster.tags import hub_image_tags


@dataclass(frozen=True)
class BuildRequest:
    """What `hubploy build` decides: which images, and whether the registry or a commit range says to build."""

    options: BuildOptions = field(default_factory=BuildOptions)
    only_images: list[str] = field(default_factory=list)
    commit_range: str | None = None


def folder_changed_in_range(repo: DeploymentRepo, commit_range: str, folder: str) -> bool:
    """hubploy's `--commit-range`: `git diff --name-only <range> -- <folder>` is not empty."""
    return bool(repo.git_repo.git.diff("--name-only", commit_range, "--", folder).strip())


def build_hub_images(
    repo: DeploymentRepo,
    deployment: Deployment,
    hub: Hub,
    docker_client: docker.DockerClient,
    sops: Sops,
    plan: BuildRequest,
    log: Callable[[str], None],
    masker: Masker | None = None,
) -> list[ImageResult]:
    masker = masker or Masker()
    images = [i for i in hub.images() if not plan.only_images or i.name in plan.only_images]
    if not images:
        wanted = ", ".join(plan.only_images) or "any"
        raise HubployError(f"hub {hub.name} has no image matching {wanted} at {deployment.sha[:7]}")
    tagged = hub_image_tags(repo, deployment, hub, images)
    results = []
    with registry_login(hub, deployment.snapshot, sops, masker) as login:
        registry = RegistryClient(login.credentials)
        builder = ImageBuilder(docker_client, registry, login.auth_config, lambda s: log(masker(s)))
        for image, folder, tag in tagged:
            if plan.commit_range and not folder_changed_in_range(repo, plan.commit_range, folder):
                log(f"{folder} did not change in {plan.commit_range}: not building {image.name}:{tag}")
                continue
            recipe = recipe_for(repo, deployment.snapshot, image, folder)
            cache = earlier_tags(repo, deployment.sha, folder)
            results.append(builder.ensure(image.name, tag, recipe, cache, plan.options))
    return results
