"""Operators' decisions about held configurations, from the UI (the CLI has `hubploy release-hold` and `reject`).

The webserver records no user: a job names the run as who decided; the front door's access log names the
person (docs/operations.md).
"""

import dagster as dg
from pydantic import Field

from hubploy_dagster.holds import reject_configuration, release_held_configuration
from hubploy_dagster.record import DeployRecord
from hubploy_dagster.resources import DeploymentRepoResource


class ReleaseHoldConfig(dg.Config):
    hub: str = Field(description="Hub name")
    env: str = Field(description="Environment whose rollback or canary-wave hold is released")
    reason: str = Field(description="Why the held configuration may deploy again")


class RejectConfig(dg.Config):
    hub: str = Field(description="Hub name")
    rev: str = Field(description="A commit or branch holding the configuration to reject")
    reason: str = Field(description="Why it must never deploy")


@dg.op
def release_hold_op(context: dg.OpExecutionContext, config: ReleaseHoldConfig) -> None:
    fact = release_held_configuration(
        DeployRecord(context.instance), config.hub, config.env, f"run {context.run_id}", config.reason
    )
    context.log.info(f"{config.hub} in {config.env}: configuration {fact.fingerprint[:12]} may deploy again")


@dg.op
def reject_configuration_op(
    context: dg.OpExecutionContext, config: RejectConfig, deployment_repo: DeploymentRepoResource
) -> None:
    record = DeployRecord(context.instance)
    fact = reject_configuration(
        record, deployment_repo.open(), config.rev, config.hub, f"run {context.run_id}", config.reason
    )
    context.log.info(f"{config.hub}: configuration {fact.fingerprint[:12]} rejected everywhere")


@dg.job(description="Let a configuration that a rollback or a canary wave held deploy again.")
def release_hold() -> None:
    release_hold_op()


@dg.job(description="Reject a hub's configuration at a commit: it is deployed nowhere, ever.")
def reject() -> None:
    reject_configuration_op()
