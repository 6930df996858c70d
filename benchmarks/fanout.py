"""Fan-out: one push changes 20 hubs; how long a real `dagster dev` takes to deploy them all, per run limit.

Why: a chart or shared-values change redeploys every hub, and operators want it done in about
ceil(hubs / limit) deploys' time, not hubs x one deploy. The shipped dagster.yaml runs at most
`concurrency.runs.max_concurrent_runs` runs at once (and one run per hub, by the `hub` tag limit); this script
measures what that gives end to end, sensor included, for limits 1, 4 and 8.

What runs (everything real, as in tests/test_end_to_end.py): a bare deployment repository (`staging` only, so
only staging deploys) with `--hubs` hubs on a tiny chart; a real `dagster dev` (webserver and daemon,
tests/services/dagster_dev.py) whose git sensor polls it every `--sensor-interval` seconds; run workers building
images with the Docker engine and pushing them to Debian's `docker-registry`; helm on the local control plane
(tests/services/cluster.py: real etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with a kwok
node whose pods become Running and Ready at once).

How a deploy is given a set time, deterministically: the chart has a `post-install,post-upgrade` hook Job.
helm waits, after the release's resources are ready, until the hook Job has completed. Its pod runs nothing on
the kwok node; kwok marks it Succeeded the pod's annotation `pod-complete.stage.kwok.x-k8s.io/delay` after it
became Ready (hubploy_dagster/local_cluster_stages.yaml), and the real Job controller then completes the Job.
The hub values of each measured push set that delay to `--deploy-seconds`: no container, sleep or polling of the
benchmark's own is involved, and everything else in a deploy (run worker start, image step, helm template and
upgrade, checks) is the product's real cost. During the warm-up (the first start deploys every hub from the
initial commit) the delay is 0.

For each limit, largest first (`dagster dev` restarted with a DAGSTER_HOME dagster.yaml that is the shipped one with only
`max_concurrent_runs` changed, and the per-cluster limit raised to it: every hub here shares one cluster; the instance's storage, hence the sensor's cursor and the deployed releases, is
kept from one start to the next):
  1. one deploy alone: a push changing one hub's values; its run's start to end is "one deploy's time";
  2. the fan-out: a push changing all hubs' values at once; wall time = the first run's start to the last run's
     end (GraphQL run records), against ceil(hubs / limit) x one deploy's time (target ratio <= 1.3); latency =
     the push (when `git push` returned) to the first run's release step start (its ExecutionStepStartEvent),
     minus the sensor interval (target <= 10 s), with its parts: push to the sensor tick that requested the runs,
     tick to the first run's start, run start to its release step.

The machine has 2 cores; each run is a process that loads the code location and runs helm: the figures for
limits 4 and 8 are what this machine gives, not tuned. The exit status is 0 whenever every run succeeded: the
verdicts (met / NOT met) are in the report.

    .venv/bin/python benchmarks/fanout.py [--hubs 20] [--deploy-seconds 10] [--limits 1,4,8]
                                          [--sensor-interval 30] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from common import git, machine, progress
from replay import (
    BASE_IMAGE,
    PROJECT_ROOT,
    chart_files,
    deploy_services,
    exit_on_sigterm,
    hub_files,
)
from synthetic_repo import DEFAULT_WORKDIR

HOOK_TEMPLATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-slow-hook
  annotations:
    "helm.sh/hook": post-install,post-upgrade
    "helm.sh/hook-delete-policy": before-hook-creation
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        pod-complete.stage.kwok.x-k8s.io/delay: {{ .Values.config.hookDelay | default "0s" | quote }}
    spec:
      restartPolicy: Never
      containers:
        - name: wait
          image: "{{ .Values.jupyterhub.singleuser.image.name }}:{{ .Values.jupyterhub.singleuser.image.tag }}"
"""
WAIT_S = 1800.0


# --- the deployment repository -------------------------------------------------------------------------------


@dataclass
class Origin:
    """A bare repository the sensor watches, and a work clone pushes are made from."""

    bare: Path
    work: Path
    hubs: list[str]
    revision: int = 0
    hook_seconds: float = 0.0  # how long the hook Job of each changed hub takes (kwok's pod-complete delay)

    @classmethod
    def create(cls, workdir: Path, hubs: int, image_prefix: str) -> Origin:
        origin = cls(workdir / "deployment.git", workdir / "work", [f"hub-{i:02d}" for i in range(hubs)])
        git(workdir, "init", "--quiet", "--bare", "--initial-branch=staging", str(origin.bare))
        git(workdir, "init", "--quiet", "--initial-branch=staging", str(origin.work))
        for key, value in (("user.name", "Benchmark"), ("user.email", "bench@example.org")):
            git(origin.work, "config", key, value)
        files = chart_files(0, {"chart/templates/hook.yaml": HOOK_TEMPLATE})
        for hub in origin.hubs:
            files.update(hub_files(hub, image_prefix, helm_timeout="10m"))
        origin.push("all hubs", files)
        return origin

    def push(self, message: str, files: dict[str, str]) -> str:
        """Commit `files` and `git push` staging; returns the new head."""
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", str(self.bare), "staging:refs/heads/staging")
        return git(self.work, "rev-parse", "HEAD")

    def change(self, hubs: list[str]) -> dict[str, str]:
        """New common values for each of `hubs`, with their hook's length."""
        self.revision += 1
        values = f"config:\n  fanout: {self.revision}\n  hookDelay: {self.hook_seconds}s\n"
        return {f"hubs/{hub}/config/common.yaml": values for hub in hubs}


# --- dagster dev with a run limit ----------------------------------------------------------------------------


@contextlib.contextmanager
def dagster_dev_with_limit(env: dict[str, str], workdir: Path, limit: int) -> Iterator[Any]:
    """`dagster dev` whose DAGSTER_HOME dagster.yaml is the shipped one with `max_concurrent_runs: limit` (and the
    per-cluster limit at least `limit`).

    `start_dagster_dev` copies `<PROJECT_ROOT>/dagster.yaml` into `<workdir>/dagster-home` (the same folder at
    every start, so the instance's storage is kept): it is pointed at a folder holding that variant and the
    project's workspace.yaml (the code location is imported from the installed project).
    """
    from services import dagster_dev

    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    runs = settings["concurrency"]["runs"]
    runs["max_concurrent_runs"] = limit
    # Every hub here is on the one local cluster: the per-cluster limit (2 shipped) would cap every limit at 2.
    # It is raised to the run limit, so this measures the run limit (tests/test_rollout_daemon.py tests the other).
    for entry in runs["tag_concurrency_limits"]:
        if entry["key"] == "cluster":
            entry["limit"] = max(entry["limit"], limit)
    root = workdir / f"project-limit-{limit}"
    root.mkdir(exist_ok=True)
    (root / "dagster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    shutil.copy(PROJECT_ROOT / "workspace.yaml", root / "workspace.yaml")
    shipped_root, dagster_dev.PROJECT_ROOT = dagster_dev.PROJECT_ROOT, root
    try:
        dev = dagster_dev.start_dagster_dev(env, workdir)
    finally:
        dagster_dev.PROJECT_ROOT = shipped_root
    try:
        yield dev
    finally:
        dev.stop()


# --- measuring -----------------------------------------------------------------------------------------------

EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename ... on MessageEvent { timestamp } ... on StepEvent { stepKey } } }
  }
}
"""


def release_step_start(dev: Any, run_id: str) -> float:
    """When the run's release step started (epoch seconds), from its ExecutionStepStartEvent."""
    events = dev.graphql(EVENTS, {"runId": run_id})["logsForRun"]["events"]
    for event in events:
        if event["__typename"] == "ExecutionStepStartEvent" and (event.get("stepKey") or "").endswith("__releases"):
            return float(event["timestamp"]) / 1000
    raise AssertionError(f"run {run_id} has no release step start")


@dataclass
class Deploys:
    """The runs one push made, read back over GraphQL."""

    pushed: float
    runs: list[dict[str, Any]]
    release_starts: list[float]
    tick: float | None

    @property
    def wall(self) -> float:
        return max(r["endTime"] for r in self.runs) - min(r["startTime"] for r in self.runs)

    @property
    def latency(self) -> float:
        return min(self.release_starts) - self.pushed

    def to_json(self) -> dict[str, Any]:
        first_start = min(r["startTime"] for r in self.runs)
        return {
            "runs": len(self.runs),
            "wall_s": round(self.wall, 2),
            "run_seconds": sorted(round(r["endTime"] - r["startTime"], 2) for r in self.runs),
            "latency_s": round(self.latency, 2),
            "push_to_tick_s": round(self.tick - self.pushed, 2) if self.tick else None,
            "tick_to_first_run_start_s": round(first_start - self.tick, 2) if self.tick else None,
            "first_run_start_to_release_step_s": round(min(self.release_starts) - first_start, 2),
        }


def deploy_and_wait(dev: Any, origin: Origin, hubs: list[str], what: str) -> Deploys:
    """Push a change to `hubs`, wait until each has a finished run at that commit; every run must succeed."""
    sha = origin.push(f"{what}: {len(hubs)} hub(s)", origin.change(hubs))
    pushed = time.time()
    progress(f"  pushed {sha[:7]} ({what}, {len(hubs)} hubs); waiting for the runs")

    def finished() -> list[dict[str, Any]] | None:
        runs = dev.runs({"git_sha": sha})
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return runs if len(done) == len(hubs) == len(runs) else None

    runs = dev.wait_for(f"the {what} runs", finished, WAIT_S)
    failed = [r for r in runs if r["status"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed:\n{dev.diagnostics([r['runId'] for r in failed])}")
    ids = {r["runId"] for r in runs}
    ticks = [t for t in dev.sensor_ticks(limit=20, statuses=["SUCCESS"]) if ids & set(t["runIds"])]
    return Deploys(
        pushed,
        runs,
        [release_step_start(dev, r["runId"]) for r in runs],
        min(float(t["timestamp"]) for t in ticks) if ticks else None,
    )


def measure_limit(dev: Any, origin: Origin, limit: int, interval: int) -> dict[str, Any]:
    alone = deploy_and_wait(dev, origin, origin.hubs[:1], f"limit {limit}, one deploy alone")
    one = alone.runs[0]["endTime"] - alone.runs[0]["startTime"]
    fanout = deploy_and_wait(dev, origin, origin.hubs, f"limit {limit}, fan-out")
    expected = math.ceil(len(origin.hubs) / limit) * one
    return {
        "limit": limit,
        "one_deploy_s": round(one, 2),
        "alone": alone.to_json(),
        "fanout": fanout.to_json(),
        "expected_s": round(expected, 2),
        "ratio": round(fanout.wall / expected, 3),
        "latency_minus_interval_s": round(fanout.latency - interval, 2),
        "max_concurrent_runs_seen": max_overlap(fanout.runs),
    }


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """The most runs that were going at the same moment."""
    edges = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs])
    going = most = 0
    for _, step in edges:
        going += step
        most = max(most, going)
    return most


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": machine(dagster=version("dagster")),
        "parameters": {
            "hubs": args.hubs,
            "deploy_seconds": args.deploy_seconds,
            "limits": args.limits,
            "sensor_interval_s": args.sensor_interval,
        },
        "limits": [],
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-", dir=args.workdir))
    try:
        with deploy_services(workdir) as services:
            prefix = f"{services.registry.host}/fanout"
            origin = Origin.create(workdir, args.hubs, prefix)
            env = {
                **services.env,
                "HUBPLOY_REPO": str(origin.bare),
                "HUBPLOY_SENSOR_INTERVAL": str(args.sensor_interval),
                "HUBPLOY_BUILD_ARGS": f"BASE_IMAGE={BASE_IMAGE}",
                "XDG_CACHE_HOME": str(workdir / "cache"),
            }
            try:
                # Largest limit first: the warm-up (every hub deployed from the initial commit) goes fastest.
                for number, limit in enumerate(sorted(args.limits, reverse=True)):
                    progress(f"limit {limit}: starting dagster dev")
                    with dagster_dev_with_limit(env, workdir, limit) as dev:
                        if number == 0:
                            progress(f"  warm-up: the first start deploys all {args.hubs} hubs (hook delay 0)")
                            dev.wait_for("the warm-up deploys", lambda: warm(dev, args.hubs), WAIT_S)
                        origin.hook_seconds = args.deploy_seconds
                        result = measure_limit(dev, origin, limit, args.sensor_interval)
                    progress(f"  {json.dumps(result)}")
                    report["limits"].append(result)
            finally:
                from services.registry import remove_local_images

                remove_local_images(prefix)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["limits"].sort(key=lambda row: row["limit"])
    return report


def warm(dev: Any, hubs: int) -> bool:
    runs = dev.runs()
    if any(r["status"] in ("FAILURE", "CANCELED") for r in runs):
        raise RuntimeError(f"a warm-up run failed:\n{dev.diagnostics()}")
    return len(runs) == hubs and all(r["status"] == "SUCCESS" for r in runs)


def render(report: dict[str, Any]) -> tuple[str, bool]:
    m, p = report["machine"], report["parameters"]
    lines = [
        "== Fan-out: one push changing every hub, deployed by a real dagster dev, per run limit ==",
        f"machine: nproc={m['nproc']}, {m['cpu']}, {m['memory_gb']} GB, Python {m['python']}, dagster {m['dagster']};"
        f" load average at start {m['loadavg_at_start']}",
        f"{p['hubs']} hubs; hook {p['deploy_seconds']} s per deploy; sensor interval {p['sensor_interval_s']} s",
        "",
        f"{'limit':>5} {'one deploy':>10} {'expected':>9} {'fan-out wall':>12} {'ratio':>6} {'<=1.3':>6} "
        f"{'overlap':>7} {'push->helm':>10} {'-interval':>9} {'<=10s':>6}",
    ]
    ok = True
    for row in report["limits"]:
        ratio_met = row["ratio"] <= 1.3
        latency_met = row["latency_minus_interval_s"] <= 10
        ok = ok and ratio_met and latency_met
        lines.append(
            f"{row['limit']:>5} {row['one_deploy_s']:>9.1f}s {row['expected_s']:>8.1f}s {row['fanout']['wall_s']:>11.1f}s"
            f" {row['ratio']:>6.2f} {'met' if ratio_met else 'NOT':>6} {row['max_concurrent_runs_seen']:>7}"
            f" {row['fanout']['latency_s']:>9.1f}s {row['latency_minus_interval_s']:>8.1f}s"
            f" {'met' if latency_met else 'NOT':>6}"
        )
    lines.append("")
    for row in report["limits"]:
        f = row["fanout"]
        lines.append(
            f"limit {row['limit']}: fan-out runs {f['run_seconds'][0]}-{f['run_seconds'][-1]} s each (one alone "
            f"{row['one_deploy_s']} s); push->tick {f['push_to_tick_s']} s, tick->first run start "
            f"{f['tick_to_first_run_start_s']} s, run start->release step {f['first_run_start_to_release_step_s']} s;"
            f" alone: push->helm {row['alone']['latency_s']} s"
        )
    return "\n".join(lines), ok


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=20)
    parser.add_argument("--deploy-seconds", type=float, default=10.0, help="how long each deploy's hook takes")
    parser.add_argument("--limits", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--sensor-interval", type=int, default=30, help="seconds (the product's default: 30)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", action="store_true", help="print every figure as JSON after the table")
    args = parser.parse_args()
    report = fanout(args)
    text, _ = render(report)
    print(text)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
