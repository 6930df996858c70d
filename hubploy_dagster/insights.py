"""Deploy insights: per hub and environment, how often it deploys, how often that fails, how long it takes.

Read from the same records as the audit (`history.py`): release materializations (with their helm time and,
for a promotion, the lead time from the environment before), rollbacks, and the failed runs of each hub and
environment (run tags). What the UI plots comes from the same numbers: each release's `duration_seconds` and
`promotion_seconds` are numeric metadata, drawn per asset over time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import dagster as dg

from hubploy_dagster.history import Entry, aligned, deploy_history
from hubploy_dagster.resources import TAG_ENV, TAG_HUB


@dataclass(frozen=True)
class Stats:
    hub: str
    env: str
    deploys: int  # releases recorded
    failed_runs: int  # deploy runs of this hub and environment that failed
    rollbacks: int
    median_deploy_seconds: float | None
    median_promotion_seconds: float | None  # from the environment before to this one

    @property
    def failure_rate(self) -> float:
        attempts = self.deploys + self.failed_runs
        return self.failed_runs / attempts if attempts else 0.0

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "failure_rate": round(self.failure_rate, 3)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def deploy_stats(instance: dg.DagsterInstance, hub: str | None, env: str | None, limit: int) -> list[Stats]:
    """Over the newest `limit` audit entries (and the failed runs since the oldest of them)."""
    entries = deploy_history(instance, hub, env, limit)
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in entries:
        groups[(entry.hub, entry.env)].append(entry)
    since = min((entry.timestamp for entry in entries), default=None)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    if since is not None:
        tags = {key: value for key, value in ((TAG_HUB, hub), (TAG_ENV, env)) if value}
        runs = instance.get_run_records(
            dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.FAILURE],
                tags=tags or None,
                created_after=datetime.fromtimestamp(since - 1, UTC),
            )
        )
        for run in runs:
            run_tags = run.dagster_run.tags
            if TAG_HUB in run_tags and TAG_ENV in run_tags:
                failed[(run_tags[TAG_HUB], run_tags[TAG_ENV])] += 1
    stats = []
    for key in sorted(set(groups) | set(failed)):
        releases = [e for e in groups[key] if e.event == "release"]
        stats.append(
            Stats(
                hub=key[0],
                env=key[1],
                deploys=len(releases),
                failed_runs=failed[key],
                rollbacks=sum(e.event == "rollback" for e in groups[key]),
                median_deploy_seconds=_median([e.duration_seconds for e in releases if e.duration_seconds is not None]),
                median_promotion_seconds=_median(
                    [e.promotion_seconds for e in releases if e.promotion_seconds is not None]
                ),
            )
        )
    return stats


def stats_table(stats: list[Stats]) -> list[str]:
    header = ("HUB", "ENV", "DEPLOYS", "FAILED", "FAILURE RATE", "MEDIAN DEPLOY", "MEDIAN PROMOTION", "ROLLBACKS")
    rows: list[tuple[str, ...]] = [header] + [
        (
            s.hub,
            s.env,
            str(s.deploys),
            str(s.failed_runs),
            f"{s.failure_rate:.0%}",
            f"{s.median_deploy_seconds:.0f}s" if s.median_deploy_seconds is not None else "-",
            f"{s.median_promotion_seconds:.0f}s" if s.median_promotion_seconds is not None else "-",
            str(s.rollbacks),
        )
        for s in stats
    ]
    return aligned(rows)
