"""What one run pays before its first step: a run worker's load, with many hubs against one.

A run launched by the Docker or Kubernetes run launcher executes in a fresh process, `dagster api execute_run
ARGS`, which loads the code location before its first step. This measures that load in a child process, the
way the worker does it: the run's arguments on the command line (a run of `hub-0000`'s image and staging
release, recorded in a fresh instance), the code location's `defs()`, and the asset job the run executes. The
same child without the run's arguments is the full load a code server pays (every hub). The third figure is a
worker forked by hubploy's run launcher (`hubploy_dagster/run_launcher.py`): a child starts the launcher's
forkserver (its preload list, imported once) and forks `worker_probe.py` from it, which does the same load.

    .venv/bin/python benchmarks/run_worker_load.py --hubs 300 --commits 2000 [--repeat 3] [--json]

Invariants checked on every run (what the smoke test in tests/test_benchmarks.py relies on): both workers say
they load only the run's hub, and their asset jobs hold the run's assets; the full load holds every hub's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
from common import machine, progress
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from synthetic_repo import DEFAULT_WORKDIR, SyntheticRepoSpec, ensure_repo

ASSET_JOB = "__ASSET_JOB"
HUB = "hub-0000"

# The child: what a run worker does before its first step (argv as `dagster api execute_run` has it), then
# report how many hubs' assets the asset job holds.
CHILD = r"""
import json, sys
import worker_probe
print(json.dumps({"hubs": worker_probe.hubs_loaded(None if sys.argv[1] == "-" else sys.argv[1])}))
"""

# The forked worker: the run launcher's forkserver, warmed once (its preloading is a one-time cost of the
# daemon, not of a run), then the probe forked from it.
FORKED_CHILD = r"""
import json, multiprocessing, sys
from multiprocessing import forkserver
import worker_probe
from hubploy_dagster.run_launcher import DEFAULT_PRELOAD
context = multiprocessing.get_context("forkserver")
context.set_forkserver_preload(list(DEFAULT_PRELOAD))
forkserver.ensure_running()
here, there = context.Pipe()
probe = context.Process(target=worker_probe.load_like_a_worker, args=(sys.argv[1], there))
probe.start()
print(json.dumps(here.recv()))
probe.join()
"""
MODES = {"run worker": CHILD, "forked run worker": FORKED_CHILD, "full load": CHILD}


def run_arguments(instance: dg.DagsterInstance) -> str:
    """A run of HUB's image and staging release, and the arguments the run launchers give its worker."""
    run_id = str(uuid.uuid4())
    keys = frozenset({dg.AssetKey([HUB, "image"]), dg.AssetKey([HUB, "staging"])})
    instance.add_run(dg.DagsterRun(job_name=ASSET_JOB, run_id=run_id, asset_selection=keys))
    pointer = ModuleCodePointer("hubploy_dagster.definitions", "defs", working_directory=None)
    origin = JobPythonOrigin(ASSET_JOB, RepositoryPythonOrigin(sys.executable, pointer))
    return dg.serialize_value(ExecuteRunArgs(job_origin=origin, run_id=run_id, instance_ref=instance.get_ref()))


def measure(repo: Path, mode: str) -> dict[str, Any]:
    worker = mode != "full load"
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text("")
        env = {**os.environ, "DAGSTER_HOME": home, "HUBPLOY_REPO": str(repo)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
        env.pop("HUBPLOY_BRANCHES", None)
        with dg.DagsterInstance.from_config(home) as instance:
            args = run_arguments(instance) if worker else "-"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        child = subprocess.run([sys.executable, "-c", MODES[mode], args], env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert child.returncode == 0, child.stderr[-3000:]
    said_narrow = f"deploys {HUB}: loading only those hubs" in child.stderr
    assert said_narrow == worker, child.stderr[-2000:]
    figure = json.loads(child.stdout)
    if "cpu" not in figure:  # a fresh process: all it used, start and exit included
        figure |= {"wall": wall, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}
    return figure


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=300, help="hubs in the large repository (the other has 1)")
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    figures: dict[str, dict[str, Any]] = {}
    for hubs in (args.hubs, 1):
        repo, _ = ensure_repo(SyntheticRepoSpec(hubs=hubs, commits=args.commits), args.workdir)
        for mode in MODES:
            label = f"{hubs} hubs, {mode}"
            progress(f"[{label}] {args.repeat} child process(es) ...")
            figures[label] = median([measure(repo.path, mode) for _ in range(args.repeat)])
            expected = hubs if mode == "full load" else 1
            assert figures[label]["hubs"] == expected, (label, figures[label])

    many, one = f"{args.hubs} hubs", "1 hub"
    worker = figures[f"{many}, run worker"]["cpu"]
    ratios = {
        "worker_vs_one_hub_worker_cpu": worker / figures["1 hubs, run worker"]["cpu"],
        "worker_vs_one_hub_full_load_cpu": worker / figures["1 hubs, full load"]["cpu"],
        "full_load_vs_one_hub_full_load_cpu": figures[f"{many}, full load"]["cpu"]
        / figures["1 hubs, full load"]["cpu"],
        "forked_worker_vs_one_hub_forked_worker_cpu": figures[f"{many}, forked run worker"]["cpu"]
        / figures["1 hubs, forked run worker"]["cpu"],
        "forked_worker_vs_worker_cpu": figures[f"{many}, forked run worker"]["cpu"] / worker,
    }
    print(f"\n== Run worker load: {args.hubs} hubs against 1 ==\nmachine: {machine(dagster=dg.__version__)}")
    for label, figure in figures.items():
        print(f"  {label.replace('1 hubs', one):36} wall {figure['wall']:6.2f} s  cpu {figure['cpu']:6.2f} s  "
              f"hubs loaded {figure['hubs']:.0f}")  # fmt: skip
    for name, ratio in ratios.items():
        print(f"  {name.replace('_', ' ')}: {ratio:.2f}x")
    if args.json:
        print("\n" + json.dumps({"hubs": args.hubs, "figures": figures, **ratios}, indent=2))


if __name__ == "__main__":
    main()
