"""What an operator decides about held configurations: let a held one deploy again, or reject one.

After a rollback the sensor does not deploy the rolled-back configuration of that hub and environment again
(`policy.record_holds`) until its configuration changes or an operator releases the hold; a canary that failed
its checks holds the later waves of its change the same way (`policy.wave_holds`), and releasing a held hub
resumes it. A rejected configuration is deployed nowhere, by the sensor or by hand. Each decision is a fact on
the hub's release assets, with who made it and why, so the UI and `hubploy history` show them. The
`hubploy release-hold` and `hubploy reject` commands and the jobs of the same names (jobs/holds.py) call these.
"""

from __future__ import annotations

from hubploy_dagster.chain import load_chain
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.errors import HubployError
from hubploy_dagster.record import DeployRecord, Fact, Held, HoldReleased, Rejected, Rollback, observation
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.settings import current


def release_held_configuration(record: DeployRecord, hub: str, env: str, by: str, reason: str) -> HoldReleased:
    """Let the configuration that the newest rollback or canary-wave hold of `hub` in `env` holds deploy again."""
    holding = next((fingerprint for _, fact in record.facts(hub, env) if (fingerprint := releasable(fact))), None)
    if holding is None:
        raise HubployError(
            f"no rollback or canary wave of hub {hub} in {env} holds a configuration: nothing to release"
        )
    fact = HoldReleased(holding, by, reason)
    record.instance.report_runless_asset_event(observation(hub, env, fact))
    return fact


def releasable(fact: Fact) -> str:
    """The configuration a fact holds until an operator releases it ("" for none)."""
    if isinstance(fact, Rollback) or (isinstance(fact, Held) and fact.kind == "wave"):
        return fact.fingerprint
    return ""


def reject_configuration(
    record: DeployRecord, repo: DeploymentRepo, rev: str, hub: str, by: str, reason: str
) -> Rejected:
    """Reject the configuration `hub` has at `rev`, in every environment of the repository's chain there."""
    snapshot = repo.snapshot(rev)
    deployment = load_deployment(snapshot)
    fact = Rejected(deployment.fingerprint(deployment.hub(hub)), by, reason)
    for env in load_chain(snapshot, current().branches).names:
        record.instance.report_runless_asset_event(observation(hub, env, fact))
    return fact
