"""The decisions a deploy asks of its history: may this configuration be promoted, may the release change
now (deploy windows), and where does a failed release roll back to.

The promotion gate: past the first environment, a hub's configuration (compared by content, its
fingerprint) deploys only once it was healthy in the environment before; a run tag overrides the gate, and
the override is recorded with the release. Outside its deploy windows a release does not change: the sensor
asks for nothing until the hold ends, a run launched by hand is refused unless a run tag overrides it (recorded
with the release), and a sensor's run that meets a hold it was requested before waits for it to end. Rollback
returns to the newest healthy revision older than the failed one. The sensor, the release asset, the checks and
the jobs all ask here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from hubploy_dagster import rollout
from hubploy_dagster.chain import Chain
from hubploy_dagster.config import RolloutSettings, parse_duration
from hubploy_dagster.deployment import Hub
from hubploy_dagster.lineage import promoted_from
from hubploy_dagster.record import (
    PROMOTION_OVERRIDE,
    DeployRecord,
    Held,
    HoldReleased,
    RefusedPromotion,
    Rejected,
    Rollback,
    Superseded,
    observation,
)
from hubploy_dagster.resources import TAG_SENSOR, TAG_WINDOW_OVERRIDE
from hubploy_dagster.rollback import helm_rollback
from hubploy_dagster.session import HubSession
from hubploy_dagster.superseded import newer_request

WINDOW_OVERRIDE = "window_override"
HOLD_POLL_SECONDS = 60.0


@dataclass(frozen=True)
class Promotion:
    """The gate's answer for one release: deploy (with what to record about it), or refuse (and why)."""

    refused: RefusedPromotion | None
    metadata: dict[str, Any]
    overridden: str = ""  # why the gate would have refused, when a run tag overrode it


def promotion(
    record: DeployRecord,
    before: str | None,
    hub: str,
    sha: str,
    fingerprint: str,
    override: str | None,
    soak: Soak | None = None,
) -> Promotion:
    """Whether `hub` at `sha` may deploy to the environment after `before` (the chain's `before(env)`; None:
    the first environment, never gated); the release metadata links the healthy release it promotes. A
    configuration still soaking there (`soaking`) is not promoted yet either."""
    if before is None:
        return Promotion(None, {})
    passed = record.healthy_mark(hub, before, fingerprint)
    if passed is None:
        why = f"never passed its {before} checks"
    elif soak is None:
        return Promotion(None, promoted_from(record.release_before(hub, before, passed.storage_id), passed))
    else:
        why = f"is not promoted yet: {soak.hold.reason}"
    reason = f"hub {hub} at {sha[:7]} (configuration {fingerprint[:12]}) {why}"
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


@dataclass(frozen=True)
class Soak:
    """A promotion that waits for its soak: until when, and whether the checks before must first run again."""

    hold: rollout.Hold
    recheck: int | None = None  # the storage id of the soak's first healthy mark, when its checks must run again


def soaking(
    record: DeployRecord, chain: Chain, env: str, hubs: dict[str, Hub], fingerprints: dict[str, str]
) -> dict[str, Soak]:
    """The hubs whose configuration has not soaked long enough in the environment before `env` to be promoted.

    A soak starts at the configuration's first healthy mark there and ends `soak` later; then the checks run
    again, and only a healthy mark from after the end lets the promotion go ahead.
    """
    before = chain.before(env)
    found: dict[str, Soak] = {}
    for name, hub in hubs.items():
        soak = rollout.hub_rollout(chain, hub, env).soak
        marks = list(record.healthy_marks(name, before, fingerprints[name])) if soak and before else []
        if not marks:
            continue  # nothing to soak, or never healthy there (the promotion gate's answer)
        start = datetime.fromtimestamp(marks[-1].timestamp, UTC)
        end = start + parse_duration(soak)
        if rollout.now() < end:
            reason = (
                f"healthy in {before} since {rollout.utc_text(start)}: soaking {soak}, until {rollout.utc_text(end)}"
            )
            found[name] = Soak(rollout.Hold("soak", reason, end))
        elif marks[0].timestamp < end.timestamp():
            reason = f"soaked {soak} in {before}: promoted once its checks, run again after the soak, pass"
            found[name] = Soak(rollout.Hold("soak", reason), recheck=marks[-1].storage_id)
    return found


def wave_holds(
    record: DeployRecord, chain: Chain, env: str, hubs: list[str], changed: dict[str, Hub], fingerprints: dict[str, str]
) -> dict[str, rollout.Hold]:
    """The hubs of a change that wait for its earlier canary waves: `hubs` among all it `changed` (name -> Hub).

    A hub of wave n deploys once every hub of a lower wave that the change reaches is healthy in `env` with the
    changed configuration; a canary that fails its checks holds the later waves until it is fixed (a new
    configuration) or an operator resumes them (`hubploy release-hold`, or a deploy by hand). Hubs without a
    wave are not held.
    """
    found_waves = {name: rollout.hub_rollout(chain, hub, env).wave for name, hub in changed.items()}
    waves = {name: wave for name, wave in found_waves.items() if wave is not None}
    pending = {name for name in waves if record.healthy_mark(name, env, fingerprints[name]) is None}
    found = {}
    for name in hubs:
        ahead = sorted(other for other in pending if name in waves and waves[other] < waves[name])
        if ahead and not record.released(name, env, fingerprints[name]):
            reason = f"wave {waves[name]} waits for the checks of the earlier waves' {', '.join(ahead)} in {env}"
            found[name] = rollout.Hold("wave", reason)
    return found


def recorded_holds(
    record: DeployRecord, chain: Chain, env: str, hubs: dict[str, Hub], fingerprints: dict[str, str]
) -> dict[str, rollout.Hold]:
    """What the deploy record holds of a deploy of `hubs` to `env` now (for `hubploy plan`): canary waves,
    soak and rollback holds or rejections; the deploy windows need no record (`window_holds`)."""
    soaks = soaking(record, chain, env, hubs, fingerprints)
    return (
        wave_holds(record, chain, env, list(hubs), hubs, fingerprints)
        | {hub: soak.hold for hub, soak in soaks.items()}
        | record_holds(record, env, fingerprints)
    )


def held(hold: rollout.Hold, sha: str, fingerprint: str = "") -> Held:
    return Held(hold.kind, hold.reason, rollout.utc_text(hold.until) if hold.until else "", sha, fingerprint)


def window_holds(chain: Chain, env: str, hubs: dict[str, Hub]) -> dict[str, rollout.Hold]:
    """The hubs (name -> Hub at the commit) whose deploy windows hold a deploy to `env` now."""
    moment = rollout.now()
    found = {name: rollout.window_hold(rollout.hub_rollout(chain, hub, env), moment) for name, hub in hubs.items()}
    return {name: hold for name, hold in found.items() if hold is not None}


def deploy_window(
    context: dg.AssetExecutionContext, settings: RolloutSettings, hub: str, env: str, sha: str
) -> dict[str, Any] | None:
    """Whether the release may change now: the metadata to record with it, or None when it must not (recorded)."""
    hold = rollout.window_hold(settings, rollout.now())
    if hold is None:
        return {}
    override = context.run.tags.get(TAG_WINDOW_OVERRIDE)
    if override:
        context.log.warning(f"deploying {hub} to {env} although {hold.reason}: overridden by run tag ({override})")
        return {WINDOW_OVERRIDE: override}
    context.log_event(observation(hub, env, held(hold, sha)))
    if TAG_SENSOR not in context.run.tags:
        context.log.warning(f"not deploying {hub} to {env}: {hold.reason} (run tag {TAG_WINDOW_OVERRIDE} overrides)")
        return None
    said = ""
    while hold is not None:
        newer = newer_request(context.instance, context.run, hub, env)
        if newer is not None:
            context.log.warning(f"standing down: run {newer.run_id}, requested later, deploys {hub} to {env}")
            context.log_event(observation(hub, env, Superseded(newer.run_id, sha)))
            return None
        if hold.reason != said:
            context.log.info(f"waiting to deploy {hub} to {env}: {hold.reason}")
            said = hold.reason
        left = (hold.until - rollout.now()).total_seconds() if hold.until else HOLD_POLL_SECONDS
        time.sleep(min(HOLD_POLL_SECONDS, max(1.0, left)))
        hold = rollout.window_hold(settings, rollout.now())
    return {}


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
    fingerprint = session.deployment.fingerprint(session.hub)
    return Rollback("done", bad, target, new_revision, cause, fingerprint)


def record_holds(record: DeployRecord, env: str, fingerprints: dict[str, str]) -> dict[str, rollout.Hold]:
    """The hubs (name -> configuration at the commit) whose configuration the deploy record holds in `env`:
    rolled back here (until an operator releases it, or the configuration changes), or rejected."""
    found = {}
    for hub, fingerprint in fingerprints.items():
        released = False
        for _, fact in record.facts(hub, env):
            if isinstance(fact, Rejected) and fact.fingerprint == fingerprint:
                reason = f"configuration {fingerprint[:12]} was rejected by {fact.by}: {fact.reason}"
                found[hub] = rollout.Hold("rejected", reason)
                break
            if isinstance(fact, HoldReleased) and fact.fingerprint == fingerprint:
                released = True
            if isinstance(fact, Rollback) and fact.fingerprint == fingerprint and not released and hub not in found:
                reason = f"configuration {fingerprint[:12]} was rolled back here; release the hold or change it"
                found[hub] = rollout.Hold("rollback", reason)
    return found
