"""Code-location load and git sensor tick cost: a repository with many hubs against one with a single hub, same run.

Why this benchmark exists: the code location builds three assets and five asset checks per hub when it loads,
and Dagster turns them into jobs, a snapshot sent over gRPC and an asset graph in every process that talks to
the code server, so its load time and memory grow with the number of hubs; the git sensor runs every 30 s and
must stay far below that. This script generates (or reuses, see `synthetic_repo.py`) two repositories of the
same history length, one with N hubs and one with a single hub (both have `staging` and `prod`), clones each
into a scratch bare mirror (hard links: the cached repositories are never written) and measures, for each:

  load, in a fresh process per run, started by a small launcher that reads its `os.wait4` rusage (peak memory
  of the process and the git processes it reaped; a code server it leaves behind is reaped and shown apart):
    - a child that does what a code server does when it starts: import `hubploy_dagster.definitions`,
      `build_definitions(path)`, resolve the repository (`Definitions.get_repository_def`), build the
      snapshot the webserver and daemon fetch (`RepositorySnap.from_def`), serialize it (the gRPC payload)
      and deserialize it (what each client does), each phase timed;
    - `dagster definitions validate -m hubploy_dagster.definitions` with HUBPLOY_REPO set: the whole load in
      one process (code location, snapshot, remote repository, asset graph);
    - the same with `--load-with-grpc`: a separate code server process and a client fetching its snapshot,
      as `dagster dev` runs it (its webserver and daemon each fetch the snapshot from one code server). This
      is the figure an operator waits for at start-up and at every reload (a new hub needs one);
  sensor ticks, in this process, on the code location's own sensor (`git_branches`) with its definitions
  already resolved, as in a running code server, each built with `build_sensor_context` and an ephemeral
  instance:
    (a) no new commit: one `git ls-remote`, the common case;
    (b) one new commit on staging touching one hub's config (a local path: no fetch): change set + plan;
    (c) first tick, no cursor, nothing deployed: plans every hub on both branches and requests N staging
        runs; prod waits at the promotion gate (N look-ups of a healthy staging mark, none found);
    (d) the next tick once staging's releases and healthy marks are recorded (as the runs and their checks
        record them, through `hubploy_dagster.record`): N prod runs;
    (c') first tick, no cursor, every hub already deployed as committed (a lost cursor): 0 runs requested.
  Each tick asserts the runs it requested and the cursor it left; the JSON report counts them (`requests`).

It also counts, untimed, how many times one load calls `build_definitions`. Every figure is measured in this
run on this machine, and the ratios N/1 are computed from them.

    .venv/bin/python benchmarks/sensor_and_load.py [--hubs 300] [--commits 20000] [--seed 1] [--workdir DIR]
                                                   [--repeat 5] [--load-repeat 1] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import Timing, git, machine, measure, progress
from synthetic_repo import DEFAULT_WORKDIR, SyntheticRepo, SyntheticRepoSpec, ensure_repo

BRANCHES = {"staging": "staging", "prod": "prod"}  # environment -> branch: the default chain (the ticks check it)
SENSOR_NAME = "git_branches"
VALIDATE_OK = "All code locations passed validation"
VENV_BIN = Path(sys.executable).parent


# --- load: one fresh process per measurement ------------------------------------------------------------------


def child_load(path: str, out: Path, profile_top: int) -> None:
    """Runs in the child: the phases of a code server's start, timed; results written to `out` as JSON."""
    started = time.time()
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    import dagster  # noqa: F401  (timed with the rest of the imports)
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster_shared.serdes import deserialize_value, serialize_value

    from hubploy_dagster.definitions import build_definitions

    lap("import")
    profiler = cProfile.Profile() if profile_top else None
    if profiler:
        profiler.enable()
    defs = build_definitions(path)
    lap("build_definitions")
    repository = defs.get_repository_def()
    lap("get_repository_def")
    snapshot = RepositorySnap.from_def(repository)
    lap("snapshot")
    payload = serialize_value(snapshot)
    lap("serialize")
    deserialize_value(payload, RepositorySnap)
    lap("deserialize")
    result: dict[str, Any] = {
        "phases": phases,
        "snapshot_bytes": len(payload),
        "assets": len(repository.assets_defs_by_key),
        "asset_checks": len(repository.asset_graph.asset_check_keys),
        "jobs": len(repository.job_names),
        "sensors": len(repository.sensor_defs),
        "started": started,
    }
    if profiler:
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(profile_top)
        stats.sort_stats("tottime").print_stats(profile_top)
        result["profile"] = text.getvalue()
    result["finished"] = time.time()
    out.write_text(json.dumps(result))


# Starts the measured command and reports its rusage, and that of every process it leaves behind.
# - A process started by fork/vfork + exec keeps, in its ru_maxrss, the peak RSS of the memory it had before
#   exec (its parent's): started from this process (hundreds of MB once a 300-hub code location is loaded) every
#   child would report at least that much. This launcher (`python -S`, ~10 MB) is the parent instead.
# - `os.wait4` gives one child's own rusage (with the descendants it reaped), where RUSAGE_CHILDREN is the
#   maximum over every child ever waited for. `dagster definitions validate --load-with-grpc` does not wait for
#   the code server it starts (it asks it to shut down and exits), so the launcher makes itself a child
#   subreaper: orphaned descendants are reparented to it and reaped, each with its own rusage.
LAUNCHER = """
import ctypes, json, os, signal, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
spawned, clock = time.time(), time.perf_counter()
pid = os.posix_spawn(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
wall, reaped = time.perf_counter() - clock, time.time()
main = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
        "spawned": spawned, "reaped": reaped, "exit": os.waitstatus_to_exitcode(status)}
orphans, deadline = [], time.monotonic() + 90
while True:
    try:
        other, status, usage = os.wait4(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if other:
        orphans.append({"cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
                        "after_s": time.time() - reaped})
    elif time.monotonic() > deadline:
        for line in os.popen("ps -o pid= --ppid %d" % os.getpid()).read().split():
            os.kill(int(line), signal.SIGKILL)  # only our own orphans: this launcher is their parent now
    else:
        time.sleep(0.05)
with open(out, "w") as f:
    json.dump({**main, "orphans": orphans}, f)
"""


@dataclass
class ProcessRun:
    """The measured process (wall, CPU and peak RSS, with the descendants it reaped itself) and the processes it
    left behind (a code server), reaped by the launcher."""

    wall: float
    cpu: float
    maxrss_mb: float
    spawned: float
    reaped: float
    stderr: str
    orphans_cpu: float = 0.0
    orphans_maxrss_mb: float = 0.0
    orphans_after_s: float = 0.0  # how long after the command exited the last one ended


def run_process(cmd: list[str], env: dict[str, str], cwd: Path) -> ProcessRun:
    out = cwd / "launcher.json"
    with tempfile.TemporaryFile(dir=cwd) as err:
        launcher = [sys.executable, "-S", "-c", LAUNCHER, str(out), *cmd]
        returncode = subprocess.run(
            launcher, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=err, stderr=err
        ).returncode
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    data = json.loads(out.read_text()) if returncode == 0 else {"exit": returncode}
    if data["exit"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {data['exit']}:\n{stderr[-3000:]}")
    orphans = data["orphans"]
    return ProcessRun(
        data["wall"],
        data["cpu"],
        data["maxrss_kb"] / 1024,
        data["spawned"],
        data["reaped"],
        stderr,
        orphans_cpu=sum(o["cpu"] for o in orphans),
        orphans_maxrss_mb=max((o["maxrss_kb"] for o in orphans), default=0) / 1024,
        orphans_after_s=max((o["after_s"] for o in orphans), default=0.0),
    )


def load_env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "HUBPLOY_BRANCHES")}
    env["HUBPLOY_REPO"] = str(path)  # the CLI then uses a temporary instance in its working directory
    return env


def measure_child_load(path: Path, scratch: Path, profile_top: int = 0) -> dict[str, Any]:
    out = scratch / "child-load.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-load", str(path), "--child-out", str(out)]
    if profile_top:
        cmd += ["--child-profile", str(profile_top)]
    run = run_process(cmd, load_env(path), scratch)
    data = json.loads(out.read_text())
    data["start_and_exit"] = run.wall - sum(data["phases"].values())
    data["interpreter_start"] = data["started"] - run.spawned
    data["interpreter_exit"] = run.reaped - data["finished"]
    data.update(wall=run.wall, cpu=run.cpu, maxrss_mb=run.maxrss_mb)
    return data


def validate_command(grpc: bool) -> list[str]:
    grpc_option = ["--load-with-grpc"] if grpc else []
    return [str(VENV_BIN / "dagster"), "definitions", "validate", *grpc_option, "-m", "hubploy_dagster.definitions"]


def measure_validate(path: Path, scratch: Path, grpc: bool) -> ProcessRun:
    run = run_process(validate_command(grpc), load_env(path), scratch)
    assert VALIDATE_OK in run.stderr, run.stderr[-2000:]
    return run


# Counts build_definitions calls per process (untimed runs): a `sitecustomize` on PYTHONPATH wraps it in every
# Python process the command starts and appends one line per call to the file named by HUBPLOY_BENCH_COUNT.
COUNT_HOOK = """
import os
if os.environ.get("HUBPLOY_BENCH_COUNT"):
    import hubploy_dagster.definitions as module
    original = module.build_definitions

    def build_definitions(*args, **kwargs):
        with open(os.environ["HUBPLOY_BENCH_COUNT"], "a") as out:
            out.write(f"{os.getpid()}\\n")
        return original(*args, **kwargs)

    module.build_definitions = build_definitions
"""


def count_builds(path: Path, scratch: Path) -> dict[str, int]:
    """How many times one load calls build_definitions: in-process validate, and the --load-with-grpc code server."""
    hook = scratch / "count-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(COUNT_HOOK)
    counts: dict[str, int] = {}
    for key, grpc in (("validate", False), ("grpc", True)):
        log = scratch / f"count-{key}.txt"
        env = load_env(path)
        env.update(
            HUBPLOY_BENCH_COUNT=str(log), PYTHONPATH=os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        )
        run_process(validate_command(grpc), env, scratch)
        pids = log.read_text().split() if log.exists() else []
        counts[key] = max((pids.count(pid) for pid in set(pids)), default=0)  # calls in the process that loads
    return counts


# --- sensor ticks: in this process, as in a running code server ----------------------------------------------


def commit_one_hub(path: Path, hub_path: str, parent: str) -> str:
    """A new commit on staging (in the scratch mirror) changing one hub's common values; returns its sha."""
    content = f"jupyterhub:\n  hub:\n    config: {{}}\n# benchmark change on top of {parent}\n".encode()
    message = b"benchmark: tune one hub's values\n"
    stream = b"".join(
        [
            b"commit refs/heads/staging\n",
            b"committer Benchmark <bench@example.org> 1700000000 +0000\n",
            b"data %d\n%s\n" % (len(message), message),
            f"from {parent}\n".encode(),
            f"M 100644 inline {hub_path}/config/common.yaml\n".encode(),
            b"data %d\n%s\n\n" % (len(content), content),
            b"done\n",
        ]
    )
    subprocess.run(["git", "fast-import", "--quiet", "--done", "--date-format=raw"], cwd=path, input=stream, check=True)
    return git(path, "rev-parse", "refs/heads/staging")


def measure_ticks(path: Path, hub: str, repeat: int, profile_top: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a), (b), (c), (d), (c') on the mirror at `path`; `hub` gets the new commit. Returns figures and facts.

    Every case asserts the runs the sensor requests; `facts["requests"]` counts them per case and environment.
    """
    import dagster as dg

    from hubploy_dagster.chain import repository_chain
    from hubploy_dagster.definitions import build_definitions
    from hubploy_dagster.deployment import load_deployment
    from hubploy_dagster.keys import release_key
    from hubploy_dagster.policy import awaiting_promotion
    from hubploy_dagster.record import FINGERPRINT, GIT_SHA, DeployRecord, Healthy, observation
    from hubploy_dagster.repo import DeploymentRepo

    repo = DeploymentRepo(path)
    chain = repository_chain(repo)  # what the code location follows
    assert chain.branches == BRANCHES, chain  # a synthetic repository has no hubploy-environments.yaml
    first, promoted = chain.names
    started = time.perf_counter()
    defs = build_definitions(str(path))
    defs.get_repository_def()  # a code server has resolved its definitions before the first tick
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    facts: dict[str, Any] = {
        "definitions_in_process_s": time.perf_counter() - started,
        "interval_s": sensor.minimum_interval_seconds,
        "requests": {},
    }
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: dict[str, str] | None) -> Any:
        context = dg.build_sensor_context(
            instance=instance, cursor=json.dumps(cursor) if cursor else None, definitions=defs
        )
        return sensor(context)

    def expect(case: str, result: Any, wanted: list[tuple[str, str]], cursor: dict[str, str]) -> None:
        """The tick requested exactly `wanted` (hub, env) runs and left `cursor`; counted in the facts first."""
        assert isinstance(result, dg.SensorResult), result
        got = sorted((r.tags["hub"], r.tags["env"]) for r in result.run_requests or [])
        facts["requests"][case] = {env: sum(1 for _, e in got if e == env) for env in chain.names}
        assert got == sorted(wanted), (case, len(got), len(wanted), got[:4])
        assert json.loads(result.cursor) == cursor, (case, result.cursor)

    old = git(path, "rev-parse", f"refs/heads/{chain.branch(first)}")
    prod = git(path, "rev-parse", f"refs/heads/{chain.branch(promoted)}")
    hub_path = f"hubs/{hub}"
    new = commit_one_hub(path, hub_path, old)
    heads = {chain.branch(first): new, chain.branch(promoted): prod}
    at_new, at_prod = load_deployment(repo.snapshot(new)), load_deployment(repo.snapshot(prod))
    hubs = sorted(at_new.hubs)
    assert sorted(at_prod.hubs) == hubs, "the synthetic history never adds or removes a hub"
    new_fingerprints = {name: at_new.fingerprint(at_new.hubs[name]) for name in hubs}
    prod_fingerprints = {name: at_prod.fingerprint(at_prod.hubs[name]) for name in hubs}
    figures: dict[str, Any] = {}

    progress("  (a) no new commit ...")
    figures["tick_idle"], result = measure(repeat, lambda: tick(heads))
    assert isinstance(result, dg.SkipReason), result
    facts["requests"]["idle"] = dict.fromkeys(chain.names, 0)

    progress("  (b) one new commit touching one hub ...")
    figures["tick_one"], result = measure(repeat, lambda: tick({**heads, chain.branch(first): old}))
    expect("one", result, [(hub, first)], heads)

    progress(f"  (c) first tick, nothing deployed: {first} for every hub, {promoted} waits for its checks ...")
    figures["tick_first"], result = measure(repeat, lambda: tick(None))
    # The promotion gate: prod is asked for only once staging passed its checks; its cursor stays meanwhile.
    expect("first", result, [(name, first) for name in hubs], {chain.branch(first): new})
    record = DeployRecord(instance)
    figures["gate_lookups"], waiting = measure(
        repeat, lambda: awaiting_promotion(record, first, hubs, prod_fingerprints)
    )
    assert waiting == hubs, waiting[:5]
    profile = ""
    if profile_top:
        profiler = cProfile.Profile()
        profiler.enable()
        tick(None)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(profile_top)
        profile = text.getvalue()

    progress(f"  (d) {first} healthy, the next tick promotes every hub to {promoted} ...")
    # What the staging runs and their checks leave, as they record it: each hub's staging release (the
    # fingerprint the sensor compares) and healthy marks. prod is a first-parent ancestor of staging, so staging
    # deployed prod's commit on its way and its checks passed then: that configuration is marked healthy first.
    recording = time.perf_counter()
    for name in hubs:
        for event in (
            observation(name, first, Healthy(1, prod_fingerprints[name], prod)),
            dg.AssetMaterialization(
                release_key(name, first), metadata={FINGERPRINT: new_fingerprints[name], GIT_SHA: new}
            ),
            observation(name, first, Healthy(2, new_fingerprints[name], new)),
        ):
            instance.report_runless_asset_event(event)
    facts["record_first_s"] = time.perf_counter() - recording
    facts["prod_configuration_differs"] = sum(prod_fingerprints[n] != new_fingerprints[n] for n in hubs)
    figures["tick_promote"], result = measure(repeat, lambda: tick({chain.branch(first): new}))
    expect("promote", result, [(name, promoted) for name in hubs], heads)

    progress("  (c') first tick, every hub already deployed ...")
    recording = time.perf_counter()
    for name in hubs:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                release_key(name, promoted), metadata={FINGERPRINT: prod_fingerprints[name], GIT_SHA: prod}
            )
        )
    facts["record_promoted_s"] = time.perf_counter() - recording
    figures["tick_first_deployed"], result = measure(repeat, lambda: tick(None))
    expect("first_deployed", result, [], heads)
    instance.dispose()
    facts.update(changed_file=f"{hub_path}/config/common.yaml", profile=profile)
    return figures, facts


# --- report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str  # "s", "MB"
    tick: bool = False  # also shown as a share of the sensor interval


def rows(hubs: int) -> list[tuple[str, list[Row]]]:
    return [
        (
            "load in a fresh process, phases of a code server's start (one process per run)",
            [
                Row("child.import", "import dagster + hubploy_dagster.definitions", "s"),
                Row("child.build_definitions", "build_definitions(path)", "s"),
                Row("child.get_repository_def", "Definitions.get_repository_def()", "s"),
                Row("child.snapshot", "RepositorySnap.from_def (what clients fetch)", "s"),
                Row("child.serialize", "serialize the snapshot (code server)", "s"),
                Row("child.deserialize", "deserialize it (each client)", "s"),
                Row("child.start_and_exit", "interpreter start and exit", "s"),
                Row("child.wall", "process total, wall", "s"),
                Row("child.cpu", "process total, CPU (user+sys, with git)", "s"),
                Row("child.maxrss", "peak RSS", "MB"),
                Row("child.snapshot_mb", "snapshot, serialized", "MB"),
            ],
        ),
        (
            "dagster definitions validate -m hubploy_dagster.definitions (HUBPLOY_REPO set)",
            [
                Row("validate.wall", "in one process: wall", "s"),
                Row("validate.cpu", "in one process: CPU (user+sys)", "s"),
                Row("validate.maxrss", "in one process: peak RSS", "MB"),
                Row("grpc.wall", "--load-with-grpc (as dagster dev): wall", "s"),
                Row("grpc.cpu", "--load-with-grpc: CPU, the client (CLI)", "s"),
                Row("grpc.server_cpu", "--load-with-grpc: CPU, the code server", "s"),
                Row("grpc.maxrss", "--load-with-grpc: peak RSS, the client", "MB"),
                Row("grpc.server_maxrss", "--load-with-grpc: peak RSS, the code server", "MB"),
            ],
        ),
        (
            "sensor tick (git_branches), in a loaded code location, ephemeral instance",
            [
                Row("tick_idle", "(a) no new commit: ls-remote only", "s", tick=True),
                Row("tick_one", "(b) one new commit, one hub changed: change set + plan", "s", tick=True),
                Row("tick_first", f"(c) first tick, no cursor, nothing deployed: {hubs} staging runs", "s", tick=True),
                Row("gate_lookups", f"    the {hubs} prod promotion-gate look-ups of (c) alone", "s", tick=True),
                Row("tick_promote", f"(d) staging healthy, the next tick: {hubs} prod runs", "s", tick=True),
                Row("tick_first_deployed", "(c') first tick, no cursor, all deployed: 0 runs", "s", tick=True),
            ],
        ),
    ]


def value(figures: dict[str, Any], key: str) -> float:
    item: Any = figures
    for part in key.split("."):
        item = item[part]
    return item.median if isinstance(item, Timing) else float(item)


def flatten_load(loads: list[dict[str, Any]], validates: list[ProcessRun], grpcs: list[ProcessRun]) -> dict[str, Any]:
    """Medians over the load repetitions, keyed as the rows name them."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    child = {name: med([load["phases"][name] for load in loads]) for name in loads[0]["phases"]}
    for name in ("start_and_exit", "interpreter_start", "interpreter_exit", "wall", "cpu"):
        child[name] = med([load[name] for load in loads])
    child["maxrss"] = med([load["maxrss_mb"] for load in loads])
    child["snapshot_mb"] = loads[0]["snapshot_bytes"] / 2**20
    out: dict[str, Any] = {"child": child}
    for key, runs in (("validate", validates), ("grpc", grpcs)):
        out[key] = {
            "wall": med([r.wall for r in runs]),
            "cpu": med([r.cpu for r in runs]),
            "maxrss": med([r.maxrss_mb for r in runs]),
            "server_cpu": med([r.orphans_cpu for r in runs]),
            "server_maxrss": med([r.orphans_maxrss_mb for r in runs]),
            "server_exit_after": med([r.orphans_after_s for r in runs]),
        }
    return out


def report(params: dict[str, Any], info: dict[str, Any], results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    many, one = params["hubs"], 1
    big, small = results[many], results[one]
    interval = big["facts"]["interval_s"]
    print("\n== Code-location load and git sensor tick benchmark ==")
    print(
        f"machine: nproc={info['nproc']}, {info['cpu']}, {info['memory_gb']} GB, {info['git']}, "
        f"Python {info['python']}, dagster {info['dagster']}"
    )
    floor = info["python_floor"]
    print(
        f"         load average at start {info['loadavg_at_start']}; `python -c pass` measured the same way: "
        f"{floor['wall_s']:.3f} s, {floor['maxrss_mb']:.1f} MB"
    )
    for hubs in (many, one):
        repo = results[hubs]["repo"]
        print(
            f"repository: {hubs} hub{'s' if hubs != 1 else ''}, {params['commits']} commits, seed {params['seed']}, "
            f"prod {repo['prod_behind']} first-parent commits behind staging; {repo['path']}"
        )
    for hubs in (many, one):
        child = results[hubs]["load_runs"][0]
        print(
            f"code location ({hubs} hub{'s' if hubs != 1 else ''}): {child['assets']} assets, "
            f"{child['asset_checks']} asset checks, {child['jobs']} jobs, {child['sensors']} sensors"
        )
    print(
        f"load: {params['load_repeat']} run(s) of each, a fresh process per run (median); ticks: median of "
        f"{params['repeat']}; (b) commits to {big['facts']['changed_file']}; sensor interval {interval} s\n"
    )
    width = max(len(row.label) for _, section in rows(many) for row in section) + 2
    header = f"{f'{many} hubs':>10}  {'1 hub':>10}  {f'{many}/1':>8}  {f'{many} hubs / {interval} s interval':>24}"
    print(f"{'':<{width}}      {header}")
    ratios: dict[str, float] = {}
    for title, section in rows(many):
        print(title)
        for row in section:
            a, b = value(big["figures"], row.key), value(small["figures"], row.key)
            ratios[row.key] = a / b if b > 0 else float("inf")
            digits = 4 if row.unit == "s" and a < 10 else 1 if row.unit == "MB" else 2
            cells = f"{a:>10.{digits}f}  {b:>10.{digits}f}  {ratios[row.key]:>7.1f}x"
            if row.tick:
                cells += f"  {100 * a / interval:>23.2f}%"
            print(f"  {row.label:<{width - 2}}  {row.unit:<3} {cells}")
    child = big["figures"]["child"]
    print(
        f"\n{many} hubs, child process: interpreter start {child['interpreter_start']:.2f} s, "
        f"exit {child['interpreter_exit']:.2f} s; build_definitions in this (warm) process "
        f"{big['facts']['definitions_in_process_s']:.2f} s (1 hub: {small['facts']['definitions_in_process_s']:.2f} s)"
    )
    calls = info["build_definitions_calls"]
    print(
        f"build_definitions calls per load (counted, untimed): dagster definitions validate {calls['validate']}, "
        f"the --load-with-grpc code server {calls['grpc']}"
    )
    facts = big["facts"]
    print(
        f"(d) setup, untimed: recording the staging runs' {many} releases and {2 * many} healthy marks took "
        f"{facts['record_first_s']:.2f} s ({facts['prod_configuration_differs']} of {many} hubs' prod "
        f"configuration differs from staging's); (c') setup: {many} prod releases {facts['record_promoted_s']:.2f} s"
    )
    return ratios


def prepare(spec: SyntheticRepoSpec, workdir: Path, scratch: Path) -> tuple[SyntheticRepo, Path, dict[str, Any]]:
    started = time.perf_counter()
    synthetic, generated = ensure_repo(spec, workdir)
    progress(f"{spec.key()}: {'generated' if generated else 'cached'} in {time.perf_counter() - started:.1f} s")
    mirror = scratch / f"{spec.key()}.git"
    git(scratch, "clone", "--quiet", "--mirror", str(synthetic.path), str(mirror))  # local: objects hard-linked
    info = mirror / "objects" / "info"
    facts = {
        "path": str(synthetic.path),
        "mirror": str(mirror),
        "prod_behind": int(git(mirror, "rev-list", "--count", "--first-parent", "prod..staging")),
        "commit_graph": (info / "commit-graph").exists() or (info / "commit-graphs").exists(),
        "stats": synthetic.stats,
    }
    return synthetic, mirror, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=300, help="hubs in the large repository (the other has 1)")
    parser.add_argument("--commits", type=int, default=20_000, help="commits in each repository")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where generated repos are cached")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each sensor tick (median)")
    parser.add_argument("--load-repeat", type=int, default=1, help="fresh processes per load measurement (median)")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument("--profile", action="store_true", help="also print cProfiles of the large load and tick (c)")
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        child_load(args.child_load, args.child_out, args.child_profile)
        return
    warnings.filterwarnings("ignore", module="dagster")  # superseded/beta notices, not results
    os.environ.pop("HUBPLOY_BRANCHES", None)  # the ticks' code location follows the default chain, as load_env's

    info = machine(dagster=version("dagster"))
    params = {
        "hubs": args.hubs,
        "commits": args.commits,
        "seed": args.seed,
        "repeat": args.repeat,
        "load_repeat": args.load_repeat,
    }
    results: dict[int, dict[str, Any]] = {}
    profiles: dict[str, str] = {}
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sensor-load-", dir=args.workdir) as tmp:
        scratch = Path(tmp)
        floor = run_process([sys.executable, "-c", "pass"], dict(os.environ), scratch)
        info["python_floor"] = {"wall_s": round(floor.wall, 4), "maxrss_mb": round(floor.maxrss_mb, 1)}
        for hubs in (args.hubs, 1):
            spec = SyntheticRepoSpec(hubs=hubs, commits=args.commits, seed=args.seed)
            synthetic, mirror, repo_facts = prepare(spec, args.workdir, scratch)
            git(mirror, "rev-list", "--objects", "--all", "--count")  # page cache warm for every measurement alike
            loads, validates, grpcs = [], [], []
            for n in range(args.load_repeat):
                progress(f"[load {hubs} hubs, run {n + 1}] child process ...")
                loads.append(measure_child_load(mirror, scratch))
                progress(f"  {loads[-1]['wall']:.2f} s; dagster definitions validate ...")
                validates.append(measure_validate(mirror, scratch, grpc=False))
                progress(f"  {validates[-1].wall:.2f} s; dagster definitions validate --load-with-grpc ...")
                grpcs.append(measure_validate(mirror, scratch, grpc=True))
                progress(f"  {grpcs[-1].wall:.2f} s")
            if hubs == 1:  # the count does not depend on the number of hubs: use the cheap repository
                progress("[load 1 hub] counting build_definitions calls per load (untimed) ...")
                info["build_definitions_calls"] = count_builds(mirror, scratch)
            if args.profile and hubs == args.hubs:
                progress("[profile] the load, in one more child process ...")
                profiles["load"] = measure_child_load(mirror, scratch, profile_top=30)["profile"]
            progress(f"[ticks {hubs} hubs]")
            profile_top = 30 if args.profile and hubs == args.hubs else 0
            figures, facts = measure_ticks(mirror, synthetic.hub_names[0], args.repeat, profile_top)
            tick_profile = facts.pop("profile")
            if tick_profile:
                profiles["tick (c), first tick with nothing deployed"] = tick_profile
            figures.update(flatten_load(loads, validates, grpcs))
            results[hubs] = {
                "repo": repo_facts,
                "figures": figures,
                "facts": facts,
                "load_runs": [{k: v for k, v in load.items() if k != "profile"} for load in loads],
            }
    ratios = report(params, info, results)
    for name, text in profiles.items():
        if text:
            print(f"\ncProfile, {name} ({args.hubs} hubs):\n{text}")
    if args.json:
        document = {
            "parameters": params,
            "machine": info,
            "results": {
                str(hubs): {
                    **{k: v for k, v in result.items() if k != "figures"},
                    "figures": {
                        key: (item.to_json(total_cpu=True) if isinstance(item, Timing) else item)
                        for key, item in result["figures"].items()
                    },
                }
                for hubs, result in results.items()
            },
            "ratios": {key: round(r, 3) for key, r in ratios.items()},
        }
        print("\n" + json.dumps(document, indent=2, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
