"""A large, deterministic, hubploy-layout deployment repository, generated with `git fast-import` in seconds.

Benchmarks need histories the size of real multi-hub deployment repositories (hundreds of hubs, tens of
thousands of commits, a pull-request workflow with merge commits). Committing through `git commit` would take
tens of minutes, so the history is written as a `git fast-import` stream from Python through a pipe.

What the history looks like (everything follows from the seed):

- one initial commit with every hub (`hubs/<hub>/hubploy.yaml`, `image/Dockerfile`, `config/common.yaml`,
  `config/staging.yaml`, `config/prod.yaml`), the umbrella chart under `chart/`, a README and docs;
- then single-purpose changes: one hub's image, one hub's config, (rarely) one hub's `hubploy.yaml`,
  the chart occasionally, and unrelated docs;
- about one change in ten is made on a feature branch (one to a few commits) that is merged back into
  `staging` with a two-parent `--no-ff` merge after other work landed on `staging` meanwhile, so merges are
  real (neither parent is an ancestor of the other). Branches never touch the same file concurrently, so
  every merge is the clean merge git itself would produce;
- hub popularity is skewed (a Zipf-like law), and a few hubs are dormant: their image is never touched after
  the initial commit, as in real repositories where some courses' images have not changed for years. Those
  are the worst case for "last commit touching the image folder": the answer is the root commit;
- `staging` is the head; `prod` points a little behind it on the first-parent line.

The repository is cached under a folder keyed by the parameters and a generator version, so reruns reuse it.
Usable as a module (`ensure_repo(SyntheticRepoSpec(...), workdir)`) or from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

# Bump when the generated history changes, so cached repositories of an older shape are not reused.
GENERATOR_VERSION = 1
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "hubploy-dagster-bench"
MARKER = "hubploy-bench.json"  # written inside .git once generation has completed
SCRATCH_REF = "refs/heads/pr-scratch"  # where feature-branch commits are written; deleted afterwards
EPOCH = 1_600_000_000

# Relative frequency of each kind of change (direct or on a feature branch).
CHANGE_WEIGHTS: dict[str, float] = {
    "image": 0.30,
    "config": 0.40,
    "hubploy": 0.02,
    "chart": 0.02,
    "docs": 0.26,
}
# Per step: chance to open a feature branch, add a commit to an open one, merge an open one.
P_OPEN, P_FEATURE_COMMIT, P_MERGE = 0.06, 0.05, 0.055
MAX_OPEN_FEATURES = 4
DOCS_PAGES = 20


@dataclass(frozen=True)
class SyntheticRepoSpec:
    """The parameters that fully determine the generated repository (same spec, same commit ids)."""

    hubs: int = 300
    commits: int = 20_000
    seed: int = 1
    root: str = "hubs"  # `hubs` (new layout) or `deployments` (existing hubploy repositories)
    dormant_fraction: float = 0.05  # hubs whose image is never touched after the initial commit

    def key(self) -> str:
        dormant = f"-d{self.dormant_fraction:g}" if self.dormant_fraction != 0.05 else ""
        return f"{self.root}-h{self.hubs}-c{self.commits}-s{self.seed}{dormant}-v{GENERATOR_VERSION}"


@dataclass
class SyntheticRepo:
    """A generated repository: where it is, what made it, and what is in it."""

    path: Path
    spec: SyntheticRepoSpec
    hub_names: list[str]
    dormant_hubs: list[str]
    stats: dict[str, float | int] = field(default_factory=dict)

    @property
    def head_branch(self) -> str:
        return "staging"

    def image_folders(self) -> list[str]:
        return [f"{self.spec.root}/{name}/image" for name in self.hub_names]


def hub_name(index: int) -> str:
    return f"hub-{index:04d}"


def hub_files(root: str, name: str) -> dict[str, str]:
    """A valid hub in hubploy's layout (the legacy single-image form, as most hubploy repositories use)."""
    return {
        f"{root}/{name}/hubploy.yaml": f"images:\n  image_name: registry.example.org/{name}-image\nchart: chart\n",
        f"{root}/{name}/image/Dockerfile": f"FROM registry.example.org/base:1\nRUN echo {name}\n",
        f"{root}/{name}/config/common.yaml": f"jupyterhub:\n  hub:\n    config: {{}}\n# {name}\n",
        f"{root}/{name}/config/staging.yaml": "jupyterhub: {}\n",
        f"{root}/{name}/config/prod.yaml": "jupyterhub: {}\n",
    }


CHART_FILES = {
    "chart/Chart.yaml": "apiVersion: v2\nname: hub\nversion: 0.1.0\n",
    "chart/values.yaml": "jupyterhub: {}\n",
}


@dataclass
class _Feature:
    """An open feature branch: its tip, the files it changed, and the files `staging` changed since it forked."""

    number: int
    tip: int
    files: dict[str, str] = field(default_factory=dict)
    staging_touched: set[str] = field(default_factory=set)


class _Writer:
    """Writes the fast-import stream; every commit gets a mark equal to its sequence number."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self.marks = 0

    def _data(self, text: str) -> None:
        raw = text.encode()
        self.out.write(b"data %d\n" % len(raw))
        self.out.write(raw)
        self.out.write(b"\n")

    def commit(self, ref: str, message: str, files: dict[str, str], parents: list[int]) -> int:
        self.marks += 1
        when = EPOCH + 60 * self.marks
        self.out.write(f"commit {ref}\nmark :{self.marks}\n".encode())
        self.out.write(f"author Dev {self.marks % 17} <dev{self.marks % 17}@example.org> {when} +0000\n".encode())
        self.out.write(f"committer Dev {self.marks % 17} <dev{self.marks % 17}@example.org> {when} +0000\n".encode())
        self._data(message)
        if parents:
            self.out.write(f"from :{parents[0]}\n".encode())
        for parent in parents[1:]:
            self.out.write(f"merge :{parent}\n".encode())
        for path, content in sorted(files.items()):
            self.out.write(f"M 100644 inline {path}\n".encode())
            self._data(content)
        self.out.write(b"\n")
        return self.marks


class _History:
    """The random choices that make up the history; pure Python, independent of git."""

    def __init__(self, spec: SyntheticRepoSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.names = [hub_name(i) for i in range(spec.hubs)]
        order = self.names[:]
        self.rng.shuffle(order)
        dormant_count = round(spec.hubs * spec.dormant_fraction)
        self.dormant = sorted(order[:dormant_count])
        active = order[dormant_count:] or order
        # Zipf-like popularity: a few hubs change often, most change now and then.
        self.active = active
        self.active_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(active))]
        self.kinds = list(CHANGE_WEIGHTS)
        self.kind_weights = list(CHANGE_WEIGHTS.values())
        self.counts: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self.revision = 0

    def _hub(self, image: bool) -> str:
        if not image and self.rng.random() < 0.2:  # dormant hubs still get config changes now and then
            return self.rng.choice(self.names)
        return self.rng.choices(self.active, self.active_weights)[0]

    def change(self, avoid: set[str]) -> tuple[str, dict[str, str]]:
        """One single-purpose change (message, files) that touches no path in `avoid`."""
        for _ in range(20):
            kind = self.rng.choices(self.kinds, self.kind_weights)[0]
            message, files = self._change_of_kind(kind)
            if not avoid.intersection(files):
                self.counts[kind] += 1
                return message, files
        self.revision += 1  # everything popular is busy on a branch: a brand-new docs page never conflicts
        self.counts["docs"] += 1
        return "docs: add release notes", {f"docs/notes/{self.revision}.md": f"# Notes {self.revision}\n"}

    def _change_of_kind(self, kind: str) -> tuple[str, dict[str, str]]:
        self.revision += 1
        n, root = self.revision, self.spec.root
        if kind == "image":
            hub = self._hub(image=True)
            if self.rng.random() < 0.7:
                content = f"FROM registry.example.org/base:{n % 5}\nRUN echo {hub} revision {n}\n"
                return f"{hub}: update image", {f"{root}/{hub}/image/Dockerfile": content}
            content = f"dependencies:\n  - python=3.11\n  - numpy\n# revision {n}\n"
            return f"{hub}: update environment", {f"{root}/{hub}/image/environment.yml": content}
        if kind == "config":
            hub = self._hub(image=False)
            which = self.rng.choice(["common", "common", "staging", "prod"])
            content = f"jupyterhub:\n  hub:\n    config: {{}}\n# {hub} {which} revision {n}\n"
            return f"{hub}: tune {which} values", {f"{root}/{hub}/config/{which}.yaml": content}
        if kind == "hubploy":
            hub = self._hub(image=False)
            content = f"images:\n  image_name: registry.example.org/{hub}-image\nchart: chart\n# revision {n}\n"
            return f"{hub}: edit hubploy.yaml", {f"{root}/{hub}/hubploy.yaml": content}
        if kind == "chart":
            if self.rng.random() < 0.5:
                content = f"apiVersion: v2\nname: hub\nversion: 0.1.{n}\n"
                return "chart: bump version", {"chart/Chart.yaml": content}
            return "chart: change defaults", {"chart/values.yaml": f"jupyterhub: {{}}\n# revision {n}\n"}
        page = self.rng.randrange(DOCS_PAGES)
        return "docs: edit page", {f"docs/page-{page}.md": f"# Page {page}\n\nRevision {n}.\n"}


def _write_history(spec: SyntheticRepoSpec, out: IO[bytes]) -> tuple[_History, dict[str, int]]:
    """Streams the whole history; returns the choices made and commit statistics."""
    history = _History(spec)
    rng = history.rng
    writer = _Writer(out)
    initial = {
        "README.md": "# Deployment repository\n",
        **CHART_FILES,
        **{f"docs/page-{i}.md": f"# Page {i}\n" for i in range(DOCS_PAGES)},
    }
    for name in history.names:
        initial.update(hub_files(spec.root, name))
    staging = writer.commit("refs/heads/staging", "Initial deployment repository", initial, [])
    first_parent = [staging]
    stats = {"merges": 0, "feature_commits": 0, "direct_commits": 0}
    open_features: list[_Feature] = []
    features_made = 0

    def landed_on_staging(paths: set[str]) -> None:
        for feature in open_features:
            feature.staging_touched |= paths

    while writer.marks < spec.commits:
        remaining = spec.commits - writer.marks
        roll = rng.random()
        must_close = remaining <= len(open_features)
        if open_features and (must_close or roll < P_MERGE):
            feature = open_features.pop(0 if must_close else rng.randrange(len(open_features)))
            message = f"Merge pull request #{feature.number} from dev/feature-{feature.number}"
            staging = writer.commit("refs/heads/staging", message, feature.files, [staging, feature.tip])
            first_parent.append(staging)
            landed_on_staging(set(feature.files))
            stats["merges"] += 1
            continue
        busy = set().union(*(f.files for f in open_features)) if open_features else set()
        can_branch = remaining > len(open_features) + 2
        if can_branch and len(open_features) < MAX_OPEN_FEATURES and roll < P_MERGE + P_OPEN:
            features_made += 1
            feature = _Feature(number=features_made, tip=staging)
            message, files = history.change(busy)
            feature.tip = writer.commit(SCRATCH_REF, message, files, [feature.tip])
            feature.files.update(files)
            open_features.append(feature)
            stats["feature_commits"] += 1
            continue
        if open_features and can_branch and roll < P_MERGE + P_OPEN + P_FEATURE_COMMIT:
            feature = rng.choice(open_features)
            others = set().union(*(f.files for f in open_features if f is not feature))
            message, files = history.change(others | feature.staging_touched)
            feature.tip = writer.commit(SCRATCH_REF, message, files, [feature.tip])
            feature.files.update(files)
            stats["feature_commits"] += 1
            continue
        message, files = history.change(busy)
        staging = writer.commit("refs/heads/staging", message, files, [staging])
        first_parent.append(staging)
        landed_on_staging(set(files))
        stats["direct_commits"] += 1

    prod = first_parent[max(0, len(first_parent) - 1 - rng.randrange(5, 40))]
    out.write(f"reset refs/heads/prod\nfrom :{prod}\n\ndone\n".encode())
    stats["commits"] = writer.marks
    stats["first_parent_length"] = len(first_parent)
    stats.update({f"changes_{kind}": count for kind, count in history.counts.items()})
    return history, stats


# fast-import rewrites the 300-entry `hubs/` tree on every commit and glibc keeps returning that memory to the
# kernel (hundreds of thousands of brk calls, half the run in page faults): a larger top pad halves its time.
_FAST_IMPORT_ENV = {**os.environ, "MALLOC_TOP_PAD_": str(256 << 20)}


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout


def generate(spec: SyntheticRepoSpec, path: Path) -> SyntheticRepo:
    """Writes a fresh repository at `path` (which must not exist); a few seconds per 10,000 commits."""
    started = time.perf_counter()
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "--initial-branch=staging")
    for key, value in (("gc.auto", "0"), ("user.name", "Benchmark"), ("user.email", "bench@example.org")):
        _git(path, "config", key, value)  # no automatic gc: it would write a commit-graph behind our back
    process = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done", "--date-format=raw"],
        cwd=path,
        env=_FAST_IMPORT_ENV,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        history, stats = _write_history(spec, process.stdin)
        process.stdin.close()
    except BaseException:
        process.kill()
        raise
    finally:
        process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"git fast-import failed: {process.stderr.read().decode() if process.stderr else ''}")
    _git(path, "update-ref", "-d", SCRATCH_REF)
    _git(path, "symbolic-ref", "HEAD", "refs/heads/staging")
    imported = time.perf_counter()
    # A fresh fast-import pack is not delta-compressed as a served clone would be: repack like `git gc` does.
    _git(path, "repack", "-a", "-d", "-q")
    _git(path, "prune-packed")
    stats["import_seconds"] = round(imported - started, 3)
    stats["repack_seconds"] = round(time.perf_counter() - imported, 3)
    repo = SyntheticRepo(path, spec, history.names, history.dormant, stats)
    (path / ".git" / MARKER).write_text(
        json.dumps(
            {"spec": asdict(spec), "hub_names": repo.hub_names, "dormant_hubs": repo.dormant_hubs, "stats": stats}
        )
    )
    return repo


def load(path: Path) -> SyntheticRepo | None:
    """A previously generated repository, or None when `path` holds no complete one."""
    try:
        data = json.loads((path / ".git" / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return SyntheticRepo(
        path, SyntheticRepoSpec(**data["spec"]), data["hub_names"], data["dormant_hubs"], data["stats"]
    )


def ensure_repo(spec: SyntheticRepoSpec, workdir: Path = DEFAULT_WORKDIR) -> tuple[SyntheticRepo, bool]:
    """The repository for `spec` under `workdir`, generated only when not cached; (repo, freshly generated)."""
    path = workdir / spec.key()
    cached = load(path)
    if cached is not None and cached.spec == spec:
        return cached, False
    if path.exists():
        shutil.rmtree(path)  # an interrupted generation: start over
    workdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.key()}-", dir=workdir))
    staging.rmdir()
    try:
        generate(spec, staging)
        staging.rename(path)  # atomic: a cached folder is always complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    repo = load(path)
    assert repo is not None
    return repo, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=300)
    parser.add_argument("--commits", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", choices=["hubs", "deployments"], default="hubs")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    spec = SyntheticRepoSpec(hubs=args.hubs, commits=args.commits, seed=args.seed, root=args.root)
    repo, fresh = ensure_repo(spec, args.workdir)
    print(json.dumps({"path": str(repo.path), "generated": fresh, **repo.stats}, indent=2))


if __name__ == "__main__":
    main()
