"""Jobs an operator launches by hand: deploy an environment, build images, roll a hub back.

Thin by design: the asset jobs select the per-hub assets the library defines (pick hubs in the launchpad
with an asset subset); the rollback job runs the library's `helm rollback` with the hub's cluster login.
"""

import dagster as dg
from pydantic import Field

from hubploy_dagster.chain import Chain
from hubploy_dagster.deployment import Hub
from hubploy_dagster.keys import image_key, release_key
from hubploy_dagster.record import Rollback, observation
from hubploy_dagster.resources import DeploymentRepoResource, SopsResource
from hubploy_dagster.rollback import helm_rollback
from hubploy_dagster.session import HubSession


def deploy_jobs(hubs: list[Hub], chain: Chain) -> list:
    """`deploy_<env>` for each environment of the chain, and `build_images`."""
    imaged = [hub for hub in hubs if hub.images()]
    jobs = []
    for env in chain.names:
        before = chain.before(env)
        images = [image_key(hub.name) for hub in imaged] if before is None else []
        jobs.append(
            dg.define_asset_job(
                f"deploy_{env}",
                selection=dg.AssetSelection.assets(*images, *(release_key(hub.name, env) for hub in hubs)),
                description=(
                    f"Build (when needed) and deploy the selected hubs to {env}, then check them."
                    if before is None
                    else f"Promote the selected hubs to {env} (only configurations that passed {before})."
                ),
            )
        )
    build = dg.AssetSelection.assets(*(image_key(hub.name) for hub in imaged)).without_checks()
    description = "Build and push the selected hubs' images when their tags are not in the registry."
    return [*jobs, dg.define_asset_job("build_images", selection=build, description=description)]


class RollbackConfig(dg.Config):
    hub: str = Field(description="Hub name")
    env: str = Field(description="Environment (one of the repository's chain, e.g. staging or prod)")
    revision: int = Field(description="helm revision to return to (see `helm history` or the release's metadata)")


@dg.op
def rollback_hub(
    context: dg.OpExecutionContext, config: RollbackConfig, deployment_repo: DeploymentRepoResource, sops: SopsResource
) -> None:
    repo = deployment_repo.open()
    sha = repo.resolve(deployment_repo.branch(config.env))
    session = HubSession.at(repo, sha, config.hub, config.env, sops.sops(), context.log.info)
    new_revision = helm_rollback(session, config.revision)
    manual = Rollback("manual", to_revision=config.revision, new_revision=new_revision)
    context.log_event(observation(config.hub, config.env, manual))


@dg.job(description="helm rollback of one hub's release to a revision, recorded on the release asset.")
def rollback() -> None:
    rollback_hub()
