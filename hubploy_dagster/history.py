"""The deploy audit: every release, rollback and refused promotion the Dagster instance recorded, one row each.

Dagster already stores what an audit needs, in several kinds of record: the release materializations
(`<hub>/staging`, `<hub>/prod`) say what was deployed, observations on the same assets say what was rolled
back or refused, check evaluations say whether the release was healthy, and run tags say how the run was
started. They are joined here in a handful of queries (one per kind of record, one per release check of the
assets in view, one for all the runs), never one per row; each commit's author comes from git.

`hubploy deploy` runs hubploy's deploy outside Dagster (its flags have no place in a Dagster run); the deploy
record (`record.py`) enters it in the same instance as a runless materialization with the release's
metadata, so sensor, UI and CLI deploys share one history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import git

from hubploy_dagster import settings
from hubploy_dagster.checks import CHECK_NAMES
from hubploy_dagster.errors import HubployError
from hubploy_dagster.keys import image_key, release_key
from hubploy_dagster.lineage import PROMOTION_SECONDS
from hubploy_dagster.record import Held, HoldReleased, RefusedPromotion, Rejected, Release, Rollback, fact_of, values_of
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.resources import TAG_GIT_SHA, TAG_SENSOR

FROM_UI_TAG = "dagster/from_ui"  # set by the Dagster UI on every run launched from it (launchpad, Materialize)
CLOCK_SLACK_S = 60.0
PAGE = 200


def open_instance() -> dg.DagsterInstance:
    """The instance the webserver and daemon use, named by DAGSTER_HOME; a clear error when it is not set."""
    if settings.current().dagster_home is None:
        raise HubployError(
            "DAGSTER_HOME is not set: the deploy history lives in the Dagster instance; set DAGSTER_HOME to the "
            "folder of the instance's dagster.yaml (the one `dagster dev` or the daemon uses)"
        )
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class Entry:
    """One line of the audit: a release, a rollback or a refused promotion of one hub in one environment."""

    timestamp: float
    hub: str
    env: str
    event: str  # release | rollback | refused | held | released | rejected
    git_sha: str
    run_id: str
    launched_by: str  # sensor | cli | ui | other | unknown (the run was deleted)
    deployed_by: str = ""  # who ran a CLI deploy; UI launches are named in the front door's access log
    image_tag: str = ""
    helm_revision: int | None = None
    checks_passed: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    detail: str = ""
    author: str = ""
    duration_seconds: float | None = None  # a release's helm time
    promotion_seconds: float | None = None  # a promotion: from the release it promotes, in the environment before

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "time": _time(self.timestamp)}


def deploy_history(
    instance: dg.DagsterInstance,
    hub: str | None = None,
    env: str | None = None,
    limit: int = 50,
    repo_source: str | None = None,
) -> list[Entry]:
    """The newest `limit` entries, newest first, of one hub or all, in one environment or all."""

    def is_release(key: dg.AssetKey) -> bool:
        """`<hub>/<env>` for any environment the instance recorded (the chain may have changed since)."""
        path = key.path
        return len(path) == 2 and key != image_key(path[0]) and hub in (None, path[0]) and env in (None, path[1])

    keys = None
    if hub:
        keys = [release_key(hub, env)] if env else [k for k in instance.get_asset_keys(prefix=[hub]) if is_release(k)]

    def in_view(record: dg.EventLogRecord) -> bool:
        return record.asset_key is not None and is_release(record.asset_key)

    releases = _newest(instance, dg.DagsterEventType.ASSET_MATERIALIZATION, keys, in_view, limit)
    events = _newest(
        instance, dg.DagsterEventType.ASSET_OBSERVATION, keys, lambda r: in_view(r) and _event_kind(r) != "", limit
    )
    records = sorted(releases + events, key=lambda r: r.storage_id, reverse=True)[:limit]
    run_ids = sorted({r.run_id for r in records if r.run_id})
    runs = (
        {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    )
    checks = _check_results(instance, records, runs)
    rollbacks: dict[tuple[str, dg.AssetKey], list[str]] = defaultdict(list)
    for record in reversed(events):
        fact = fact_of(values_of(record))
        if isinstance(fact, Rollback) and record.asset_key:
            rollbacks[(record.run_id, record.asset_key)].append(fact.summary())
    entries = [_entry(r, runs[r.run_id].dagster_run if r.run_id in runs else None, checks, rollbacks) for r in records]
    authors = commit_authors(repo_source, {e.git_sha for e in entries if e.git_sha})
    return [replace(e, author=authors.get(e.git_sha, "")) for e in entries]


def _newest(
    instance: dg.DagsterInstance,
    event_type: dg.DagsterEventType,
    keys: list[dg.AssetKey] | None,
    keep: Callable[[dg.EventLogRecord], bool],
    limit: int,
) -> list[dg.EventLogRecord]:
    """The newest `limit` records of a type that `keep` accepts, for each key (or across all assets: None).

    The storage's `get_event_records` is the one query that spans every asset key (the instance's
    `fetch_materializations` takes one key; its `get_event_records` wrapper is deprecated for this).
    """
    found: list[dg.EventLogRecord] = []
    for key in keys or [None]:
        kept: list[dg.EventLogRecord] = []
        before: int | None = None
        while len(kept) < limit:
            query = dg.EventRecordsFilter(event_type, asset_key=key, before_cursor=before)
            page = instance.event_log_storage.get_event_records(query, limit=PAGE)
            kept += [record for record in page if keep(record)]
            if len(page) < PAGE:
                break
            before = page[-1].storage_id
        found += kept[:limit]
    return found


def _event_kind(record: dg.EventLogRecord) -> str:
    """Which observations are audit entries: rollbacks, refused promotions and holds (not healthy marks or retries)."""
    fact = fact_of(values_of(record))
    kinds = {
        Rollback: "rollback",
        RefusedPromotion: "refused",
        Held: "held",
        HoldReleased: "released",
        Rejected: "rejected",
    }
    return kinds.get(type(fact), "")


def _check_results(
    instance: dg.DagsterInstance, records: list[dg.EventLogRecord], runs: dict[str, dg.RunRecord]
) -> dict[tuple[str, dg.AssetKey], dict[str, bool]]:
    """Each run's release check outcomes per asset: one query per check of each asset in view.

    A check's execution record is created when its run plans it, so the oldest run in view bounds the search.
    """
    oldest: dict[dg.AssetKey, float] = {}
    for record in records:
        if record.asset_key and record.run_id in runs:
            created = runs[record.run_id].create_timestamp.timestamp()
            oldest[record.asset_key] = min(created, oldest.get(record.asset_key, created))
    results: dict[tuple[str, dg.AssetKey], dict[str, bool]] = defaultdict(dict)
    for key, since in oldest.items():
        for name in CHECK_NAMES:
            for execution in _executions_since(instance, dg.AssetCheckKey(key, name), since):
                if execution.run_id in runs and execution.status.value in ("SUCCEEDED", "FAILED"):
                    results[(execution.run_id, key)][name] = execution.status.value == "SUCCEEDED"
    return results


def _executions_since(instance: dg.DagsterInstance, check: dg.AssetCheckKey, since: float) -> Iterable[Any]:
    """Newest first, down to `since`; a minute of slack because storages may keep whole seconds only."""
    cursor: int | None = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(check, limit=PAGE, cursor=cursor)
        yield from page
        if len(page) < PAGE or page[-1].create_timestamp < since - CLOCK_SLACK_S:
            return
        cursor = page[-1].id


def launched_by(run: dg.DagsterRun | None, release: Release) -> str:
    if release.launched_by:
        return release.launched_by
    if run is None:
        return "unknown"
    if TAG_SENSOR in run.tags:
        return "sensor"
    return "ui" if run.tags.get(FROM_UI_TAG) == "true" else "other"


def _entry(
    record: dg.EventLogRecord,
    run: dg.DagsterRun | None,
    checks: dict[tuple[str, dg.AssetKey], dict[str, bool]],
    rollbacks: dict[tuple[str, dg.AssetKey], list[str]],
) -> Entry:
    assert record.asset_key is not None
    values = values_of(record)
    outcomes = checks.get((record.run_id, record.asset_key), {})
    release = Release.of(values)
    common = {
        "timestamp": record.timestamp,
        "hub": record.asset_key.path[0],
        "env": record.asset_key.path[1],
        "run_id": record.run_id,
        "launched_by": launched_by(run, release),
        "deployed_by": release.deployed_by or "",
        "checks_passed": [name for name, passed in outcomes.items() if passed],
        "checks_failed": [name for name, passed in outcomes.items() if not passed],
    }
    run_sha = run.tags.get(TAG_GIT_SHA, "") if run else ""
    kind = _event_kind(record) if record.asset_observation else "release"
    fact = fact_of(values)
    if isinstance(fact, Rollback):
        return Entry(
            event=kind,
            git_sha=run_sha,
            helm_revision=fact.new_revision,
            rollbacks=[fact.summary()],
            detail=fact.reason(),
            **common,
        )
    if isinstance(fact, RefusedPromotion):
        return Entry(event=kind, git_sha=fact.git_sha or run_sha, detail=fact.reason, **common)
    if isinstance(fact, HoldReleased | Rejected):
        verb = "may deploy again" if isinstance(fact, HoldReleased) else "rejected"
        detail = f"configuration {fact.fingerprint[:12]} {verb}, by {fact.by}: {fact.reason}"
        return Entry(event=kind, git_sha=run_sha, detail=detail, **common)
    if isinstance(fact, Held):
        until = f" (until {fact.until})" if fact.until and fact.until not in fact.reason else ""
        return Entry(
            event=kind, git_sha=fact.git_sha or run_sha, detail=f"{fact.kind} hold: {fact.reason}{until}", **common
        )
    details = [f"promoted from run {release.promoted_from_run}"] if release.promoted_from_run else []
    if release.promotion_override:
        details.append(f"promotion override: {release.promotion_override}")
    if (waited := _number(values.get("idle_wait_seconds"))) is not None:  # wait_for_idle before the upgrade
        details.append(f"waited {waited:.0f}s for users to leave ({values.get('idle_wait_outcome', '')})")
    if (queued := _number(values.get("queued_seconds"))) is not None:  # the per-cluster limit (queue_wait.py)
        details.append(f"waited {queued:.0f}s in the run queue ({values.get('queued_behind', '')})")
    return Entry(
        event=kind,
        git_sha=release.git_sha,
        image_tag=", ".join(ref.rpartition(":")[2] for ref in release.image.split(", ") if ref),
        helm_revision=release.helm_revision,
        rollbacks=rollbacks.get((record.run_id, record.asset_key), []),
        detail="; ".join(details),
        duration_seconds=_number(values.get("duration_seconds")),
        promotion_seconds=_number(values.get(PROMOTION_SECONDS)),
        **common,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def commit_authors(source: str | None, shas: set[str]) -> dict[str, str]:
    """Each commit's author from the deployment repository; none when it cannot be read (rows stay, blank)."""
    if not source or not shas:
        return {}
    try:
        repo = DeploymentRepo(source)
        repo.fetch()
    except (HubployError, git.GitCommandError):
        return {}
    authors = {}
    for sha in shas:
        try:
            authors[sha] = str(repo.git_repo.commit(sha).author.name)
        except (ValueError, git.BadName):
            continue
    return authors


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def history_table(entries: list[Entry]) -> list[str]:
    """The entries as aligned text columns, newest first."""
    header = ("TIME", "HUB", "ENV", "EVENT", "SHA", "AUTHOR", "TAG", "REV", "CHECKS", "ROLLBACK", "RUN", "BY", "DETAIL")
    rows = [header]
    for e in entries:
        checks = f"{len(e.checks_passed)} passed" + (
            f", failed: {', '.join(e.checks_failed)}" if e.checks_failed else ""
        )
        rows.append(
            (
                _time(e.timestamp),
                e.hub,
                e.env,
                e.event,
                e.git_sha[:7] or "-",
                e.author or "-",
                e.image_tag or "-",
                str(e.helm_revision) if e.helm_revision is not None else "-",
                checks if e.checks_passed or e.checks_failed else "-",
                "; ".join(e.rollbacks) or "-",
                e.run_id[:8] or "-",
                f"{e.launched_by} ({e.deployed_by})" if e.deployed_by else e.launched_by,
                e.detail,
            )
        )
    return aligned(rows)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of text cells as columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
