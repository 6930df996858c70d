"""The deploy record: every fact about a hub's releases that a later step, the sensor or the audit reads back.

The facts live in the Dagster instance as events on the release asset (`<hub>/<env>`), so the UI shows them
where an operator looks: the release's materialization (what was deployed, from which commit, with which
configuration), and observations for a healthy mark, a rollback, a refused promotion and an automatic retry
that stood down. This module is the only one that knows their metadata keys: the others write and read
typed records through it.

Look-ups are queries on one release asset's own observations, newest first, a page at a time, until the
record asked for is found. Dagster indexes asset events by key, kind and storage id (its tag index holds
only data versions and partitions), so that is the narrowest query it offers; there is no fixed window, so
no number of later events makes an older healthy revision unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from hubploy_dagster.deployment import Deployment, Hub
from hubploy_dagster.keys import release_key
from hubploy_dagster.lineage import release_metadata
from hubploy_dagster.release import DeployOptions, ReleaseResult
from hubploy_dagster.repo import DeploymentRepo

FINGERPRINT = "fingerprint"
GIT_SHA = "git_sha"
HEALTHY = "healthy_revision"
ROLLBACK = "rollback"
PROMOTION = "promotion"
SUPERSEDED_BY = "superseded_by"
HELD = "held"
HOLD_RELEASED = "hold_released"
REJECTED = "rejected"
LAUNCHED_BY = "launched_by"  # on CLI deploys, which have no run to carry tags
DEPLOYED_BY = "deployed_by"  # who ran a CLI deploy (HUBPLOY_ACTOR, else the login name)
PROMOTION_OVERRIDE = "promotion_override"
PROMOTED_FROM_RUN = "promoted_from_run"
ROLLBACK_CAUSES = ("failed_checks", "failed_upgrade")  # the keys of a rollback's cause
PAGE = 200


@dataclass(frozen=True)
class Release:
    """What one release materialization recorded."""

    git_sha: str
    release: str
    namespace: str
    helm_revision: int | None
    fingerprint: str | None
    image: str = ""
    launched_by: str | None = None
    deployed_by: str | None = None
    promoted_from_run: str | None = None
    promotion_override: str | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Release:
        def text(key: str) -> str | None:
            return None if values.get(key) is None else str(values[key])

        revision = values.get("helm_revision")
        return cls(
            git_sha=str(values.get(GIT_SHA, "")),
            release=str(values.get("release", "")),
            namespace=str(values.get("namespace", "")),
            helm_revision=None if revision is None else int(revision),
            fingerprint=text(FINGERPRINT),
            image=str(values.get("image", "")),
            launched_by=text(LAUNCHED_BY),
            deployed_by=text(DEPLOYED_BY),
            promoted_from_run=text(PROMOTED_FROM_RUN),
            promotion_override=text(PROMOTION_OVERRIDE),
        )


@dataclass(frozen=True)
class Healthy:
    """Every blocking check of this revision passed: rollback returns here; the next environment may promote it."""

    revision: int | None
    fingerprint: str
    git_sha: str

    def metadata(self) -> dict[str, Any]:
        return {HEALTHY: self.revision, FINGERPRINT: self.fingerprint, GIT_SHA: self.git_sha}


@dataclass(frozen=True)
class Rollback:
    """A rollback: `done` by the checks or a failed upgrade, `impossible` (nothing healthy before), or `manual`."""

    state: str
    from_revision: int | None = None
    to_revision: int | None = None
    new_revision: int | None = None
    cause: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""  # the configuration rolled away from: the sensor holds it (`policy.record_holds`)

    def metadata(self) -> dict[str, Any]:
        source = {} if self.state == "manual" else {"from_revision": self.from_revision}
        target = (
            {} if self.state == "impossible" else {"to_revision": self.to_revision, "new_revision": self.new_revision}
        )
        held = {FINGERPRINT: self.fingerprint} if self.fingerprint else {}
        return {ROLLBACK: self.state, **source, **target, **self.cause, **held}

    def summary(self) -> str:
        """`revision 3 -> 2 (now revision 4)`; `manual` for the rollback job; a failed upgrade has no revision."""
        if self.state == "manual":
            source = "manual"
        else:
            source = f"revision {self.from_revision}" if self.from_revision is not None else "the failed upgrade"
        if self.state == "impossible":
            return f"none from {source}: no earlier healthy revision"
        return f"{source} -> {self.to_revision} (now revision {self.new_revision})"

    def reason(self) -> str:
        """Why it rolled back: `failed checks: hub_api` (or a failed upgrade)."""
        return "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in self.cause.items())


@dataclass(frozen=True)
class RefusedPromotion:
    """The promotion gate refused to deploy this configuration."""

    reason: str
    git_sha: str
    fingerprint: str

    def metadata(self) -> dict[str, Any]:
        return {PROMOTION: "refused", "reason": self.reason, GIT_SHA: self.git_sha, FINGERPRINT: self.fingerprint}


@dataclass(frozen=True)
class Superseded:
    """An automatic retry stood down: a newer request deploys the same hub and environment."""

    by_run: str
    git_sha: str

    def metadata(self) -> dict[str, Any]:
        return {SUPERSEDED_BY: self.by_run, GIT_SHA: self.git_sha}


@dataclass(frozen=True)
class Held:
    """A deploy waits (`kind`: outside its deploy windows, soaking...): why, and when it should go ahead."""

    kind: str
    reason: str
    until: str  # UTC, "" when not known
    git_sha: str
    fingerprint: str = ""  # the configuration held, which an operator can release (`holds.release_held_configuration`)

    def metadata(self) -> dict[str, Any]:
        found = {HELD: self.kind, "reason": self.reason, "until": self.until, GIT_SHA: self.git_sha}
        return found | ({FINGERPRINT: self.fingerprint} if self.fingerprint else {})


@dataclass(frozen=True)
class HoldReleased:
    """An operator let the sensor deploy a configuration again that a rollback or a canary wave held."""

    fingerprint: str
    by: str
    reason: str

    def metadata(self) -> dict[str, Any]:
        return {HOLD_RELEASED: self.fingerprint, "by": self.by, "reason": self.reason}


@dataclass(frozen=True)
class Rejected:
    """An operator rejected a configuration of the hub: it is deployed nowhere, ever."""

    fingerprint: str
    by: str
    reason: str

    def metadata(self) -> dict[str, Any]:
        return {REJECTED: self.fingerprint, "by": self.by, "reason": self.reason}


Fact = Healthy | Rollback | RefusedPromotion | Superseded | Held | HoldReleased | Rejected


def observation(hub: str, env: str, fact: Fact) -> dg.AssetObservation:
    """The event that records `fact` on the release asset."""
    return dg.AssetObservation(asset_key=release_key(hub, env), metadata=fact.metadata())


def fact_of(values: Mapping[str, Any]) -> Fact | None:
    """The typed fact an observation's metadata values record (None: not one of ours)."""
    if HEALTHY in values:
        revision = values[HEALTHY]
        return Healthy(
            None if revision is None else int(revision), str(values.get(FINGERPRINT, "")), str(values.get(GIT_SHA, ""))
        )
    if ROLLBACK in values:
        return Rollback(
            state=str(values[ROLLBACK]),
            from_revision=values.get("from_revision"),
            to_revision=values.get("to_revision"),
            new_revision=values.get("new_revision"),
            cause={key: str(values[key]) for key in ROLLBACK_CAUSES if values.get(key)},
            fingerprint=str(values.get(FINGERPRINT, "")),
        )
    if values.get(PROMOTION) == "refused":
        return RefusedPromotion(str(values["reason"]), str(values.get(GIT_SHA, "")), str(values.get(FINGERPRINT, "")))
    if SUPERSEDED_BY in values:
        return Superseded(str(values[SUPERSEDED_BY]), str(values.get(GIT_SHA, "")))
    if HOLD_RELEASED in values:
        return HoldReleased(str(values[HOLD_RELEASED]), str(values.get("by", "")), str(values.get("reason", "")))
    if REJECTED in values:
        return Rejected(str(values[REJECTED]), str(values.get("by", "")), str(values.get("reason", "")))
    if HELD in values:
        return Held(
            str(values[HELD]),
            str(values["reason"]),
            str(values.get("until", "")),
            str(values.get(GIT_SHA, "")),
            str(values.get(FINGERPRINT, "")),
        )
    return None


def values_of(record: dg.EventLogRecord) -> dict[str, Any]:
    """The metadata values of a materialization or observation record."""
    event = record.asset_materialization or record.asset_observation
    return {k: v.value for k, v in event.metadata.items()} if event else {}


def release_record_metadata(
    result: ReleaseResult, repo: DeploymentRepo, run_id: str | None, fingerprint: str | None, **extra: Any
) -> dict[str, Any]:
    """A release materialization's metadata: helm's record, lineage links, the configuration fingerprint."""
    metadata = {**release_metadata(result, repo, run_id), **extra}
    if fingerprint is not None:
        metadata[FINGERPRINT] = fingerprint
    return metadata


@dataclass(frozen=True)
class DeployRecord:
    """The deploy record of one Dagster instance."""

    instance: dg.DagsterInstance

    def facts(self, hub: str, env: str) -> Iterator[tuple[dg.EventLogRecord, Fact]]:
        """The facts recorded on one release, newest first."""
        before: int | None = None
        while True:
            records = self.instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=release_key(hub, env), before_storage_id=before), limit=PAGE
            ).records
            for record in records:
                if (fact := fact_of(values_of(record))) is not None:
                    yield record, fact
            if len(records) < PAGE:
                return
            before = records[-1].storage_id

    def latest_fact(self, hub: str, env: str) -> Fact | None:
        return next((fact for _, fact in self.facts(hub, env)), None)

    def released(self, hub: str, env: str, fingerprint: str) -> bool:
        """Whether an operator released a hold on this configuration of the hub in `env` (`holds.release_held_configuration`)."""
        return any(isinstance(f, HoldReleased) and f.fingerprint == fingerprint for _, f in self.facts(hub, env))

    def healthy_marks(self, hub: str, env: str, fingerprint: str) -> Iterator[dg.EventLogRecord]:
        """The records of this exact hub configuration being healthy in `env`, newest first."""
        return (r for r, f in self.facts(hub, env) if isinstance(f, Healthy) and f.fingerprint == fingerprint)

    def healthy_mark(self, hub: str, env: str, fingerprint: str) -> dg.EventLogRecord | None:
        """The newest record of this exact hub configuration being healthy in `env` (None: it never was)."""
        return next(self.healthy_marks(hub, env, fingerprint), None)

    def healthy_revision(self, hub: str, env: str, before: int | None) -> int | None:
        """The newest revision whose blocking checks all passed, older than `before` (None: any)."""
        for _, fact in self.facts(hub, env):
            if isinstance(fact, Healthy) and fact.revision is not None and (before is None or fact.revision < before):
                return int(fact.revision)
        return None

    def hubploy_revisions(self, hub: str, env: str) -> set[int]:
        """The helm revisions hubploy made of a release: its deploys and its rollbacks."""
        revisions = {f.new_revision for _, f in self.facts(hub, env) if isinstance(f, Rollback) and f.new_revision}
        before: int | None = None
        while True:
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=release_key(hub, env), before_storage_id=before), limit=PAGE
            ).records
            revisions |= {int(v) for r in records if (v := values_of(r).get("helm_revision")) is not None}
            if len(records) < PAGE:
                return revisions
            before = records[-1].storage_id

    def release_before(self, hub: str, env: str, storage_id: int) -> dg.EventLogRecord | None:
        """The newest release materialization stored before `storage_id` (what a healthy mark was about)."""
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=release_key(hub, env), before_storage_id=storage_id), limit=1
        ).records
        return records[0] if records else None

    def deployed_fingerprints(self, hubs: list[str], env: str) -> dict[str, str]:
        """The configuration each hub's last release deployed, in one query for all hubs."""
        events = self.instance.get_latest_materialization_events([release_key(hub, env) for hub in hubs])
        found = {}
        for key, event in events.items():
            if event and event.asset_materialization:
                value = event.asset_materialization.metadata.get(FINGERPRINT)
                if value is not None:
                    found[key.path[0]] = str(value.value)
        return found

    def record_cli_deploy(
        self,
        repo: DeploymentRepo,
        deployment: Deployment,
        hub: Hub,
        result: ReleaseResult,
        options: DeployOptions,
        actor: str,
    ) -> None:
        """Enter a `hubploy deploy` as a materialization of the hub's release, marked as the CLI's and `actor`'s.

        No checks ran, so it never counts for the promotion gate. The configuration fingerprint (what the
        sensor compares to skip a redeploy) is recorded only when nothing but the commit shaped the release:
        extra values, another chart, chart version or namespace make the release differ from what is committed.
        """
        as_committed = not (options.set_values or options.set_string_values or options.version or options.namespace)
        fingerprint = (
            deployment.fingerprint(hub) if as_committed and options.chart in (None, hub.config.chart) else None
        )
        metadata = release_record_metadata(result, repo, None, fingerprint, **{LAUNCHED_BY: "cli", DEPLOYED_BY: actor})
        self.instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=release_key(result.hub, result.env), metadata=metadata)
        )
