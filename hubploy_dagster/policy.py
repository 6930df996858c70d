"""The two decisions a deploy asks of its history: may this configuration be promoted, and where does a
failed release roll back to.

The promotion gate: past the first environment, a hub's configuration (compared by content, its
fingerprint) deploys only once it was healthy in the environment before; a run tag overrides the gate, and
the override is recorded with the release. Rollback returns to the newest healthy revision older than the
failed one. The sensor, the release asset, the checks and the jobs all ask here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from hubploy_dagster.lineage import promoted_from
from hubploy_dagster.record import PROMOTION_OVERRIDE, DeployRecord, RefusedPromotion, Rollback
from hubploy_dagster.rollback import helm_rollback
from hubploy_dagster.session import HubSession


@dataclass(frozen=True)
class Promotion:
    """The gate's answer for one release: deploy (with what to record about it), or refuse (and why)."""

    refused: RefusedPromotion | None
    metadata: dict[str, Any]
    overridden: str = ""  # why the gate would have refused, when a run tag overrode it


def promotion(
    record: DeployRecord, before: str | None, hub: str, sha: str, fingerprint: str, override: str | None
) -> Promotion:
    """Whether `hub` at `sha` may deploy to the environment after `before` (the chain's `before(env)`; None:
    the first environment, never gated); the release metadata links the healthy release it promotes."""
    if before is None:
        return Promotion(None, {})
    passed = record.healthy_mark(hub, before, fingerprint)
    if passed is not None:
        return Promotion(None, promoted_from(record.release_before(hub, before, passed.storage_id), passed))
    reason = f"hub {hub} at {sha[:7]} (configuration {fingerprint[:12]}) never passed its {before} checks"
    if override:
        return Promotion(None, {PROMOTION_OVERRIDE: override}, overridden=reason)
    return Promotion(RefusedPromotion(reason, sha, fingerprint), {})


def awaiting_promotion(
    record: DeployRecord, before: str | None, hubs: list[str], fingerprints: dict[str, str]
) -> list[str]:
    """The hubs whose configuration the gate would refuse after `before` today: the sensor asks for them later.

    Asking for a promotion only once the environment before is healthy, rather than trusting that a run
    queued first also finishes first, keeps a retried or slow run from leaving its promotion refused and never
    asked for again.
    """
    if before is None:
        return []
    return [hub for hub in hubs if record.healthy_mark(hub, before, fingerprints[hub]) is None]


def roll_back(
    record: DeployRecord, session: HubSession, bad: int | None, cause: dict[str, str], log: dg.DagsterLogManager
) -> Rollback:
    """`helm rollback` to the newest healthy revision older than `bad` (None: the newest healthy one).

    Returns the fact to record: the revisions and the cause (failed checks, or a failed upgrade), or that
    there was nothing healthy to return to.
    """
    release = session.release
    reason = ", ".join(f"{k}: {v}" for k, v in cause.items())
    target = record.healthy_revision(session.hub.name, session.env, bad)
    if target is None:
        log.error(f"{release}: {reason}, and no earlier revision was healthy: nothing to roll back to")
        return Rollback("impossible", from_revision=bad, cause=cause)
    log.warning(f"{release}: {reason}: rolling back from {bad or 'the failed revision'} to {target}")
    new_revision = helm_rollback(session, target)
    return Rollback("done", from_revision=bad, to_revision=target, new_revision=new_revision, cause=cause)
