"""Builds and helm upgrades over a replayed history, against the number the history needed, and two peer strategies.

Why: continuous deployment of many hubs is judged by how much work it does for a stream of pushes. Doing less
than needed leaves hubs stale (a chart change that never reaches a hub); doing more rebuilds images and restarts
releases for nothing. This script generates a deployment repository's history, replays it push by push through
the REAL git sensor and runs what it requests in-process against the real Docker engine, a real registry and helm,
then counts what was done and compares it with what the history itself says was needed.

The history (`--hubs` 24, `--commits` 200, `--seed` 1; everything follows from the seed) is written with
`git fast-import` into a bare repository whose `staging` and `prod` refs are then moved one push at a time:

- an initial commit with most hubs (`hubs/<hub>/`: hubploy.yaml in hubploy's legacy single-image form, an
  `image/` folder whose Dockerfile builds FROM the local base image (build argument BASE_IMAGE, as
  `hubs/*/image/Dockerfile`), `config/{common,staging,prod}.yaml`), a tiny chart under `chart/` (a ConfigMap
  rendered from the values and a one-replica Deployment running the hub's image, so helm stays fast and the
  `workloads` check has something to check), `shared/courses.yaml` (a `watch_paths` entry of every third hub) and
  docs. Hubs check only `release` and `workloads` (hubploy_dagster/config.py HealthSettings: no hub URL);
- then single-purpose changes: a hub's image (Dockerfile or environment.yml) 25 %, a hub's values 35 %, the
  watched file 5 %, the chart 2 % (every hub), docs 33 %. About one hub change in eight is made on a feature
  branch and merged into `staging` with a `--no-ff` merge two or three pushes later; one hub in twelve is added
  to the repository part-way through (the code location is reloaded, as after the sensor's reload request);
- every 8 to 15 pushes `staging` is merged into `prod` (a two-parent merge commit whose tree is staging's), and
  once more at the end so prod catches up. Content never returns to an earlier state (every edit writes a new
  revision number): a revert would get a new hubploy tag and be rebuilt, by hubploy's tagging rule.

Replay: after each push (one ref moved, as `git push` does) the sensor (`sensors.git_sensor.build_git_sensor`) is
evaluated with `dg.build_sensor_context` on a persistent `DagsterInstance` (SQLite in a temporary DAGSTER_HOME),
the cursor carried from tick to tick and the definitions from `build_definitions` (rebuilt when the sensor leaves a
move pending because of unknown hubs: what its reload request does). Each requested run (run keys already seen
are skipped, as the daemon does) is executed with the implicit asset job's `execute_in_process`, with the
request's asset selection and tags (`hub`, `env`, `git_sha`, `branch`), so its asset checks run too. The sensor is
ticked again until both branches' cursors reach their heads: prod is requested only once staging's checks passed.

Services (reused from tests/services, started here on free loopback ports): Debian's `docker-registry` and the
local control plane (real etcd, kube-apiserver, kube-controller-manager and kube-scheduler; a kwok node makes pods
Running and Ready at once, so workloads roll out as soon as the controllers create them); images are built by
the real Docker engine.

Counted from the services: builds = tags in the registry (each build pushes one new tag; cross-checked against the
image materializations with `built: true`), helm upgrades = the latest revision number in `helm history` of every release
(cross-checked against the release materializations). Needed, from the history alone (git plumbing and YAML, no
product code): image states = distinct (hub, image-folder tree) pairs at the staging heads the sensor saw;
configuration changes = for each branch, the hubs whose inputs (hub folder, chart folder, watch paths,
`secrets/deployments/<hub>`: tree ids) differ from the previous head seen on that branch (all hubs at the first).
Both ratios must be exactly 1.0; the script exits with status 1 otherwise, or when a run fails.

Peers, computed from the same heads: (a) every hub on every push (2i2c's deployer style): every hub's image built
at every staging push and every hub upgraded at every push of each branch; (b) hubploy's CI style: at each push,
the hubs whose own folder changed are deployed, each deploy rebuilding the image; chart and watch-path changes
deploy nothing, so some needed changes are missed (counted).

    .venv/bin/python benchmarks/replay.py [--hubs 24] [--commits 200] [--seed 1] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import yaml
from common import git, machine, progress
from synthetic_repo import DEFAULT_WORKDIR, SCRATCH_REF, _Writer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]  # the product, and tests/services

BASE_IMAGE = "hubploy-dagster/base:busybox"
BRANCHES = {"staging": "staging", "prod": "prod"}
WATCHED = "shared/courses.yaml"
CHANGE_WEIGHTS: dict[str, float] = {"image": 0.25, "config": 0.35, "watched": 0.05, "chart": 0.02, "docs": 0.33}
P_FEATURE = 0.125  # a hub change made on a feature branch, merged into staging a few pushes later
PROD_EVERY = (8, 15)  # staging pushes between two merges of staging into prod
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

CHART_TEMPLATES = {
    "chart/templates/configmap.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-values
data:
  values.yaml: |
{{ toYaml .Values.config | indent 4 }}
""",
    "chart/templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-hub
spec:
  replicas: 1
  selector:
    matchLabels: {app: hub, release: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: hub, release: {{ .Release.Name }}}
      annotations:
        values-digest: {{ toYaml .Values.config | sha256sum }}
    spec:
      containers:
        - name: hub
          image: "{{ .Values.jupyterhub.singleuser.image.name }}:{{ .Values.jupyterhub.singleuser.image.tag }}"
""",
}


def chart_files(revision: int, templates: dict[str, str] | None = None) -> dict[str, str]:
    """The tiny chart at one revision (its version and defaults change with it); `templates` replace or add."""
    return {
        "chart/Chart.yaml": f"apiVersion: v2\nname: hub\nversion: 0.1.{revision}\n",
        "chart/values.yaml": (
            "jupyterhub:\n  singleuser:\n    image: {name: busybox, tag: latest}\n"
            f"config:\n  chart_revision: {revision}\n"
        ),
        **CHART_TEMPLATES,
        **(templates or {}),
    }


def hub_files(hub: str, image_prefix: str, watch: bool = False, helm_timeout: str = "2m") -> dict[str, str]:
    """A hub whose image builds FROM the local base image and whose release is checked by `release` and `workloads`."""
    config = (
        f"images:\n  image_name: {image_prefix}/{hub}\nchart: chart\n"
        + (f"watch_paths: [{WATCHED}]\n" if watch else "")
        + f"helm: {{timeout: {helm_timeout}}}\n"
        "health:\n  release: {retries: 0}\n  workloads: {retries: 2}\n"
        "  hub_api: {enabled: false}\n  test_user: {enabled: false}\n"
    )
    return {
        f"hubs/{hub}/hubploy.yaml": config,
        f"hubs/{hub}/image/Dockerfile": dockerfile(hub, 0),
        f"hubs/{hub}/image/environment.yml": "dependencies:\n  - python=3.11\n# revision 0\n",
        f"hubs/{hub}/config/common.yaml": f"config:\n  hub: {hub}\n  common: 0\n",
        f"hubs/{hub}/config/staging.yaml": "config:\n  env: staging\n",
        f"hubs/{hub}/config/prod.yaml": "config:\n  env: prod\n",
    }


def dockerfile(hub: str, revision: int) -> str:
    """No RUN: a build is a LABEL and a COPY on the base image, so it takes a second, not a container start."""
    return (
        f"ARG BASE_IMAGE={BASE_IMAGE}\nFROM ${{BASE_IMAGE}}\n"
        f'LABEL org.example.hub="{hub}" org.example.revision="{revision}"\n'
        "COPY environment.yml /srv/environment.yml\n"
    )


# --- the history ---------------------------------------------------------------------------------------------


@dataclass
class Push:
    """One move of a branch head, as a `git push` makes it: `mark` is the fast-import mark of the new head."""

    branch: str
    mark: int
    message: str
    sha: str = ""


@dataclass
class _Feature:
    hub: str
    tip: int
    files: dict[str, str]
    merge_in: int  # staging pushes left before it is merged


class History:
    """The random choices (pure Python); `write` streams them to fast-import and returns the pushes in order."""

    def __init__(self, hubs: int, commits: int, seed: int, image_prefix: str):
        self.rng = random.Random(seed)
        self.commits = commits
        self.image_prefix = image_prefix
        self.hubs = [f"hub-{i:02d}" for i in range(hubs)]
        late = max(1, hubs // 12) if hubs >= 3 else 0
        self.initial_hubs = self.hubs[: hubs - late]
        self.added = {round(commits * (k + 1) / (late + 1)): hub for k, hub in enumerate(self.hubs[hubs - late :])}
        self.watchers = {hub for index, hub in enumerate(self.hubs) if index % 3 == 0}
        self.present: list[str] = []
        self.revision = 0
        self.counts: dict[str, int] = {kind: 0 for kind in [*CHANGE_WEIGHTS, "feature", "new_hub", "prod_merge"]}

    def _files_of(self, hub: str) -> dict[str, str]:
        return hub_files(hub, self.image_prefix, watch=hub in self.watchers)

    def change(self, busy: str | None) -> tuple[str, str | None, dict[str, str]]:
        """One single-purpose change: (message, the hub it belongs to or None, files); never touches hub `busy`."""
        self.revision += 1
        n = self.revision
        kind = self.rng.choices(list(CHANGE_WEIGHTS), list(CHANGE_WEIGHTS.values()))[0]
        self.counts[kind] += 1
        hubs = [hub for hub in self.present if hub != busy]
        if kind == "image":
            hub = self.rng.choice(hubs)
            if self.rng.random() < 0.6:
                return f"{hub}: update image", hub, {f"hubs/{hub}/image/Dockerfile": dockerfile(hub, n)}
            content = f"dependencies:\n  - python=3.11\n  - numpy\n# revision {n}\n"
            return f"{hub}: update environment", hub, {f"hubs/{hub}/image/environment.yml": content}
        if kind == "config":
            hub = self.rng.choice(hubs)
            which = self.rng.choice(["common", "common", "staging", "prod"])
            return f"{hub}: tune {which} values", hub, {f"hubs/{hub}/config/{which}.yaml": f"config:\n  {which}: {n}\n"}
        if kind == "watched":
            return "courses: update the course list", None, {WATCHED: f"courses:\n  revision: {n}\n"}
        if kind == "chart":
            return "chart: new defaults", None, chart_files(n)
        page = self.rng.randrange(5)
        return "docs: edit page", None, {f"docs/page-{page}.md": f"# Page {page}\n\nRevision {n}.\n"}

    def write(self, out: IO[bytes]) -> list[Push]:
        writer, rng = _Writer(out), self.rng
        self.present = list(self.initial_hubs)
        files: dict[str, str] = {"README.md": "# Deployment repository\n", **chart_files(0), WATCHED: "courses: {}\n"}
        files.update({f"docs/page-{i}.md": f"# Page {i}\n" for i in range(5)})
        for hub in self.present:
            files.update(self._files_of(hub))
        staging = prod = writer.commit("refs/heads/staging", "Initial deployment repository", files, [])
        pushes = [Push("staging", staging, "initial commit"), Push("prod", staging, "prod starts at staging")]
        feature: _Feature | None = None
        since_prod, prod_every = 0, rng.randint(*PROD_EVERY)

        def on_staging(message: str, changed: dict[str, str], parents: list[int]) -> None:
            nonlocal staging, since_prod
            staging = writer.commit("refs/heads/staging", message, changed, parents)
            files.update(changed)
            pushes.append(Push("staging", staging, message))
            since_prod += 1
            if feature is not None:
                feature.merge_in -= 1

        while writer.marks < self.commits - 1:
            due = [mark for mark in self.added if mark <= writer.marks]
            if due:
                hub = self.added.pop(due[0])
                self.present.append(hub)
                self.counts["new_hub"] += 1
                on_staging(f"{hub}: new hub", self._files_of(hub), [staging])
            elif feature is not None and feature.merge_in <= 0:
                merged, feature = feature, None
                on_staging(f"Merge pull request: {merged.hub}", merged.files, [staging, merged.tip])
            elif since_prod >= prod_every:
                prod = writer.commit("refs/heads/prod", "Merge staging into prod", dict(files), [prod, staging])
                pushes.append(Push("prod", prod, "merge staging into prod"))
                self.counts["prod_merge"] += 1
                since_prod, prod_every = 0, rng.randint(*PROD_EVERY)
            else:
                message, hub, changed = self.change(feature.hub if feature else None)
                if hub and feature is None and rng.random() < P_FEATURE and self.commits - writer.marks > 8:
                    tip = writer.commit(SCRATCH_REF, message, changed, [staging])
                    feature = _Feature(hub, tip, changed, rng.randint(2, 3))
                    self.counts["feature"] += 1
                else:
                    on_staging(message, changed, [staging])
        if feature is not None:
            on_staging(f"Merge pull request: {feature.hub}", feature.files, [staging, feature.tip])
        prod = writer.commit("refs/heads/prod", "Merge staging into prod", dict(files), [prod, staging])
        pushes.append(Push("prod", prod, "merge staging into prod (catch up)"))
        self.counts["prod_merge"] += 1
        out.write(b"done\n")
        return pushes


def generate(path: Path, history: History) -> list[Push]:
    """A bare repository holding the whole history; the replay moves `staging` and `prod` one push at a time."""
    git(path.parent, "init", "--quiet", "--bare", "--initial-branch=staging", str(path))
    git(path, "config", "gc.auto", "0")
    marks = path / "marks"
    process = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done", "--date-format=raw", f"--export-marks={marks}"],
        cwd=path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    pushes = history.write(process.stdin)
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {process.stderr.read().decode() if process.stderr else ''}")
    shas = dict(line.split() for line in marks.read_text().splitlines())
    for push in pushes:
        push.sha = shas[f":{push.mark}"]
    git(path, "update-ref", "-d", SCRATCH_REF)
    return pushes


# --- what the history needed, and what peers would do ------------------------------------------------------


class TreeReader:
    """Tree and blob ids at a commit through one `git cat-file --batch-check` per question, no product code."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.parsed: dict[str, Any] = {}

    def ids(self, sha: str, paths: list[str]) -> dict[str, str | None]:
        lines = git(self.repo, "cat-file", "--batch-check=%(objectname)", stdin="".join(f"{sha}:{p}\n" for p in paths))
        return {
            p: None if line.endswith("missing") else line for p, line in zip(paths, lines.splitlines(), strict=True)
        }

    def hub_inputs(self, sha: str) -> dict[str, tuple[str | None, ...]]:
        """hub -> ids of its inputs (hub folder, chart, watch paths, hubploy's secrets folder) at `sha`."""
        listing = git(self.repo, "ls-tree", "--name-only", f"{sha}:hubs").splitlines()
        configs = self.ids(sha, [f"hubs/{hub}/hubploy.yaml" for hub in listing])
        inputs = {}
        for hub in listing:
            blob = configs[f"hubs/{hub}/hubploy.yaml"]
            if blob not in self.parsed:
                self.parsed[blob] = yaml.safe_load(git(self.repo, "cat-file", "blob", str(blob)))
            config = self.parsed[blob]
            paths = [
                f"hubs/{hub}",
                config.get("chart", "hub"),
                f"secrets/deployments/{hub}",
                *config.get("watch_paths", []),
            ]
            inputs[hub] = tuple(self.ids(sha, paths).values())
        return inputs


@dataclass
class Needed:
    image_states: int = 0
    changes: dict[str, int] = field(default_factory=dict)  # env -> (hub, configuration) changes
    pushes: dict[str, int] = field(default_factory=dict)
    every_hub_builds: int = 0  # (a)
    every_hub_upgrades: int = 0
    folder_upgrades: int = 0  # (b), each deploy also rebuilding the image
    folder_missed: int = 0


def needed_work(repo: Path, pushes: list[Push]) -> Needed:
    reader, needed = TreeReader(repo), Needed()
    images: set[tuple[str, str | None]] = set()
    previous: dict[str, dict[str, tuple[str | None, ...]]] = {}
    for push in pushes:
        env = push.branch  # the branches are named after their environments here
        inputs = reader.hub_inputs(push.sha)
        before = previous.get(env, {})
        changed = {hub for hub, ids in inputs.items() if before.get(hub) != ids}
        folder_changed = {hub for hub, ids in inputs.items() if hub not in before or before[hub][0] != ids[0]}
        needed.changes[env] = needed.changes.get(env, 0) + len(changed)
        needed.pushes[env] = needed.pushes.get(env, 0) + 1
        needed.every_hub_upgrades += len(inputs)
        needed.folder_upgrades += len(folder_changed)
        needed.folder_missed += len(changed - folder_changed)
        if env == "staging":
            needed.every_hub_builds += len(inputs)
            trees = reader.ids(push.sha, [f"hubs/{hub}/image" for hub in inputs])
            images |= {(path, tree) for path, tree in trees.items()}
        previous[env] = inputs
    needed.image_states = len(images)
    return needed


# --- services ------------------------------------------------------------------------------------------------


@dataclass
class Services:
    registry: Any
    cluster: Any
    env: dict[str, str]  # helm and kubectl against the cluster


@contextlib.contextmanager
def deploy_services(workdir: Path) -> Iterator[Services]:
    """The local control plane and a registry, as the test suite starts them."""
    from services.cluster import KubernetesCluster
    from services.registry import RegistryService

    with contextlib.ExitStack() as stack:
        cluster = KubernetesCluster(workdir / "k8s")
        stack.callback(cluster.remove)
        cluster.start()
        registry = RegistryService(workdir / "registry", "bench-registry")
        stack.callback(registry.close)
        registry.start()
        yield Services(registry, cluster, cluster.helm_env())


def registry_tags(url: str) -> dict[str, list[str]]:
    import httpx

    repositories = httpx.get(f"{url}/v2/_catalog?n=1000", timeout=30).json()["repositories"]
    return {r: httpx.get(f"{url}/v2/{r}/tags/list", timeout=30).json().get("tags") or [] for r in repositories}


def helm_revisions(hubs: list[str]) -> dict[str, int]:
    """The latest revision number in `helm history` of each `<hub>-<env>` release (0 when never installed).

    Not the number of entries: `helm upgrade` keeps only the last 10 revisions (`--history-max`); revision numbers
    count every install and upgrade (the replay makes no rollback)."""
    from hubploy_dagster.helm import Helm, HelmError

    helm, found = Helm(), {}
    for hub in hubs:
        for env in BRANCHES:
            try:
                found[f"{hub}-{env}"] = max(int(r["revision"]) for r in helm.history(f"{hub}-{env}", f"{hub}-{env}"))
            except HelmError as exc:
                if "not found" not in str(exc):
                    raise
                found[f"{hub}-{env}"] = 0
    return found


# --- the replay ----------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    hub: str
    env: str
    sha: str
    success: bool
    seconds: float
    cpu_seconds: float = 0.0  # this process's CPU during the run (its steps; not helm, git or the engine)
    built: bool = False
    released: bool = False
    error: str = ""


class Replayer:
    """The daemon's part, in this process: ticks with a carried cursor, run keys deduplicated, runs in-process."""

    def __init__(self, repo: Path, instance: Any):
        from hubploy_dagster.chain import Chain
        from sensors.git_sensor import build_git_sensor

        self.repo = repo
        self.instance = instance
        self.sensor = build_git_sensor(str(repo), Chain(BRANCHES))
        self.cursor: str | None = None
        self.run_keys: set[str] = set()
        self.runs: list[RunRecord] = []
        self.ticks = self.reloads = self.repeated_keys = 0
        self.tick_cpu_seconds = 0.0
        self.reload()

    def reload(self) -> None:
        from hubploy_dagster.definitions import build_definitions

        self.defs = build_definitions(str(self.repo))
        self.job = self.defs.resolve_implicit_global_asset_job_def()
        self.reloads += 1

    def tick(self) -> list[Any]:
        import dagster as dg

        self.ticks += 1
        cpu = time.process_time()
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = self.sensor(context)
        self.tick_cpu_seconds += time.process_time() - cpu
        if isinstance(result, dg.SkipReason):
            return []
        self.cursor = result.cursor
        requests = []
        for request in result.run_requests or []:
            if request.run_key in self.run_keys:
                self.repeated_keys += 1
                continue
            self.run_keys.add(request.run_key)
            requests.append(request)
        return requests

    def execute(self, request: Any) -> RunRecord:
        started, cpu = time.perf_counter(), time.process_time()
        result = self.job.execute_in_process(
            run_config=QUIET_LOGS,
            instance=self.instance,
            asset_selection=request.asset_selection,
            tags=request.tags,
            raise_on_error=False,
        )
        cpu = time.process_time() - cpu
        record = RunRecord(request.tags["hub"], request.tags["env"], request.tags["git_sha"], result.success, 0.0, cpu)
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            if materialization.asset_key.path[-1] == "image":
                record.built = bool(materialization.metadata["built"].value)
            else:
                record.released = True
        failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
        if failed_checks or not result.success:
            record.success = False
            failures = result.get_step_failure_events()
            record.error = (
                failures[0].step_failure_data.error.message.strip()[-600:]
                if failures and failures[0].step_failure_data.error
                else f"failed checks: {[(e.check_name, e.description) for e in failed_checks]}"
            )
        record.seconds = time.perf_counter() - started
        self.runs.append(record)
        return record

    def settle(self, heads: dict[str, str]) -> int:
        """Tick and run until the cursor holds both heads; returns the runs made. A move left pending with no
        run requested means unknown hubs (the sensor asked for a reload): rebuild the definitions, once."""
        made, reloaded = 0, False
        while True:
            requests = self.tick()
            for request in requests:
                record = self.execute(request)
                made += 1
                if not record.success:
                    raise RuntimeError(f"run {record.hub}/{record.env}@{record.sha[:7]} failed: {record.error}")
            if json.loads(self.cursor or "{}") == heads:
                return made
            if not requests:
                if reloaded:
                    raise RuntimeError(f"the sensor stays at {self.cursor} without requesting a run (heads {heads})")
                self.reload()
                reloaded = True


def replay(args: argparse.Namespace) -> dict[str, Any]:
    import dagster as dg

    report: dict[str, Any] = {
        "machine": machine(dagster=version("dagster")),
        "parameters": {
            "hubs": args.hubs,
            "commits": args.commits,
            "seed": args.seed,
            "worker_load_seconds": args.worker_load_seconds,
        },
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="replay-", dir=args.workdir))
    try:
        with deploy_services(workdir) as services:
            prefix = f"{services.registry.host}/replay"
            history = History(args.hubs, args.commits, args.seed, prefix)
            repo = workdir / "deployment.git"
            began = time.perf_counter()
            pushes = generate(repo, history)
            report["history"] = {
                "commits": int(git(repo, "rev-list", "--count", "--all")),
                "pushes": {env: sum(p.branch == env for p in pushes) for env in BRANCHES},
                "changes": history.counts,
                "generated_s": round(time.perf_counter() - began, 2),
            }
            progress(f"history: {report['history']}")
            os.environ.update(
                {
                    **services.env,
                    "HUBPLOY_BUILD_ARGS": f"BASE_IMAGE={BASE_IMAGE}",
                    "XDG_CACHE_HOME": str(workdir / "cache"),
                    "DAGSTER_HOME": str(workdir / "dagster-home"),
                }
            )
            os.environ.pop("HUBPLOY_WEBSERVER_URL", None)
            home = workdir / "dagster-home"
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            try:
                with dg.DagsterInstance.from_config(str(home)) as instance:
                    report["replay"] = run_replay(repo, pushes, instance)
                report["done"] = {"builds": count_builds(services.registry.url), **count_upgrades(history.hubs)}
            finally:
                from services.registry import remove_local_images

                remove_local_images(prefix)
            needed = needed_work(repo, pushes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["needed"] = needed.__dict__
    return report


def run_replay(repo: Path, pushes: list[Push], instance: Any) -> dict[str, Any]:
    heads: dict[str, str] = {}
    began = time.perf_counter()
    replayer: Replayer | None = None
    for number, push in enumerate(pushes, 1):
        git(repo, "update-ref", f"refs/heads/{push.branch}", push.sha)
        heads[push.branch] = push.sha
        if push.branch == "staging" and "prod" not in heads:
            git(repo, "update-ref", "refs/heads/prod", push.sha)  # both branches exist from the start
            heads["prod"] = push.sha
        if replayer is None:
            replayer = Replayer(repo, instance)
        clock = time.perf_counter()
        made = replayer.settle(heads)
        progress(
            f"[{number}/{len(pushes)}] {push.branch} {push.sha[:7]} {push.message}: {made} run(s), "
            f"{time.perf_counter() - clock:.1f} s"
        )
    assert replayer is not None
    runs = replayer.runs
    released = sum(r.released for r in runs)
    run_cpu = sum(r.cpu_seconds for r in runs)
    return {
        "runs": len(runs),
        "runs_by_env": {env: sum(r.env == env for r in runs) for env in BRANCHES},
        "built": sum(r.built for r in runs),
        "released": released,
        "run_cpu_seconds_median": round(statistics.median(r.cpu_seconds for r in runs), 3) if runs else 0,
        "tick_cpu_seconds": round(replayer.tick_cpu_seconds, 2),
        "orchestrator_cpu_per_release_s": round((run_cpu + replayer.tick_cpu_seconds) / released, 3) if released else 0,
        "run_seconds_median": round(statistics.median(r.seconds for r in runs), 2) if runs else 0,
        "ticks": replayer.ticks,
        "reloads": replayer.reloads - 1,
        "repeated_run_keys_skipped": replayer.repeated_keys,
        "wall_s": round(time.perf_counter() - began, 1),
    }


def count_builds(registry_url: str) -> int:
    return sum(len(tags) for tags in registry_tags(registry_url).values())


def count_upgrades(hubs: list[str]) -> dict[str, Any]:
    revisions = helm_revisions(hubs)
    return {
        "helm_upgrades": sum(revisions.values()),
        "helm_upgrades_by_env": {
            env: sum(v for k, v in revisions.items() if k.endswith(f"-{env}")) for env in BRANCHES
        },
    }


# --- report --------------------------------------------------------------------------------------------------


def ratio(done: int, needed: int) -> float:
    return done / needed if needed else float("inf")


def render(report: dict[str, Any]) -> tuple[str, bool]:
    needed, done, replayed = report["needed"], report["done"], report["replay"]
    changes = sum(needed["changes"].values())
    builds_ratio = ratio(done["builds"], needed["image_states"])
    upgrades_ratio = ratio(done["helm_upgrades"], changes)
    consistent = done["builds"] == replayed["built"] and done["helm_upgrades"] == replayed["released"]
    ok = builds_ratio == 1.0 and upgrades_ratio == 1.0 and consistent
    m, h = report["machine"], report["history"]
    rows = [
        ("needed (from the history)", needed["image_states"], changes, "", "", ""),
        ("hubploy-dagster (done)", done["builds"], done["helm_upgrades"], builds_ratio, upgrades_ratio, 0),
        (
            "(a) every hub, every push",
            needed["every_hub_builds"],
            needed["every_hub_upgrades"],
            ratio(needed["every_hub_builds"], needed["image_states"]),
            ratio(needed["every_hub_upgrades"], changes),
            0,
        ),
        (
            "(b) changed hub folders, rebuild each",
            needed["folder_upgrades"],
            needed["folder_upgrades"],
            ratio(needed["folder_upgrades"], needed["image_states"]),
            ratio(needed["folder_upgrades"], changes),
            needed["folder_missed"],
        ),
    ]
    lines = [
        "== Replayed history: builds and helm upgrades done against needed ==",
        f"machine: nproc={m['nproc']}, {m['cpu']}, {m['memory_gb']} GB, {m['git']}, Python {m['python']}, "
        f"dagster {m['dagster']}; load average at start {m['loadavg_at_start']}",
        f"history: {report['parameters']['hubs']} hubs, {h['commits']} commits, seed {report['parameters']['seed']}; "
        f"pushes staging {h['pushes']['staging']}, prod {h['pushes']['prod']}; changes {h['changes']}",
        f"replay: {replayed['runs']} runs (staging {replayed['runs_by_env']['staging']}, prod "
        f"{replayed['runs_by_env']['prod']}), {replayed['ticks']} sensor ticks, {replayed['reloads']} reloads, "
        f"{replayed['repeated_run_keys_skipped']} repeated run keys skipped; median run {replayed['run_seconds_median']} s; "
        f"{replayed['wall_s']} s in all",
        f"orchestrator CPU in this process (sensor ticks and the runs' steps; helm, git and sops are child processes, "
        f"builds run in the engine): {replayed['orchestrator_cpu_per_release_s']} s per deployed release "
        f"(median run {replayed['run_cpu_seconds_median']} s, ticks {replayed['tick_cpu_seconds']} s in all)"
        + extrapolation(report),
        f"done, cross-checked: registry tags {done['builds']} vs image materializations built {replayed['built']}; "
        f"helm revisions {done['helm_upgrades']} {done['helm_upgrades_by_env']} vs release materializations "
        f"{replayed['released']}: {'agree' if consistent else 'DISAGREE'}",
        f"needed configuration changes by environment: {needed['changes']}",
        "",
        f"{'':40} {'builds':>8} {'helm upgrades':>14} {'builds/needed':>14} {'upgrades/needed':>16} {'missed':>7}",
    ]
    for name, builds, upgrades, b_ratio, u_ratio, missed in rows:
        b_text = f"{b_ratio:.2f}" if isinstance(b_ratio, float) else ""
        u_text = f"{u_ratio:.2f}" if isinstance(u_ratio, float) else ""
        lines.append(f"{name:40} {builds:>8} {upgrades:>14} {b_text:>14} {u_text:>16} {missed!s:>7}")
    lines += [
        "",
        f"target: builds/needed = 1.0 and upgrades/needed = 1.0 for hubploy-dagster: {'met' if ok else 'NOT met'}",
    ]
    return "\n".join(lines), ok


def extrapolation(report: dict[str, Any]) -> str:
    """Runs here execute in this process; a deployed run worker first loads the code location (run_worker_load.py)."""
    worker = report["parameters"].get("worker_load_seconds")
    if worker is None:
        return ""
    replayed = report["replay"]
    per_release = replayed["orchestrator_cpu_per_release_s"] + worker * replayed["runs"] / replayed["released"]
    return f"; with a run worker's load of {worker} s per run: {per_release:.2f} s per deployed release"


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the services and dagster dev started are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=24)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--worker-load-seconds",
        type=float,
        help="a run worker's CPU before its first step (run_worker_load.py at the hub count to extrapolate to)",
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON after the table")
    args = parser.parse_args()
    report = replay(args)
    text, ok = render(report)
    print(text)
    if args.json:
        print(json.dumps(report, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
