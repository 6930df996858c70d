"""Automatic retries must not deploy an old commit over a newer one.

Dagster retries a run that died (`run_retries` in dagster.yaml) by queueing a copy of it. Runs of one hub wait
in creation order, so a retry of a deploy interrupted while newer deploys of the same hub were queued would
run last and put the older commit back. A retry therefore deploys only if no run for the same hub and
environment was requested after the interrupted one (other than its own retries) and is queued, going, or
done well; otherwise the newer request wins and the retry records that it stood down.

Only automatic retries are judged so: a run an operator starts, or re-executes from the UI, does what it says.
"""

from __future__ import annotations

import dagster as dg

from hubploy_dagster.resources import TAG_ENV, TAG_HUB

RETRY_NUMBER_TAG = "dagster/retry_number"
STILL_WANTED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUCCESS,
]


def superseding_run(instance: dg.DagsterInstance, run: dg.DagsterRun, hub: str, env: str) -> dg.DagsterRun | None:
    """The newer deploy of `hub` to `env` that makes this automatic retry pointless, if there is one."""
    return newer_request(instance, run, hub, env) if RETRY_NUMBER_TAG in run.tags else None


def newer_request(instance: dg.DagsterInstance, run: dg.DagsterRun, hub: str, env: str) -> dg.DagsterRun | None:
    """A deploy of `hub` to `env` requested after `run` (not one of its retries), still wanted, if any."""
    root_id = run.root_run_id or run.run_id
    root = instance.get_run_record_by_id(root_id)
    if root is None:
        return None
    newer = instance.get_run_records(
        dg.RunsFilter(tags={TAG_HUB: hub, TAG_ENV: env}, statuses=STILL_WANTED, created_after=root.create_timestamp)
    )
    for record in sorted(newer, key=lambda r: r.create_timestamp):
        candidate = record.dagster_run
        if candidate.run_id != root_id and (candidate.root_run_id or candidate.run_id) != root_id:
            return candidate
    return None
