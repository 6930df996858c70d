"""Dagster as production runs it: a code server, the webserver and the daemon as three separate processes.

Unlike `dagster dev` (which stops everything when its daemon dies), each process here lives and dies on its
own, so a test can kill the daemon, or one run's worker, and start the daemon again while the others go on.
They share one DAGSTER_HOME (the project's dagster.yaml) and a workspace naming the code server's port.
Run workers are forked beside the daemon by the project's run launcher (hubploy_dagster/run_launcher.py), as
on one production machine without per-run containers.

Fixture `dagster_split`: `start(env)` returns a running `SplitDagster`; everything is killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._grpc.client import DagsterGrpcClient

from services.dagster_dev import (
    EXEC_WITH_DEFAULT_SIGNALS,
    LOCATION,
    PROJECT_ROOT,
    DagsterDev,
    _wait_started,
    free_port,
    session_and_descendants,
)

WORKER_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


@dataclass
class SplitDagster:
    env: dict[str, str]
    home: Path
    log_path: Path
    code_port: int
    webserver: DagsterDev
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    webservers: list[DagsterDev] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> None:
        executable = str(Path(sys.executable).with_name(args[0]))
        with self.log_path.open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-c", EXEC_WITH_DEFAULT_SIGNALS, executable, *args[1:]],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start_webserver(self, *flags: str, port: int | None = None) -> DagsterDev:
        """A webserver on the workspace, on a loopback port (`--read-only`: one that only shows)."""
        port = port or free_port()
        workspace = str(self.home / "workspace.yaml")
        self.spawn("webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", workspace, *flags)
        webserver = DagsterDev(
            process=self.processes.pop("webserver"), port=port, home=self.home, log_path=self.log_path
        )
        self.webservers.append(webserver)
        if not _wait_started(webserver):
            pytest.fail(f"the webserver exited:\n{webserver.log_tail()}", pytrace=False)
        return webserver

    def start_daemon(self) -> None:
        self.spawn("daemon", "dagster-daemon", "run", "-w", str(self.home / "workspace.yaml"))

    def kill_daemon(self) -> None:
        """SIGKILL: no chance to finish a tick or hand anything over, as when its machine dies."""
        process = self.processes.pop("daemon")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def kill_run_worker(self, run_id: str) -> int:
        """SIGKILL the process executing a run, and every process it started (its step workers, helm)."""
        messages = self.webserver.run_messages(run_id)
        pids = [int(m.group(1)) for line in messages if (m := WORKER_PID.search(line))]
        assert pids, f"no run worker pid among the events of {run_id}: {messages[-20:]}"
        victims = {(pids[0], 0)} | session_and_descendants(pids[0])
        for pid, _ in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids[0]

    def stop(self) -> None:
        for process in [*self.processes.values(), *(webserver.process for webserver in self.webservers)]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def start_split(
    env: dict[str, str], workdir: Path, instance: dict[str, Any] | None = None, daemon: bool = True
) -> SplitDagster:
    """The three processes on the project's dagster.yaml, with the top-level keys of `instance` replaced
    (without the daemon, queued runs stay queued)."""
    home = workdir / "dagster-home"
    home.mkdir(parents=True)
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text()) | (instance or {})
    settings.setdefault("nux", {"enabled": False})
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    code_port, web_port = free_port(), free_port()
    grpc = {"host": "127.0.0.1", "port": code_port, "location_name": LOCATION}
    (home / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"grpc_server": grpc}]}))
    with dg.DagsterInstance.from_config(str(home)) as instance:  # storage made once, not raced by three processes
        instance.get_runs(limit=1)
    run_env = {
        **env,
        "DAGSTER_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "HUBPLOY_WEBSERVER_URL": f"http://127.0.0.1:{web_port}",
    }
    log_path = workdir / "dagster.log"
    split = SplitDagster(run_env, home, log_path, code_port, webserver=None)  # type: ignore[arg-type]
    split.spawn(
        "code-server",
        "dagster",
        "code-server",
        "start",
        "-h",
        "127.0.0.1",
        "-p",
        str(code_port),
        "-m",
        "hubploy_dagster.definitions",
        "--location-name",
        LOCATION,
    )
    wait_serving(code_port, split)
    try:
        split.webserver = split.start_webserver(port=web_port)
        if daemon:
            split.start_daemon()
    except BaseException:
        split.stop()
        raise
    return split


def wait_serving(port: int, split: SplitDagster, timeout: float = 120) -> None:
    """The code server answers only once it loaded the project: the webserver must not ask it sooner (it
    would record the location as failed and not ask again)."""
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if split.processes["code-server"].poll() is not None:
            pytest.fail(f"the code server exited:\n{split.log_path.read_text()[-3000:]}", pytrace=False)
        with contextlib.suppress(Exception):
            client.list_repositories()
            return
        time.sleep(0.5)
    pytest.fail(f"the code server did not serve on {port} within {timeout:.0f}s", pytrace=False)


class SplitLauncher:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[SplitDagster] = []

    def start(self, env: dict[str, str], instance: dict[str, Any] | None = None, daemon: bool = True) -> SplitDagster:
        workdir = Path(tempfile.mkdtemp(prefix=f"split{len(self.started)}-", dir=self.workdir))
        split = start_split({**os.environ, **env}, workdir, instance, daemon)
        self.started.append(split)
        return split


@pytest.fixture
def dagster_split() -> Iterator[SplitLauncher]:
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-dagster-split-"))
    launcher = SplitLauncher(workdir)
    try:
        yield launcher
    finally:
        for split in launcher.started:
            split.stop()
            time.sleep(0.5)
        shutil.rmtree(workdir, ignore_errors=True)
