"""hubploy's run launcher: runs execute in workers forked from a process that preloaded Dagster and the clients.

A real Dagster instance and code server (a small code location written per test) launch real runs; what is
checked is what the daemon and an operator rely on: the run succeeds in a forked worker that did not import
the preloaded libraries itself, termination cancels it, a dead worker is found by run monitoring, and a code
location in another Python is refused with a message naming both.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.remote_representation.external import RemoteJob
from dagster._core.test_utils import create_run_for_test, instance_for_test, poll_for_finished_run
from dagster._core.workspace.context import BaseWorkspaceRequestContext, WorkspaceProcessContext
from dagster._core.workspace.load_target import PythonFileTarget

from hubploy_dagster.run_launcher import WORKER_TAG, PreloadedRunLauncher, is_forked_worker

# The step reports what the worker had imported before any user code ran: the code location itself imports
# nothing but dagster, so `kubernetes.client` can only be there because the worker was forked after preloading.
JOBS = """
import os, sys, time
from pathlib import Path
import dagster as dg

@dg.op
def report(context):
    forkserver = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
    context.log.info(f"worker pid={os.getpid()} kubernetes preloaded={'kubernetes.client' in sys.modules}")
    context.log.info(f"worker parent: {forkserver}")

@dg.op
def wait_long():
    time.sleep(600)

@dg.job
def quick():
    report()

@dg.job
def slow():
    wait_long()

defs = dg.Definitions(jobs=[quick, slow], executor=dg.in_process_executor)  # as hubploy runs its steps
"""
LAUNCHER = {"module": "hubploy_dagster.run_launcher", "class": "PreloadedRunLauncher"}


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[dg.DagsterInstance, BaseWorkspaceRequestContext]]:
    (tmp_path / "jobs.py").write_text(JOBS)
    target = PythonFileTarget(str(tmp_path / "jobs.py"), None, str(tmp_path), "jobs")
    with (
        instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance,
        WorkspaceProcessContext(instance, target) as process_context,
    ):
        yield instance, process_context.create_request_context()


def remote_job(context: BaseWorkspaceRequestContext, name: str) -> RemoteJob:
    location = context.get_code_location("jobs")
    [repository] = location.get_repositories().values()
    return repository.get_full_job(name)


def launch(instance: dg.DagsterInstance, context: BaseWorkspaceRequestContext, name: str) -> dg.DagsterRun:
    job = remote_job(context, name)
    run = create_run_for_test(
        instance, job_name=name, remote_job_origin=job.get_remote_origin(), job_code_origin=job.get_python_origin()
    )
    return instance.launch_run(run.run_id, context)


def messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.message for entry in instance.all_logs(run_id)]


def wait_for_step(instance: dg.DagsterInstance, run_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(
        e.is_dagster_event and e.dagster_event_type == dg.DagsterEventType.STEP_START for e in instance.all_logs(run_id)
    ):
        assert time.monotonic() < deadline, messages(instance, run_id)
        time.sleep(0.2)


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return int(run.tags[WORKER_TAG].rpartition(":")[2])


def test_a_run_executes_in_a_worker_forked_from_the_preloaded_process(workspace):
    instance, context = workspace
    assert isinstance(instance.run_launcher, PreloadedRunLauncher)
    run = launch(instance, context, "quick")
    finished = poll_for_finished_run(instance, run.run_id, timeout=120)
    said = messages(instance, run.run_id)
    assert finished.status == dg.DagsterRunStatus.SUCCESS, said
    pid = worker_pid(instance, run.run_id)
    assert pid != os.getpid()
    assert f"Started process for run (pid: {pid})." in said  # Dagster's own worker, in the forked process
    assert f"worker pid={pid} kubernetes preloaded=True" in said
    assert any(m.startswith("worker parent: ") and "multiprocessing.forkserver" in m for m in said), said
    instance.run_launcher.join(30)  # the worker exits once it has written the run's end
    assert instance.run_launcher.check_run_worker_health(finished).status == WorkerStatus.SUCCESS


def test_terminating_a_run_interrupts_its_worker_and_cancels_the_run(workspace):
    instance, context = workspace
    run = launch(instance, context, "slow")
    wait_for_step(instance, run.run_id)
    assert instance.run_launcher.terminate(run.run_id)
    finished = poll_for_finished_run(instance, run.run_id, timeout=60)
    assert finished.status == dg.DagsterRunStatus.CANCELED, messages(instance, run.run_id)
    assert not instance.run_launcher.terminate(run.run_id)  # nothing left to terminate


def test_run_monitoring_finds_a_killed_worker_by_its_pid(workspace):
    instance, context = workspace
    run = launch(instance, context, "slow")
    wait_for_step(instance, run.run_id)
    started = instance.get_run_by_id(run.run_id)
    assert started is not None and instance.run_launcher.check_run_worker_health(started).status == WorkerStatus.RUNNING
    pid = worker_pid(instance, run.run_id)
    assert is_forked_worker(pid)
    assert not is_forked_worker(os.getpid())  # a live process given the pid later is not taken for the worker
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (health := instance.run_launcher.check_run_worker_health(started)).status == WorkerStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert health.status == WorkerStatus.FAILED and f"pid {pid} exited with code -9" in str(health.msg)
    # A daemon started later (the worker is not its child) finds it gone by the pid in the run's tags.
    restarted = PreloadedRunLauncher()
    gone = restarted.check_run_worker_health(started)
    assert gone.status == WorkerStatus.FAILED and gone.msg == f"run worker pid {pid} is gone"


def test_a_code_location_in_another_python_is_refused_by_name(workspace):
    instance, context = workspace
    job = remote_job(context, "quick")
    origin = job.get_python_origin()
    elsewhere = origin._replace(
        repository_origin=origin.repository_origin._replace(executable_path="/opt/other/bin/python")
    )
    run = create_run_for_test(
        instance, job_name="quick", remote_job_origin=job.get_remote_origin(), job_code_origin=elsewhere
    )
    with pytest.raises(dg.DagsterInvariantViolationError, match="/opt/other/bin/python") as raised:
        instance.launch_run(run.run_id, context)
    assert sys.executable in str(raised.value) and "default run launcher" in str(raised.value)
