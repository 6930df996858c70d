"""A real `dagster dev` (webserver + daemon) for end-to-end tests, its GraphQL API, and headless Chromium.

`dagster dev` runs as a subprocess in its own session and process group, with a temporary DAGSTER_HOME that
holds a copy of the project's dagster.yaml, `-w workspace.yaml` from the project root, on a free port of
127.0.0.1. At the end it is stopped as an operator would (SIGINT, i.e. Ctrl-C, to `dagster dev`, which
shuts its webserver, daemon and code servers down), then SIGTERM and SIGKILL to its process group after a
grace period, and last SIGKILL to anything left in its session (run workers, helm, docker CLIs).

Load with `-p services.dagster_dev` or `pytest_plugins = [..., "services.dagster_dev"]`. Fixtures:
- `dagster_dev`: a launcher; `dagster_dev.start(env)` starts one `dagster dev` with these environment
  variables on top of the test's own and returns a `DagsterDev` (GraphQL helpers, waits with diagnostics);
  everything it started is stopped when the test ends.
- `chromium`: headless Chromium (Debian `chromium`, installed by `scripts/setup.sh chromium`):
  `capture(url, png_path) -> dom` (one page load: screenshot and DOM), `screenshot(url, path)`, `dump_dom(url)`.
  `png_summary(path)` reads a screenshot with Pillow and counts colours and non-background pixels.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from hubploy_dagster.local_cluster import free_port

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCATION = "hubploy"
REPOSITORY = "__repository__"
START_TIMEOUT_S = 120.0
# `dagster dev` maps SIGTERM to its SIGINT handler; a shell starting background jobs (`cmd &` in a script, CI
# runners) hands them SIGINT *ignored*, and then dagster dev ignores both Ctrl-C and SIGTERM. Reset both to the
# default before exec'ing it (not preexec_fn: the test process has threads, e.g. fixtures' helpers).
EXEC_WITH_DEFAULT_SIGNALS = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
# Instance settings added to the DAGSTER_HOME copy of dagster.yaml when it does not set them itself:
# no "Join the Dagster community" modal over the UI (it would cover the screenshot).
INSTANCE_DEFAULTS: dict[str, Any] = {"nux": {"enabled": False}}
STOP_GRACE_S = 20.0
POLL_S = 1.0

METADATA_FIELDS = """
    label
    __typename
    ... on TextMetadataEntry { text }
    ... on IntMetadataEntry { intValue }
    ... on FloatMetadataEntry { floatValue }
    ... on BoolMetadataEntry { boolValue }
    ... on UrlMetadataEntry { url }
    ... on JsonMetadataEntry { jsonString }
    ... on PathMetadataEntry { path }
    ... on MarkdownMetadataEntry { mdStr }
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs {
      results {
        runId status creationTime startTime endTime jobName
        tags { key value }
        assetSelection { path }
        assetCheckSelection { name assetKey { path } }
      }
    }
    ... on PythonError { message }
  }
}
"""

MATERIALIZATIONS_QUERY = f"""
query Materializations($key: AssetKeyInput!, $limit: Int) {{
  assetOrError(assetKey: $key) {{
    __typename
    ... on Asset {{
      assetMaterializations(limit: $limit) {{ runId timestamp metadataEntries {{ {METADATA_FIELDS} }} }}
      assetObservations(limit: $limit) {{ runId timestamp metadataEntries {{ {METADATA_FIELDS} }} }}
    }}
  }}
}}
"""

CHECKS_QUERY = f"""
query Checks($key: AssetKeyInput!, $name: String!, $limit: Int!) {{
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: $limit) {{
    runId status timestamp
    evaluation {{ success description metadataEntries {{ {METADATA_FIELDS} }} }}
  }}
}}
"""

EVENTS_QUERY = """
query Events($runId: ID!, $limit: Int) {
  logsForRun(runId: $runId, limit: $limit) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level timestamp }
        ... on StepEvent { stepKey }
        ... on ExecutionStepFailureEvent { error { message } }
        ... on RunFailureEvent { pipelineRunFailureError: error { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LOCATION_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

TICKS_QUERY = """
query Ticks($selector: SensorSelector!, $limit: Int, $statuses: [InstigationTickStatus!]) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState {
        status
        ticks(limit: $limit, statuses: $statuses) { status timestamp skipReason runKeys runIds error { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # dagster dev colours its log


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """GraphQL metadata entries as {label: value} (JSON entries decoded)."""
    values: dict[str, Any] = {}
    for entry in entries:
        typename = entry.get("__typename", "")
        if typename == "JsonMetadataEntry":
            values[entry["label"]] = json.loads(entry["jsonString"])
            continue
        for key in ("text", "intValue", "floatValue", "boolValue", "url", "path", "mdStr"):
            if key in entry:
                values[entry["label"]] = entry[key]
                break
    return values


# -- processes ---------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, pgid, session, start time) of a live process, None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


Process = tuple[int, int]  # (pid, start time): a pid reused by another process later is not the same process


def _alive(process: Process) -> bool:
    stat = _proc_stat(process[0])
    return stat is not None and stat[3] == process[1]


def session_and_descendants(root: int) -> set[Process]:
    """Live processes in `root`'s session, plus its descendants (even those that started a session of their own)."""
    stats = {int(e): stat for e in os.listdir("/proc") if e.isdigit() and (stat := _proc_stat(int(e))) is not None}
    found = {pid for pid, stat in stats.items() if stat[2] == root}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat[0], []).append(pid)
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return {(pid, stats[pid][3]) for pid in found}


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(processes: set[Process], timeout: float) -> set[Process]:
    deadline = time.monotonic() + timeout
    alive = {p for p in processes if _alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if _alive(p)}
    return alive


# -- dagster dev -------------------------------------------------------------------------------------


@dataclass
class DagsterDev:
    """One running `dagster dev`; `url` is its webserver (http://127.0.0.1:PORT)."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    stopped: bool = False
    stop_report: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # GraphQL ---------------------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
        return body["data"]

    def runs(self, tags: dict[str, str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Runs (newest first) with all of `tags`; each with `tags` as a dict and `assets` as "a/b" strings."""
        run_filter = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]} if tags else None
        data = self.graphql(RUNS_QUERY, {"filter": run_filter, "limit": limit})["runsOrError"]
        if data["__typename"] != "Runs":
            raise AssertionError(f"runsOrError: {data}")
        runs = []
        for run in data["results"]:
            run = dict(run)
            run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
            run["assets"] = sorted("/".join(key["path"]) for key in run.pop("assetSelection") or [])
            run["checks"] = sorted(
                f"{'/'.join(c['assetKey']['path'])}:{c['name']}" for c in run.pop("assetCheckSelection") or []
            )
            runs.append(run)
        return runs

    def materializations(self, asset: str, limit: int = 20) -> list[dict[str, Any]]:
        """Materializations of asset "a/b" (newest first): runId, timestamp (ms), metadata {label: value}."""
        return self._asset_events(asset, limit)[0]

    def observations(self, asset: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._asset_events(asset, limit)[1]

    def _asset_events(self, asset: str, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        data = self.graphql(MATERIALIZATIONS_QUERY, {"key": {"path": asset.split("/")}, "limit": limit})
        found = data["assetOrError"]
        if found["__typename"] != "Asset":
            return [], []
        return tuple(  # type: ignore[return-value]
            [
                {
                    "runId": e["runId"],
                    "timestamp": float(e["timestamp"]),
                    "metadata": metadata_values(e["metadataEntries"]),
                }
                for e in found[kind]
            ]
            for kind in ("assetMaterializations", "assetObservations")
        )

    def check_executions(self, asset: str, check: str, limit: int = 20) -> list[dict[str, Any]]:
        """Executions of a check (newest first): runId, status, success, description, metadata."""
        data = self.graphql(CHECKS_QUERY, {"key": {"path": asset.split("/")}, "name": check, "limit": limit})
        executions = []
        for execution in data["assetCheckExecutions"]:
            evaluation = execution.get("evaluation") or {}
            executions.append(
                {
                    "runId": execution["runId"],
                    "status": execution["status"],
                    "success": evaluation.get("success"),
                    "description": evaluation.get("description"),
                    "metadata": metadata_values(evaluation.get("metadataEntries") or []),
                }
            )
        return executions

    def run_messages(self, run_id: str, limit: int = 400) -> list[str]:
        data = self.graphql(EVENTS_QUERY, {"runId": run_id, "limit": limit})["logsForRun"]
        if data["__typename"] != "EventConnection":
            return [str(data)]
        lines = []
        for event in data["events"]:
            error = (event.get("error") or event.get("pipelineRunFailureError") or {}).get("message")
            lines.append(
                f"{event.get('level', '')} {event['__typename']} {event.get('stepKey') or ''}: "
                f"{event.get('message', '')}" + (f"\n    {error.strip()}" if error else "")
            )
        return lines

    def sensor_ticks(
        self, sensor: str = "git_branches", limit: int = 8, statuses: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """The sensor's latest ticks (newest first); `statuses` e.g. ["SUCCESS"]: the ticks that requested runs."""
        selector = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION, "sensorName": sensor}
        variables = {"selector": selector, "limit": limit, "statuses": statuses}
        data = self.graphql(TICKS_QUERY, variables)["sensorOrError"]
        if data["__typename"] != "Sensor":
            return [data]
        return data["sensorState"]["ticks"]

    def location_status(self) -> tuple[str, str | None]:
        """(loadStatus, error message) of the project's code location."""
        data = self.graphql(LOCATION_QUERY)["workspaceOrError"]
        for entry in data.get("locationEntries", []):
            if entry["name"] == LOCATION:
                error = entry.get("locationOrLoadError") or {}
                return entry["loadStatus"], error.get("message")
        return "MISSING", None

    # waiting and diagnostics -------------------------------------------------------------------------

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(ANSI.sub("", self.log_path.read_text(errors="replace")).splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def diagnostics(self, run_ids: list[str] | None = None) -> str:
        """The log tail, every run's status, the sensor's last ticks and the events of failed (or given) runs."""
        parts = [f"--- dagster dev log ({self.log_path}), last lines ---", self.log_tail()]
        try:
            runs = self.runs()
            parts.append("--- runs (newest first) ---")
            for run in runs:
                tags = {k: v for k, v in run["tags"].items() if not k.startswith("dagster/")}
                parts.append(
                    f"{run['runId'][:8]} {run['status']:<8} created={run['creationTime']:.1f} "
                    f"start={run['startTime']} end={run['endTime']} {tags} {run['assets']}"
                )
            parts.append("--- git_branches sensor, last ticks ---")
            parts += [json.dumps(tick)[:600] for tick in self.sensor_ticks()]
            wanted = set(run_ids or []) | {r["runId"] for r in runs if r["status"] in ("FAILURE", "CANCELED")}
            for run_id in sorted(wanted):
                parts.append(f"--- events of run {run_id} ---")
                parts += self.run_messages(run_id)[-60:]
        except Exception as exc:  # the webserver may be the thing that broke
            parts.append(f"(GraphQL unavailable: {exc!r})")
        return "\n".join(parts)

    def wait_for(self, what: str, condition: Callable[[], T | None], timeout: float = 180.0) -> T:
        """Poll `condition` until it returns something truthy; fail with diagnostics after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"dagster dev exited ({self.process.returncode}) while waiting for {what}\n{self.log_tail()}"
                )
            try:
                result = condition()
                if result:
                    return result
            except (httpx.HTTPError, AssertionError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f}s waiting for {what}"
                    + (f" (last error: {last_error})" if last_error else "")
                    + "\n"
                    + self.diagnostics(),
                    pytrace=False,
                )
            time.sleep(POLL_S)

    # lifecycle ---------------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE_S) -> dict[str, Any]:
        """Ctrl-C, then SIGTERM and SIGKILL to the group, then SIGKILL to stragglers; returns what it took."""
        if self.stopped:
            return {}
        self.stopped = True
        pid = self.process.pid
        began = time.monotonic()
        report: dict[str, Any] = {"signals": []}
        before = session_and_descendants(pid)
        if self.process.poll() is None:
            report["signals"].append("SIGINT")
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                report["signals"].append("SIGTERM(group)")
                _signal_group(pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    report["signals"].append("SIGKILL(group)")
                    _signal_group(pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
        # Children that outlive `dagster dev` (a run worker, a helm or docker CLI it started): the group, then
        # any process of its session or tree, by pid.
        left = _wait_gone(before | session_and_descendants(pid), 5)
        if left:
            report["signals"].append(f"SIGTERM(group, {len(left)} left)")
            _signal_group(pid, signal.SIGTERM)
            left = _wait_gone(left, 5)
        if left:
            report["signals"].append(f"SIGKILL({sorted(left)})")
            _signal_group(pid, signal.SIGKILL)
            for straggler in left:
                if _alive(straggler):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(straggler[0], signal.SIGKILL)
            left = _wait_gone(left, 5)
        report["left"] = sorted(left)
        report["returncode"] = self.process.returncode
        report["seconds"] = round(time.monotonic() - began, 1)
        self.stop_report = report
        return report


def start_dagster_dev(
    env: dict[str, str], workdir: Path, attempts: int = 3, instance_defaults: dict[str, Any] | None = None
) -> DagsterDev:
    """Start `dagster dev` with `env` (complete environment) in a fresh DAGSTER_HOME under `workdir`.

    DAGSTER_HOME gets a copy of the project's dagster.yaml, plus the top-level keys of `instance_defaults`
    (default INSTANCE_DEFAULTS) it does not set. Returns once the webserver answers GraphQL and the code
    location has loaded (or fails with the log). HUBPLOY_WEBSERVER_URL is the chosen address unless `env` sets it.
    """
    dagster = Path(sys.executable).with_name("dagster")
    home = workdir / "dagster-home"
    home.mkdir(parents=True, exist_ok=True)
    shipped = (PROJECT_ROOT / "dagster.yaml").read_text()
    settings = yaml.safe_load(shipped) or {}
    extra = {
        k: v
        for k, v in (INSTANCE_DEFAULTS if instance_defaults is None else instance_defaults).items()
        if k not in settings
    }
    (home / "dagster.yaml").write_text(
        shipped
        + ("\n# added by the test harness (tests/services/dagster_dev.py)\n" + yaml.safe_dump(extra) if extra else "")
    )
    for attempt in range(1, attempts + 1):
        port = free_port()
        log_path = workdir / f"dagster-dev-{attempt}.log"
        run_env = {**env, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        run_env.setdefault("HUBPLOY_WEBSERVER_URL", f"http://127.0.0.1:{port}")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    EXEC_WITH_DEFAULT_SIGNALS,
                    str(dagster),
                    "dev",
                    "-w",
                    str(PROJECT_ROOT / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                cwd=PROJECT_ROOT,
                env=run_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        dev = DagsterDev(process=process, port=port, home=home, log_path=log_path)
        try:
            if _wait_started(dev):
                return dev
        except BaseException:
            dev.stop()
            raise
        dev.stop()  # exited early: most likely someone took the port in between; try another
    pytest.fail(f"dagster dev did not start in {attempts} attempts:\n{dev.log_tail()}", pytrace=False)


def _wait_started(dev: DagsterDev) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    status, error = "UNKNOWN", None
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            return False
        try:
            status, error = dev.location_status()
        except (httpx.HTTPError, AssertionError):
            status, error = "UNREACHABLE", None
        if status == "LOADED":
            if error:
                pytest.fail(f"the code location {LOCATION} failed to load: {error}\n{dev.log_tail()}", pytrace=False)
            return True
        time.sleep(0.5)
    pytest.fail(
        f"dagster dev did not serve a loaded code location within {START_TIMEOUT_S:.0f}s "
        f"(last status {status}):\n{dev.log_tail()}",
        pytrace=False,
    )


class DagsterDevLauncher:
    """The `dagster_dev` fixture: `start(env)` returns a running DagsterDev; all are stopped at teardown."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[DagsterDev] = []
        self.stop_reports: list[dict[str, Any]] = []
        self.keep_logs: Path | None = None  # set to a file path: the logs are copied there after the stop

    def start(
        self, env: dict[str, str], base: dict[str, str] | None = None, instance_defaults: dict[str, Any] | None = None
    ) -> DagsterDev:
        """Start `dagster dev` with the test's environment (or `base`) plus `env` (see `start_dagster_dev`)."""
        workdir = Path(tempfile.mkdtemp(prefix=f"dev{len(self.started)}-", dir=self.workdir))
        dev = start_dagster_dev(
            {**(os.environ if base is None else base), **env}, workdir, instance_defaults=instance_defaults
        )
        self.started.append(dev)
        return dev

    def stop_all(self) -> None:
        for dev in reversed(self.started):
            self.stop_reports.append(dev.stop())
        if self.keep_logs is not None and self.started:
            self.keep_logs.parent.mkdir(parents=True, exist_ok=True)
            with self.keep_logs.open("w") as out:
                for dev in self.started:
                    out.write(f"=== {dev.log_path} (stop: {dev.stop_report}) ===\n")
                    text = dev.log_path.read_text(errors="replace") if dev.log_path.exists() else "(no log)\n"
                    out.write(ANSI.sub("", text))


@pytest.fixture
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDevLauncher]:
    # Not tmp_path: dagster dev's own paths (DAGSTER_HOME, sockets) had better be short.
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-dagster-dev-"))
    launcher = DagsterDevLauncher(workdir)
    try:
        yield launcher
    finally:
        launcher.stop_all()
        left = [report for report in launcher.stop_reports if report.get("left")]
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            pytest.fail(f"processes of dagster dev survived SIGKILL: {left}", pytrace=False)


# -- chromium --------------------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1600,1000",
)


class Chromium:
    """Headless Chromium, one process per call, in its own process group and temporary profile."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir

    def _run(self, args: list[str], budget_ms: int, timeout: float) -> subprocess.CompletedProcess[bytes]:
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.workdir)
        command = [
            self.binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *args,
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=10)
            pytest.fail(f"chromium did not finish within {timeout:.0f}s: {stderr.decode(errors='replace')[-2000:]}")
        finally:
            if session_and_descendants(process.pid):  # renderer, GPU or zygote processes left behind
                _signal_group(process.pid, signal.SIGKILL)
            shutil.rmtree(profile, ignore_errors=True)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def capture(self, url: str, path: Path, budget_ms: int = 15000, timeout: float = 90.0) -> str:
        """Load `url` once: write its screenshot (PNG) to `path` and return its DOM after the time budget."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        result = self._run([f"--screenshot={path}", "--dump-dom", url], budget_ms, timeout)
        errors = result.stderr.decode(errors="replace")[-2000:]
        if result.returncode != 0 or not path.exists():
            pytest.fail(f"chromium failed ({result.returncode}), screenshot written: {path.exists()}: {errors}")
        return result.stdout.decode(errors="replace")

    def screenshot(self, url: str, path: Path, budget_ms: int = 15000, timeout: float = 90.0) -> Path:
        self.capture(url, path, budget_ms, timeout)
        return path

    def dump_dom(self, url: str, budget_ms: int = 15000, timeout: float = 90.0) -> str:
        result = self._run(["--dump-dom", url], budget_ms, timeout)
        if result.returncode != 0:
            pytest.fail(
                f"chromium --dump-dom failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result.stdout.decode(errors="replace")


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run `scripts/setup.sh chromium` (Debian's chromium)", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-chromium-"))
    try:
        yield Chromium(binary, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- PNG -------------------------------------------------------------------------------------------


@dataclass
class PngSummary:
    width: int
    height: int
    colours: int  # distinct RGB colours (of a sample of pixels)
    background: tuple[int, int, int]  # the most common colour
    foreground_fraction: float  # pixels that differ clearly from the background


def png_summary(path: Path, step: int = 2) -> PngSummary:
    """Summarise a screenshot's pixels (Pillow): size, colours, the background and how much differs from it."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = [rgb.getpixel((x, y)) for y in range(0, height, step) for x in range(0, width, step)]
    counts: dict[tuple[int, int, int], int] = {}
    for pixel in pixels:
        counts[pixel] = counts.get(pixel, 0) + 1
    background = max(counts, key=counts.__getitem__)
    different = sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, background, strict=True)) > 48)
    return PngSummary(width, height, len(counts), background, different / max(1, len(pixels)))


__all__ = [
    "Chromium",
    "DagsterDev",
    "DagsterDevLauncher",
    "PngSummary",
    "chromium",
    "dagster_dev",
    "metadata_values",
    "png_summary",
    "start_dagster_dev",
]
