"""An automatic retry of an interrupted deploy stands down when a newer deploy of the hub was requested."""

from __future__ import annotations

import time
import uuid

import dagster as dg

from hubploy_dagster.superseded import superseding_run


def add_run(instance: dg.DagsterInstance, hub: str, status: dg.DagsterRunStatus, retry_of: str | None = None):
    tags = {"hub": hub, "env": "staging", "git_sha": uuid.uuid4().hex}
    if retry_of:
        tags |= {"dagster/retry_number": "1", "dagster/parent_run_id": retry_of, "dagster/root_run_id": retry_of}
    run = dg.DagsterRun(
        job_name="__anonymous_asset_job_git_branches",
        run_id=str(uuid.uuid4()),
        tags=tags,
        status=status,
        root_run_id=retry_of,
        parent_run_id=retry_of,
    )
    instance.add_run(run)
    time.sleep(0.01)  # creation order is what the queue follows
    return run


def test_a_retry_stands_down_only_for_a_newer_wanted_deploy_of_the_same_hub():
    instance = dg.DagsterInstance.ephemeral()
    interrupted = add_run(instance, "alpha", dg.DagsterRunStatus.FAILURE)
    add_run(instance, "beta", dg.DagsterRunStatus.NOT_STARTED)  # another hub: irrelevant
    retry = add_run(instance, "alpha", dg.DagsterRunStatus.STARTED, retry_of=interrupted.run_id)
    assert superseding_run(instance, retry, "alpha", "staging") is None

    add_run(instance, "alpha", dg.DagsterRunStatus.CANCELED)  # a newer request nobody still wants
    assert superseding_run(instance, retry, "alpha", "staging") is None

    newer = add_run(instance, "alpha", dg.DagsterRunStatus.NOT_STARTED)  # (queued runs need a code origin here)
    found = superseding_run(instance, retry, "alpha", "staging")
    assert found is not None and found.run_id == newer.run_id


def test_a_run_that_is_not_an_automatic_retry_is_never_superseded():
    instance = dg.DagsterInstance.ephemeral()
    first = add_run(instance, "alpha", dg.DagsterRunStatus.STARTED)
    add_run(instance, "alpha", dg.DagsterRunStatus.NOT_STARTED)
    assert superseding_run(instance, first, "alpha", "staging") is None
