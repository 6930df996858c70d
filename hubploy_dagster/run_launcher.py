"""Run workers forked from a process that has already imported Dagster and the libraries hubploy uses.

Dagster's default run launcher starts every run in a fresh Python process (the code server spawns it), and
the Docker and Kubernetes launchers start `dagster api execute_run` in a fresh container. Each of those
processes imports Dagster, its storage, the Kubernetes, Docker and cloud clients before its first step:
2 to 3 s of CPU per run on a small machine, more than everything the run then does itself. A chart bump that
deploys 300 hubs to staging and then to prod is 600 runs.

This launcher keeps one forkserver (Python's `multiprocessing`) beside the daemon, which imports those
libraries once; each run is a process forked from it, so a run pays only for what is its own: opening the
instance, reading its hubs' configuration, building their assets (`run_worker.py`) and executing its steps.
hubploy-dagster's own modules are not preloaded: a run always executes the code on disk, as the code server
shows it. The worker is otherwise exactly `dagster api execute_run`: the same events, interruption on
termination, and exit status.

Workers run on the daemon's machine, in the daemon's Python, with the environment the daemon had when the
forkserver started. For code servers in other environments use Dagster's default, Docker or Kubernetes run
launcher. Run monitoring finds a worker that died by its pid (the run's `hubploy/run_worker` tag).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

# What every run imports before its first step and that does not change while the daemon runs. Modules that
# are not installed are skipped by the forkserver (e.g. dagster_postgres with SQLite storage).
DEFAULT_PRELOAD = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster_postgres",
    "docker",
    "git",
    "google.auth.transport.requests",
    "google.oauth2.service_account",
    "httpx",
    "kubernetes.client",
    "kubernetes.config",
    "pydantic",
    "requests",
    "yaml",
)

WORKER_TAG = "hubploy/run_worker"  # "<host>:<pid>" of the process executing the run


def execute_run(serialized_args: str) -> None:
    """The forked worker: `dagster api execute_run ARGS`, with the arguments where `run_worker` reads them."""
    from dagster._cli.api import execute_run_command

    sys.argv = ["dagster", "api", "execute_run", serialized_args]
    execute_run_command.main(args=[serialized_args], prog_name="dagster api execute_run")


def is_forked_worker(pid: int) -> bool:
    """Whether pid is still a worker forked by a forkserver: on Linux not a later process given the same pid."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            return b"multiprocessing.forkserver" in (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PreloadedRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a forkserver that imported `preload_modules` once."""

    def __init__(
        self, inst_data: ConfigurableClassData | None = None, preload_modules: Sequence[str] = DEFAULT_PRELOAD
    ):
        self._inst_data = inst_data
        self._preload_modules = list(preload_modules)
        self._context: ForkServerContext | None = None
        self._workers: dict[str, ForkServerProcess] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"preload_modules": dg.Field([str], is_required=False, default_value=list(DEFAULT_PRELOAD))}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> PreloadedRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _forkserver(self) -> ForkServerContext:
        if self._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(self._preload_modules)
            self._context = context
        return self._context

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(f"Run {run.run_id} has no code origin to execute.")
        location_python = Path(origin.repository_origin.executable_path).resolve()
        if location_python != Path(sys.executable).resolve():
            raise dg.DagsterInvariantViolationError(
                f"PreloadedRunLauncher forks run workers from the daemon's Python ({sys.executable}), but the code "
                f"location of run {run.run_id} runs in {origin.repository_origin.executable_path}: use Dagster's "
                "default run launcher (or the Docker or Kubernetes one) for code locations in other environments."
            )
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True
        )
        with self._lock:  # the daemon may launch from several threads
            self._forget_finished()
            worker = self._forkserver().Process(
                target=execute_run, args=(dg.serialize_value(args),), name=f"dagster-run-{run.run_id}"
            )
            worker.start()
            self._workers[run.run_id] = worker
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: f"{socket.gethostname()}:{worker.pid}"})
        self._instance.report_engine_event(
            f"Run worker forked from the preloaded process (pid {worker.pid}).", run, cls=self.__class__
        )

    def _forget_finished(self) -> None:
        for run_id, worker in list(self._workers.items()):
            if worker.exitcode is not None:
                worker.close()
                del self._workers[run_id]

    def _worker_pid(self, run: dg.DagsterRun) -> int | None:
        """The run's worker pid when it runs on this machine."""
        host, _, pid = run.tags.get(WORKER_TAG, "").rpartition(":")
        return int(pid) if host == socket.gethostname() and pid.isdigit() else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = self._worker_pid(run)
        if pid is None:  # not started yet, or on another machine: run monitoring's cancel timeout ends it
            self._instance.report_engine_event("No run worker of this machine to interrupt.", run, cls=self.__class__)
            return False
        if self.check_run_worker_health(run).status != WorkerStatus.RUNNING:
            self._instance.report_run_canceled(run, "The run's worker was not running: nothing to interrupt.")
            return False
        # What the default launcher's worker does on termination: an interrupt, which Dagster turns into the
        # run's cancellation at the next safe point.
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        with self._lock:  # read together: another thread's launch may close a finished worker
            worker = self._workers.get(run.run_id)
            launched = (worker.pid, worker.exitcode) if worker is not None else None
        if launched is not None:
            pid, exitcode = launched
            if exitcode is None:
                return CheckRunHealthResult(WorkerStatus.RUNNING)
            status = WorkerStatus.SUCCESS if exitcode == 0 else WorkerStatus.FAILED
            return CheckRunHealthResult(status, f"run worker pid {pid} exited with code {exitcode}")
        pid = self._worker_pid(run)  # launched by an earlier daemon on this machine
        if pid is None:
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN, f"no run worker of this machine: {run.tags.get(WORKER_TAG)}"
            )
        if not is_forked_worker(pid):
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} is gone")
        return CheckRunHealthResult(WorkerStatus.RUNNING)

    def get_run_worker_debug_info(self, run: dg.DagsterRun, include_container_logs: bool | None = True) -> str | None:
        return f"run worker {run.tags.get(WORKER_TAG, 'not started')}"

    def join(self, timeout: int = 30) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.join(timeout)
