"""The rollback job: an operator returns one hub's release to a revision.

Deploying or building by hand needs no job of its own: select the assets in the UI (a hub's group, or every
`<hub>/<env>` of an environment) and materialize them; the run pins the head of each environment's branch.
Thin by design: the job runs the library's `helm rollback` with the hub's cluster login.
"""

import dagster as dg
from pydantic import Field

from hubploy_dagster.record import DeployRecord, Rollback, observation
from hubploy_dagster.resources import DeploymentRepoResource, SopsResource
from hubploy_dagster.rollback import helm_rollback
from hubploy_dagster.session import HubSession


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
    replaced = DeployRecord(context.instance).deployed_fingerprints([config.hub], config.env).get(config.hub, "")
    new_revision = helm_rollback(session, config.revision)
    manual = Rollback("manual", to_revision=config.revision, new_revision=new_revision, fingerprint=replaced)
    context.log_event(observation(config.hub, config.env, manual))


@dg.job(description="helm rollback of one hub's release to a revision, recorded on the release asset.")
def rollback() -> None:
    rollback_hub()
