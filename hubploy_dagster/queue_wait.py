"""The per-cluster limit's hold: how long a deploy waited in Dagster's run queue, recorded with its release.

Dagster's queue enforces the limit (the `cluster` run tag's entry under `tag_concurrency_limits` in
dagster.yaml); while a run waits, the UI shows it queued with what blocks it. The wait itself leaves no trace
on the release, so once the run starts the release records it: the release metadata and `hubploy history`
then say that this deploy was held back and for how long, next to the cluster's limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from hubploy_dagster.resources import TAG_CLUSTER

NOTED_SECONDS = 5.0  # shorter waits are the queue daemon's own polling (every 2 s by default), not a hold


def cluster_limit(instance: dg.DagsterInstance, cluster: str) -> int | None:
    """The fewest deploys at once that the instance's run queue allows on `cluster` (None: no such limit)."""
    queue = instance.get_concurrency_config().run_queue_config
    limits = [
        int(entry["limit"])
        for entry in (queue.tag_concurrency_limits if queue else [])
        if entry.get("key") == TAG_CLUSTER and _applies(entry.get("value"), cluster)
    ]
    return min(limits, default=None)


def _applies(value: str | Mapping[str, Any] | None, cluster: str) -> bool:
    return (
        value is None
        or value == cluster
        or (isinstance(value, Mapping) and bool(value.get("applyLimitPerUniqueValue")))
    )


def queue_wait(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, Any]:
    """The release metadata of the run's wait in the queue: `queued_seconds` and why ({}: it did not wait)."""
    records = instance.get_records_for_run(
        run.run_id, of_type={dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING}
    ).records
    times = {record.event_log_entry.dagster_event_type: record.timestamp for record in records}
    enqueued, launched = times.get(dg.DagsterEventType.RUN_ENQUEUED), times.get(dg.DagsterEventType.RUN_STARTING)
    if enqueued is None or launched is None or launched - enqueued < NOTED_SECONDS:
        return {}
    cluster = run.tags.get(TAG_CLUSTER, "")
    limit = cluster_limit(instance, cluster) if cluster else None
    why = f"at most {limit} deploy(s) at once to cluster {cluster}" if limit else "the run queue's limits"
    return {"queued_seconds": round(launched - enqueued, 1), "queued_behind": why}
