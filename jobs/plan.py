"""The `plan` job: `hubploy plan` as a Dagster run, its result readable in the UI.

The plan is attached as metadata of the op's output (`context.add_output_metadata`), not as an
AssetObservation of the hubs' release assets: a plan changes nothing, and an observation would put a
hypothetical state into each release's history, where the sensor, the promotion gate and the deploy audit
read what was really deployed. Output metadata belongs to this run only, and the UI shows it (markdown,
one diff per hub) on the run's step.
"""

import dagster as dg
from pydantic import Field

from hubploy_dagster.plan import branch_head, plan_deploy
from hubploy_dagster.resources import DeploymentRepoResource, SopsResource


class PlanConfig(dg.Config):
    env: str = Field("staging", description="Environment to plan (one of the repository's chain)")
    from_rev: str | None = Field(None, description="Plan the hubs changed since this commit (default: every hub)")
    to_rev: str | None = Field(None, description="Commit to plan (default: the head of the environment's branch)")


@dg.op
def plan_hubs(
    context: dg.OpExecutionContext, config: PlanConfig, deployment_repo: DeploymentRepoResource, sops: SopsResource
) -> dict:
    repo = deployment_repo.open()
    new = repo.resolve(config.to_rev) if config.to_rev else branch_head(repo, deployment_repo.branch(config.env))
    result = plan_deploy(repo, config.env, new, config.from_rev, sops.sops(), context.log.info)
    for line in result.summary():
        context.log.info(line)
    context.add_output_metadata(
        {
            "plan": dg.MetadataValue.md(result.to_markdown()),
            "git_sha": new,
            "hubs": ", ".join(h.hub for h in result.hubs),
            "images_to_build": ", ".join(result.to_build),
        }
    )
    return result.to_json()


@dg.job(description="What a deploy of an environment would change: per hub, the diff of its Kubernetes resources.")
def plan() -> None:
    plan_hubs()
