"""Change detection on a large deployment repository: hubploy's per-hub `git log` against ours, same run.

Why this benchmark exists: the git sensor and every image asset need, for a commit, the hubploy image tag of
every hub (the last commit touching each image folder) and the set of hubs a branch move changed. hubploy
runs one `git log -n 1 -- <image dir>` per hub, i.e. one history walk per hub; `ImageTagIndex` does one walk
for all hubs, keeps one small index file per commit so the next commit's walk stops at the first indexed
commit, and writes a commit-graph (`git commit-graph write --reachable --split`) after any walk that read more
than `COMMIT_GRAPH_AFTER` commits, so that later `--topo-order` walks stream at once. This script generates a
repository of hubploy's shape (see `synthetic_repo.py`), then measures on its head, in this order:

  baseline: hubploy's method for every hub's image folder on the repository as generated, with no
            commit-graph (asserted absent before and after): what hubploy users run with. Its answer is the
            reference every figure of ours is compared with, folder by folder;
  (1) ours cold, first call ever: no commit-graph, empty index; the time of the commit-graph write that
      ImageTagIndex does inside the call is taken apart from the walk;
  (2) ours cold with the commit-graph (1) left: a new, empty index on a repository already walked once;
  (3) ours warm: the index, prepared by ImageTagIndex itself, holds head~1 or head~10 (what the sensor and
      assets pay per new commit); also with a full index (INDEX_MAX_COMMITS files), with a stale graph (one
      that ends at head~10, as after commits were fetched since the graph was written: warm walks read too
      few commits to rewrite it) and, as the worst case, with no graph at all;
  (4) `change_set` head~15000 -> head (and head~1 -> head), without and with the graph, each asserted to find
      exactly the hubs `git diff-tree` says changed (as are, untimed, the last 30 pushes and a few more moves);
  and, for honesty, hubploy's method again with the best commit-graph it could have
  (`git commit-graph write --reachable --changed-paths`, whose Bloom filters make path-limited walks cheap).

plus the raw `git log` walk ours is built on (no parsing), to split git's share from Python's. Every figure is
measured in this run on this machine, and the ratios are computed from them, so results from different
machines are never mixed. Fast measurements are repeated and the median is reported.

    .venv/bin/python benchmarks/change_detection.py [--hubs 300] [--commits 20000] [--seed 1] [--workdir DIR]
                                                    [--repeat 5] [--distant 15000] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git as gitpython
from common import Timing, git, machine, measure, progress
from synthetic_repo import DEFAULT_WORKDIR, SyntheticRepo, SyntheticRepoSpec, ensure_repo

from hubploy_dagster.changes import ChangeSet, change_set
from hubploy_dagster.deployment import _parse_config, load_deployment
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.tags import COMMIT_GRAPH_AFTER, INDEX_MAX_COMMITS, ImageTagIndex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/services: hubploy's reference method

TARGET_RATIO = 50.0  # ours must be at least this many times faster than the per-hub method
TARGET_CHANGE_SET_SECONDS = 1.0
WARM_DEPTHS = (1, 10)  # the index holds the first-parent ancestor this many commits back
DISTANT_CHANGE_SETS = ("cs_first", "cs", "cs_first_none", "cs_none")  # the rows the < 1 s target applies to
VERIFIED_PUSHES = 30  # change sets head~N+1 -> head~N checked against git (untimed), N < this
VERIFIED_DEPTHS = (2, 5, 10, 50, 200)  # and head~N -> head (with head~1 and the distant one, measured)
STALE_GRAPH_DEPTH = 10  # the stale commit-graph holds head~10 and its ancestors only
# The exact `git log` that ImageTagIndex._history streams, to time git alone.
WALK_ARGS = (
    "-c", "core.quotePath=false", "log", "--topo-order", "-m", "--name-only", "--no-renames", "--parents",
    "--pretty=oneline", "--no-abbrev-commit",
)  # fmt: skip

Result = dict[str, str | None]


@contextmanager
def commit_graph_write_clock() -> Iterator[list[float]]:
    """Seconds of each `git commit-graph write` that GitPython runs meanwhile (ImageTagIndex runs it in-call)."""
    seconds: list[float] = []
    original = gitpython.cmd.Git.execute

    def execute(self: gitpython.cmd.Git, command: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(command, list | tuple) and "commit-graph" in command):
            return original(self, command, *args, **kwargs)
        started = time.perf_counter()
        try:
            return original(self, command, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    gitpython.cmd.Git.execute = execute  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        gitpython.cmd.Git.execute = original  # type: ignore[method-assign]


def commit_graph_files(path: Path) -> list[Path]:
    info = path / ".git" / "objects" / "info"
    return [p for p in (info / "commit-graph", info / "commit-graphs") if p.exists()]


def remove_commit_graph(path: Path) -> None:
    """Measurements "without a commit-graph" must really have none (ours writes one; a rerun may find one)."""
    for item in commit_graph_files(path):
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    assert not commit_graph_files(path)


def drain(path: Path, *args: str) -> tuple[float, int]:
    """Seconds to run a git command to completion while reading its output, and the bytes it wrote."""
    started = time.perf_counter()
    process = subprocess.Popen(["git", *args], cwd=path, stdout=subprocess.PIPE)
    assert process.stdout is not None
    size = 0
    while chunk := process.stdout.read(1 << 20):
        size += len(chunk)
    if process.wait() != 0:
        raise RuntimeError(f"git {' '.join(args)} failed")
    return time.perf_counter() - started, size


def per_hub(repo: DeploymentRepo, head: str, folders: list[str]) -> Result:
    """hubploy's method: one `git log -n 1 --pretty=format:%H <rev> -- <dir>` process per image folder."""
    from services.hubploy_reference import hubploy_last_commit

    return {folder: hubploy_last_commit(repo, head, folder) for folder in folders}


@dataclass
class Bench:
    """The repository, the commits compared, the reference answer, and every figure measured so far."""

    synthetic: SyntheticRepo
    repo: DeploymentRepo
    head: str
    folders: list[str]
    first_parents: list[str]  # head, head~1, ... on the first-parent line
    distant_depth: int
    scratch: Path
    repeat: int
    figures: dict[str, Any] = field(default_factory=dict)
    reference: Result | None = None

    @property
    def path(self) -> Path:
        return self.synthetic.path

    def fresh_dir(self, name: str) -> Path:
        return self.scratch / f"{name}-{time.perf_counter_ns()}"

    def check(self, key: str, result: Result) -> None:
        """Ours must equal hubploy's per-hub answer for every folder; records `identical` for the row."""
        assert self.reference is not None
        if result != self.reference:
            wrong = sorted(f for f in self.folders if result.get(f) != self.reference.get(f))
            raise AssertionError(f"{key}: ours differs from hubploy's per-hub git log for {len(wrong)}: {wrong[:5]}")
        self.figures[f"{key}_identical"] = True

    def ours(self, index_dir: Path) -> Result:
        return ImageTagIndex(self.repo, index_dir).last_commits(self.head, self.folders)

    def graph_state(self, expected: bool) -> None:
        present = bool(commit_graph_files(self.path))
        assert present == expected, f"commit-graph {'missing' if expected else 'present'} where it must not be"


def measure_baseline(b: Bench) -> None:
    """hubploy per-hub with no commit-graph (the reference), git's own floors and change sets, all without graph."""
    b.graph_state(False)
    progress(f"[baseline] hubploy per-hub git log for {len(b.folders)} folders, no commit-graph ...")
    timing, b.reference = measure(1, lambda: per_hub(b.repo, b.head, b.folders))
    b.graph_state(False)  # `git log` never writes one: the baseline really ran without
    b.figures["per_hub"] = timing
    progress(f"[baseline]   {timing.median:.2f} s")
    b.figures["raw_walk_none"], _ = measure(b.repeat, lambda: drain(b.path, *WALK_ARGS, b.head))
    b.figures["topo_none"], _ = measure(b.repeat, lambda: drain(b.path, "rev-list", "--topo-order", b.head))
    measure_change_sets(b, "_none")
    b.graph_state(False)


def changed_by_git(b: Bench, old: str, new: str | None = None) -> list[str]:
    """The hubs a move from `old` to `new` (head) really changes, from `git diff-tree` alone (no code of ours):
    those whose folder differs, or every hub when the chart they all use does (the synthetic repository has no
    `watch_paths` and no secrets)."""
    paths = git(b.path, "diff-tree", "-r", "--name-only", "--no-renames", old, new or b.head).splitlines()
    if any(path.startswith("chart/") for path in paths):
        return sorted(b.synthetic.hub_names)
    root = f"{b.synthetic.spec.root}/"
    return sorted({path.split("/")[1] for path in paths if path.startswith(root)} & set(b.synthetic.hub_names))


def check_change_set(b: Bench, key: str, changes: ChangeSet, old: str) -> None:
    """`change_set` must find exactly the hubs git says changed; their count goes into the figures."""
    expected = changed_by_git(b, old)
    assert changes.changed == expected, f"{key}: change_set found {changes.changed[:5]}, git says {expected[:5]}"
    b.figures[f"{key}_hubs"] = len(changes.changed)
    b.figures[f"{key}_hubs_expected"] = len(expected)


def verify_change_sets(b: Bench) -> None:
    """Untimed: `change_set` equals git's answer for each of the last pushes on the first-parent line
    (head~N+1 -> head~N: none, one or a few hubs, all of them for a chart change) and from head~N to head for
    several N; the number of hubs changed by each goes into the figures."""
    found: dict[str, list[int]] = {"pushes": [], "to_head": []}
    moves = [(b.first_parents[n + 1], b.first_parents[n], "pushes") for n in range(VERIFIED_PUSHES)]
    depths = sorted(d for d in {*VERIFIED_DEPTHS, b.distant_depth} if d <= b.distant_depth)
    moves += [(b.first_parents[d], b.head, "to_head") for d in depths]
    for old, new, kind in moves:
        changes = change_set(b.repo, old, new)
        expected = changed_by_git(b, old, new)
        assert changes.changed == expected, f"{old[:7]}..{new[:7]}: change_set {changes.changed}, git {expected}"
        found[kind].append(len(expected))
    b.figures["cs_verified"] = {"depths": depths, **found}
    progress(f"[change sets] equal to git diff-tree's hubs, hubs changed by each: {found}")


def measure_change_sets(b: Bench, suffix: str) -> None:
    old = b.first_parents[b.distant_depth]

    def distant() -> ChangeSet:
        return change_set(b.repo, old, b.head)

    _parse_config.cache_clear()  # the first change set of a process parses every hub's hubploy.yaml
    b.figures[f"cs_first{suffix}"], _ = measure(1, distant)
    b.figures[f"cs{suffix}"], changes = measure(b.repeat, distant)
    check_change_set(b, f"cs{suffix}", changes, old)
    b.figures[f"cs_consecutive{suffix}"], changes = measure(
        b.repeat, lambda: change_set(b.repo, b.first_parents[1], b.head)
    )
    check_change_set(b, f"cs_consecutive{suffix}", changes, b.first_parents[1])
    state = "no graph" if suffix else "graph present"
    progress(f"[change sets, {state}] {b.figures[f'cs{suffix}'].median:.3f} s head~{b.distant_depth} -> head")


def measure_cold(b: Bench) -> None:
    """(1) first call ever (no graph, empty index), then (2) a new empty index with the graph (1) wrote."""
    graph_runs: list[float] = []

    def first_call() -> Result:
        with commit_graph_write_clock() as writes:
            result = b.ours(b.fresh_dir("cold-first"))
        graph_runs.append(sum(writes))
        return result

    def no_graph() -> None:
        remove_commit_graph(b.path)

    progress("[1] ours cold, first call: no commit-graph, empty index ...")
    timing, result = measure(b.repeat, first_call, no_graph)
    b.check("cold_first", result)
    b.graph_state(True)  # ImageTagIndex wrote it: the walk read more than COMMIT_GRAPH_AFTER commits
    b.figures["cold_first"] = timing
    b.figures["cold_first_graph_write"] = Timing(graph_runs)
    b.figures["cold_first_walk"] = Timing([t - g for t, g in zip(timing.runs, graph_runs, strict=True)])
    progress(f"[1]   {timing.median:.3f} s, of which commit-graph write {statistics.median(graph_runs):.3f} s")

    graph_runs = []

    def with_graph() -> Result:
        with commit_graph_write_clock() as writes:
            result = b.ours(b.fresh_dir("cold-graph"))
        graph_runs.append(sum(writes))
        return result

    progress("[2] ours cold, empty index, commit-graph present ...")
    timing, result = measure(b.repeat, with_graph)
    b.check("cold_graph", result)
    b.figures["cold_graph"] = timing
    b.figures["cold_graph_graph_write"] = Timing(graph_runs)
    progress(f"[2]   {timing.median:.3f} s, of which commit-graph write {statistics.median(graph_runs):.3f} s")
    b.figures["raw_walk_graph"], _ = measure(b.repeat, lambda: drain(b.path, *WALK_ARGS, b.head))
    b.figures["topo_graph"], _ = measure(b.repeat, lambda: drain(b.path, "rev-list", "--topo-order", b.head))


def prepare_index(b: Bench, depth: int, commits: int) -> Path:
    """An index as ImageTagIndex leaves it after being called at head~(depth+commits-1), ..., head~depth in turn.

    Untimed: it is the index the sensor would already have. Files are written oldest first, so their
    modification times (kept by the copy made for each repetition) order the eviction as in real use.
    """
    index_dir = b.fresh_dir(f"prepared-{depth}-{commits}")
    index = ImageTagIndex(b.repo, index_dir)
    for n in reversed(range(depth, depth + commits)):
        index.last_commits(b.first_parents[n], b.folders)
    stored = sorted(p.name for p in index_dir.iterdir())
    assert len(stored) == commits and f"{b.first_parents[depth]}.json" in stored, stored[:3]
    return index_dir


def measure_warm(b: Bench, prepared: dict[tuple[int, bool], Path], suffix: str) -> None:
    """(3) ImageTagIndex on a copy of a prepared index: reads it, walks back to it, writes head's file."""
    for (depth, full), source in prepared.items():
        target = b.scratch / "warm"

        def copy(source: Path = source, target: Path = target) -> None:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)  # copy2: modification times are kept

        timing, result = measure(b.repeat, lambda target=target: b.ours(target), copy)
        key = f"warm_{depth}" + ("_full" if full else "") + suffix
        b.check(key, result)
        b.figures[key] = timing
        stored, expected = len(os.listdir(target)), len(os.listdir(source)) + 1
        if expected > INDEX_MAX_COMMITS:  # ImageTagIndex then evicts the oldest quarter at once
            expected = INDEX_MAX_COMMITS * 3 // 4
        assert stored == expected, (stored, expected)
        what = (" (full index)" if full else "") + {"": "", "_stale": " (stale graph)", "_nograph": " (no graph)"}[
            suffix
        ]
        progress(f"[3] ours warm from head~{depth}{what} {timing.median:.4f} s")


def measure_hubploy_with_graph(b: Bench) -> None:
    """For honesty: hubploy's method with the best commit-graph it could have (Bloom filters)."""
    remove_commit_graph(b.path)
    started = time.perf_counter()
    git(b.path, "commit-graph", "write", "--reachable", "--changed-paths")
    b.figures["bloom_graph_write"] = Timing([time.perf_counter() - started])
    progress("[honesty] hubploy per-hub git log, commit-graph with Bloom filters ...")
    timing, result = measure(3, lambda: per_hub(b.repo, b.head, b.folders))
    assert result == b.reference, "hubploy's own answer changed with the commit-graph"
    b.figures["per_hub_bloom"] = timing
    progress(f"[honesty]   {timing.median:.2f} s")


def answer_depths(path: Path, head: str, reference: Result) -> dict[str, Any]:
    """How far back each hub's answer is (in commits, topological order): why per-hub walks cost what they do."""
    order = {sha: n for n, sha in enumerate(git(path, "rev-list", "--topo-order", head).split())}
    root = git(path, "rev-list", "--max-parents=0", head)
    depths = sorted(order[sha] for sha in reference.values() if sha)
    return {
        "median": depths[len(depths) // 2],
        "max": depths[-1],
        "at_root": sum(1 for sha in reference.values() if sha == root),
        "reachable_commits": len(order),
    }


def profile_cold(b: Bench, top: int) -> str:
    """cProfile of one cold computation with the commit-graph present: where Python's share goes."""
    profiler = cProfile.Profile()
    index = ImageTagIndex(b.repo, b.fresh_dir("profile"))
    profiler.enable()
    index.last_commits(b.head, b.folders)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str  # "hubploy", "tags" (ours, compared), "part" (share of the row above), "change set", "git"


def rows(params: dict[str, Any]) -> list[Row]:
    d = params["distant_depth"]
    full = f"full index ({INDEX_MAX_COMMITS} files)"
    stale = f"graph stale (ends at head~{STALE_GRAPH_DEPTH})"
    return [
        Row("per_hub", f"hubploy: git log -n 1 per hub ({params['hubs']} runs), no graph", "hubploy"),
        Row("per_hub_bloom", "hubploy: the same, graph with Bloom filters", "hubploy"),
        Row("cold_first", "(1) ours cold, first call: no graph, empty index", "tags"),
        Row("cold_first_walk", "      of which the walk (call minus graph write)", "part"),
        Row("cold_first_graph_write", "      of which commit-graph write --split", "part"),
        Row("cold_graph", "(2) ours cold, empty index, graph present", "tags"),
        Row("cold_graph_graph_write", "      of which commit-graph write (no new commit)", "part"),
        *[Row(f"warm_{n}", f"(3) ours warm, index holds head~{n}", "tags") for n in WARM_DEPTHS],
        *[Row(f"warm_{n}_full", f"(3) ours warm, head~{n}, {full}", "tags") for n in WARM_DEPTHS],
        *[Row(f"warm_{n}_stale", f"(3) ours warm, head~{n}, {stale}", "tags") for n in WARM_DEPTHS],
        *[Row(f"warm_{n}_nograph", f"(3) ours warm, head~{n}, no graph at all", "tags") for n in WARM_DEPTHS],
        Row("cs_first", f"(4) change_set head~{d} -> head, graph, first", "change set"),
        Row("cs", f"(4) change_set head~{d} -> head, graph", "change set"),
        Row("cs_first_none", f"(4) change_set head~{d} -> head, no graph, first", "change set"),
        Row("cs_none", f"(4) change_set head~{d} -> head, no graph", "change set"),
        Row("cs_consecutive", "    change_set head~1 -> head, graph", "change set"),
        Row("cs_consecutive_none", "    change_set head~1 -> head, no graph", "change set"),
        Row("raw_walk_none", "git alone: the walk's git log unparsed, no graph", "git"),
        Row("raw_walk_graph", "git alone: the same, graph present", "git"),
        Row("topo_none", "git rev-list --topo-order head, no graph", "git"),
        Row("topo_graph", "git rev-list --topo-order head, graph present", "git"),
    ]


def verdicts(figures: dict[str, Any], table: list[Row]) -> dict[str, dict[str, Any]]:
    """Per row of ours: the ratio to the baseline (and to hubploy with Bloom filters) and whether the target is met."""
    baseline, bloom = figures["per_hub"].median, figures["per_hub_bloom"].median
    out: dict[str, dict[str, Any]] = {}
    for row in table:
        seconds = figures[row.key].median
        if row.kind == "tags":
            value = ratio(baseline, seconds)
            out[row.key] = {"ratio": value, "ratio_bloom": ratio(bloom, seconds), "met": value >= TARGET_RATIO}
        elif row.key in DISTANT_CHANGE_SETS:
            out[row.key] = {"met": seconds < TARGET_CHANGE_SET_SECONDS}
    return out


def report(params: dict[str, Any], info: dict[str, Any], figures: dict[str, Any], extra: dict[str, Any]) -> None:
    print("\n== Change detection benchmark ==")
    print(
        f"machine: nproc={info['nproc']}, {info['cpu']}, {info['memory_gb']} GB, {info['git']}, Python {info['python']}"
    )
    print(f"         load average at start {info['loadavg_at_start']}")
    print(
        f"repository: {params['hubs']} hubs, {params['commits']} commits ({extra['stats']['merges']} merges), "
        f"seed {params['seed']}, {params['path']}"
    )
    depths = extra["answer_depths"]
    print(
        f"answers: median {depths['median']} / max {depths['max']} commits behind head; "
        f"{depths['at_root']} hubs' image last touched by the root commit"
    )
    print(
        f'"graph": the commit-graph ImageTagIndex writes itself (--reachable --split) after a walk reading more '
        f"than {COMMIT_GRAPH_AFTER} commits;\n"
        f"hubploy's best graph: commit-graph write --reachable --changed-paths, "
        f"{figures['bloom_graph_write'].median:.2f} s to write"
    )
    print(
        f"median of {params['repeat']} runs (hubploy: 1 run without graph, 3 with); baseline/ours = hubploy per-hub "
        "without graph / ours, Bloom/ours = hubploy per-hub with Bloom filters / ours\n"
    )
    table = rows(params)
    verdict = verdicts(figures, table)
    width = max(len(row.label) for row in table)
    header = f"{'seconds':>9}  {'identical':>9}  {'baseline/ours':>13}  {'Bloom/ours':>10}  target"
    print(f"{'':<{width}}  {header}")
    for row in table:
        seconds = figures[row.key].median
        cells = f"{seconds:>9.4f}"
        if row.kind == "tags":
            v = verdict[row.key]
            met = "met" if v["met"] else "NOT met"
            same = "yes" if figures.get(f"{row.key}_identical") else "NO"
            cells += f"  {same:>9}  {v['ratio']:>12.1f}x  {v['ratio_bloom']:>9.1f}x  >= {TARGET_RATIO:.0f}x: {met}"
        elif row.key in verdict:
            met = "met" if verdict[row.key]["met"] else "NOT met"
            cells += f"  {'':>9}  {'':>13}  {'':>10}  < {TARGET_CHANGE_SET_SECONDS:.0f} s: {met}"
        print(f"{row.label:<{width}}  {cells}")
    for key in ("cold_first", "cold_graph"):
        timing = figures[key]
        print(
            f"\n{key} CPU: Python {statistics.median(timing.python_cpu):.3f} s, "
            f"git {statistics.median(timing.git_cpu):.3f} s, wall {timing.median:.3f} s",
            end="",
        )
    identical = all(figures.get(f"{row.key}_identical") for row in table if row.kind == "tags")
    print(
        f"\nidentical: {'yes' if identical else 'NO'} (ours == hubploy per-hub git log, every folder, every row of ours)"
    )
    tags = [(row.key, verdict[row.key]) for row in table if row.kind == "tags"]
    print(f"\ntarget >= {TARGET_RATIO:.0f}x the per-hub method without graph, for all tags:")
    for label, wanted in (("met", True), ("NOT met", False)):
        names = [f"{key} {v['ratio']:.1f}x" for key, v in tags if v["met"] is wanted]
        print(f"  {label:<7} by {len(names)} of {len(tags)}: {', '.join(names) or '-'}")
    worst = max(figures[key].median for key in DISTANT_CHANGE_SETS)
    print(
        f"target < {TARGET_CHANGE_SET_SECONDS:.0f} s for a change set head~{params['distant_depth']} -> head: "
        f"{'met' if worst < TARGET_CHANGE_SET_SECONDS else 'NOT met'} (slowest {worst:.3f} s, "
        f"{figures['cs_hubs']} hubs changed, as git diff-tree says)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=300)
    parser.add_argument("--commits", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where generated repos are cached")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each fast measurement (median)")
    parser.add_argument("--distant", type=int, default=15_000, help="first-parent distance of the distant change set")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of ours cold (graph present)")
    args = parser.parse_args()

    spec = SyntheticRepoSpec(hubs=args.hubs, commits=args.commits, seed=args.seed)
    info = machine()
    started = time.perf_counter()
    synthetic, generated = ensure_repo(spec, args.workdir)
    progress(f"repository {'generated' if generated else 'cached'} in {time.perf_counter() - started:.1f} s")
    path = synthetic.path
    repo = DeploymentRepo(path)
    head = repo.resolve("staging")
    first_parents = git(path, "rev-list", "--first-parent", head).split()
    distant_depth = min(args.distant, len(first_parents) - 2)  # the root has no hubs' later history: stay above
    deepest = max(WARM_DEPTHS) + INDEX_MAX_COMMITS
    assert len(first_parents) > max(deepest, STALE_GRAPH_DEPTH), "history too short for the warm measurements"
    deployment = load_deployment(repo.snapshot(head))
    assert len(deployment.hubs) == args.hubs and not deployment.problems, deployment.problems[:3]
    folders = sorted(hub.image_dir(image) for hub in deployment.hubs.values() for image in hub.images())

    with tempfile.TemporaryDirectory(prefix="index-", dir=path.parent) as scratch:
        b = Bench(synthetic, repo, head, folders, first_parents, distant_depth, Path(scratch), args.repeat)
        remove_commit_graph(path)
        drain(path, "rev-list", "--objects", "--all")  # page cache warm for every measurement alike
        measure_baseline(b)
        measure_cold(b)  # leaves the graph ImageTagIndex wrote
        progress("[3] preparing indexes with ImageTagIndex (untimed) ...")
        prepared: dict[tuple[int, bool], Path] = {}
        for depth in WARM_DEPTHS:
            prepared[(depth, True)] = prepare_index(b, depth, INDEX_MAX_COMMITS)
            prepared[(depth, False)] = b.fresh_dir(f"prepared-{depth}-1")
            prepared[(depth, False)].mkdir()
            name = f"{first_parents[depth]}.json"
            shutil.copy2(prepared[(depth, True)] / name, prepared[(depth, False)] / name)
        ordered = {key: prepared[key] for key in sorted(prepared, key=lambda k: (k[1], k[0]))}
        measure_warm(b, ordered, "")
        measure_change_sets(b, "")
        profile = profile_cold(b, 20) if args.profile else ""
        # A stale graph: written at head~STALE_GRAPH_DEPTH, the commits since fetched; warm walks never rewrite it.
        remove_commit_graph(path)
        git(path, "commit-graph", "write", "--split", "--stdin-commits", stdin=first_parents[STALE_GRAPH_DEPTH])
        single = {key: source for key, source in ordered.items() if not key[1]}
        measure_warm(b, single, "_stale")
        remove_commit_graph(path)  # the worst case: a graph that never covered these commits
        measure_warm(b, single, "_nograph")
        measure_hubploy_with_graph(b)
        verify_change_sets(b)
        assert b.reference is not None
        depths = answer_depths(path, head, b.reference)
        remove_commit_graph(path)  # leave the cached repository as generated

    params = {
        "hubs": args.hubs,
        "commits": args.commits,
        "seed": args.seed,
        "path": str(path),
        "repeat": args.repeat,
        "distant_depth": distant_depth,
    }
    extra = {"stats": synthetic.stats, "answer_depths": depths, "folders": len(folders)}
    report(params, info, b.figures, extra)
    if profile:
        print("\ncProfile of ours cold (commit-graph present), by own time:\n" + profile)
    if args.json:
        table = rows(params)
        verdict = verdicts(b.figures, table)
        figures = {k: (v.to_json() if isinstance(v, Timing) else v) for k, v in b.figures.items()}
        document = {"parameters": params, "machine": info, **extra, "figures": figures, "verdicts": verdict}
        document["targets"] = {
            "ratio": TARGET_RATIO,
            "change_set_s": TARGET_CHANGE_SET_SECONDS,
            "all_tags_met": all(v["met"] for k, v in verdict.items() if "ratio" in v),
            "change_set_met": all(v["met"] for k, v in verdict.items() if "ratio" not in v),
        }
        print("\n" + json.dumps(document, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
