"""Image tags exactly as hubploy computes them, for every hub in one history walk.

hubploy tags an image with the last commit touching its folder (`git log -n 1 --pretty=format:%H -- <dir>`),
cut to the shortest prefix of at least 7 characters that contains a letter (an all-digit tag would become a
number in helm). Running that `git log` once per hub costs one history walk per hub; here one walk serves
every folder, following git's own history simplification so the answer is identical:

- a non-merge commit whose diff touches the folder is the answer; otherwise its parent's answer is;
- a merge that has the folder's content of one of its parents takes that (first such) parent's answer;
  a merge that differs from every parent in the folder is the answer itself.

Answers are memoised per commit in a small persistent index, so the next commit costs only the walk back
to the last commit already indexed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import git

from hubploy_dagster.config import ImageSpec
from hubploy_dagster.deployment import Deployment, Hub
from hubploy_dagster.errors import HubployError
from hubploy_dagster.repo import DeploymentRepo, default_cache_dir, folders_of

MIN_TAG_LENGTH = 7
INDEX_MAX_COMMITS = 256
COMMIT_GRAPH_AFTER = 1000  # commits read in one walk before a commit-graph is (re)written
# `git log --parents --pretty=oneline -m`: "<sha> <parents...> [(from <parent>)] <subject>"
HEADER = re.compile(rb"^([0-9a-f]{40})((?: [0-9a-f]{40})*)(?: \(from ([0-9a-f]{40})\))?(?: |$)")


def tag_from_sha(sha: str) -> str:
    """hubploy's `substring_with_alpha`: the shortest prefix of >= 7 characters that contains a letter."""
    for length in range(MIN_TAG_LENGTH, len(sha) + 1):
        if any(c.isalpha() for c in sha[:length]):
            return sha[:length]
    return sha


@dataclass
class _Record:
    """One commit of the walk, with its diff against each parent it differs from (names parsed lazily)."""

    sha: str
    parents: list[str]
    diffs: dict[str | None, list[str]] = field(default_factory=dict)

    def touched(self, parent: str | None) -> set[str]:
        return folders_of(self.diffs.get(parent, ()))


class ImageTagIndex:
    """Computes, for a commit, the last commit that touched each of many folders.

    Answers are kept per commit, one small file each, so the next commit's walk stops at the first commit
    already answered; a commit-graph is written when a walk had to read far, so that git streams
    `--topo-order` without first walking all history.
    """

    def __init__(self, repo: DeploymentRepo, index_dir: Path | None = None):
        self.repo = repo
        if index_dir is None:
            key = hashlib.sha256(str(repo.path).encode()).hexdigest()[:16]
            index_dir = default_cache_dir() / "image-tags" / key
        self.index_dir = index_dir
        self._memory: dict[str, dict[str, str | None]] = {}
        self._stored: set[str] | None = None
        self._long_walk = False

    def _stored_commits(self) -> set[str]:
        if self._stored is None:
            names = os.listdir(self.index_dir) if self.index_dir.is_dir() else []
            self._stored = {n.removesuffix(".json") for n in names if n.endswith(".json")}
        return self._stored

    def _known(self, sha: str) -> dict[str, str | None]:
        if sha not in self._memory and sha in self._stored_commits():
            try:
                self._memory[sha] = json.loads((self.index_dir / f"{sha}.json").read_text())
            except (OSError, ValueError):
                self._memory[sha] = {}
        return self._memory.get(sha, {})

    def _remember(self, sha: str, answers: dict[str, str | None]) -> None:
        merged = {**self._known(sha), **answers}
        self._memory[sha] = merged
        self.index_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.index_dir, prefix=".tags-")
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(merged))
        os.replace(tmp, self.index_dir / f"{sha}.json")
        stored = self._stored_commits()
        stored.add(sha)
        if len(stored) > INDEX_MAX_COMMITS:  # evict the oldest quarter at once, not one file per call
            with os.scandir(self.index_dir) as entries:
                files = sorted((e.stat().st_mtime, e.name) for e in entries if e.name.endswith(".json"))
            for _, name in files[: len(files) - INDEX_MAX_COMMITS * 3 // 4]:
                (self.index_dir / name).unlink(missing_ok=True)
                stored.discard(name.removesuffix(".json"))
                self._memory.pop(name.removesuffix(".json"), None)

    def tags(self, rev: str, folders: Iterable[str]) -> dict[str, str | None]:
        """hubploy's tag of each folder at `rev` (None for a folder no commit touched)."""
        return {f: (tag_from_sha(sha) if sha else None) for f, sha in self.last_commits(rev, folders).items()}

    def last_commits(self, rev: str, folders: Iterable[str]) -> dict[str, str | None]:
        sha = self.repo.resolve(rev)
        wanted = set(folders)
        known = self._known(sha)
        missing = wanted - known.keys()
        if missing:
            self._remember(sha, self._walk(sha, missing))
            known = self._known(sha)
            if self._long_walk:
                self._refresh_commit_graph()
        return {f: known[f] for f in sorted(wanted)}

    def _walk(self, start: str, folders: set[str]) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        pending: dict[str, set[str]] = {start: set(folders)}

        def move(commit: str, moving: set[str]) -> None:
            known = self._known(commit)
            for folder in moving & known.keys():
                result[folder] = known[folder]
            rest = moving - known.keys()
            if rest:
                pending.setdefault(commit, set()).update(rest)

        read = 0
        for record in self._history(start):
            read += 1
            here = pending.pop(record.sha, None)
            if here:
                self._step(record, here, move, result)
            if not pending:
                break
        for folder in set().union(*pending.values()):
            result[folder] = None
        self._long_walk = read > COMMIT_GRAPH_AFTER
        return result

    def _refresh_commit_graph(self) -> None:
        """Only an optimisation: another writer holding the lock, or a read-only repository, is not an error."""
        with contextlib.suppress(git.GitCommandError):
            self.repo.git_repo.git.execute(["git", "commit-graph", "write", "--reachable", "--split"])

    @staticmethod
    def _step(record: _Record, here: set[str], move: Callable[[str, set[str]], None], result: dict) -> None:
        if not record.parents:  # the root commit: its diff against nothing touches every folder it has
            touched = record.touched(None)
            for folder in here:
                result[folder] = record.sha if folder in touched else None
            return
        if len(record.parents) == 1:
            touched = here & record.touched(None)
            for folder in touched:
                result[folder] = record.sha
            move(record.parents[0], here - touched)
            return
        differs = {parent: record.touched(parent) for parent in record.parents if parent in record.diffs}
        for folder in here:
            same_as = next((p for p in record.parents if folder not in differs.get(p, ())), None)
            if same_as is None:
                result[folder] = record.sha
            else:
                move(same_as, {folder})

    def _history(self, start: str) -> Iterator[_Record]:
        """Commits from `start` in topological order, each with its diff against each differing parent.

        Every option that user or repository configuration could change (log.diffMerges, log.showRoot,
        color, decorations, signatures) is set explicitly: hubploy's own `git log -- <dir>` is immune to them.

        A line is a commit header only when it names a commit the walk can reach next (the start or a
        parent already seen): a file whose name looks like a sha is then never mistaken for a commit.
        """
        process = self.repo.git_repo.git(c="core.quotePath=false").log(
            "--topo-order", "--diff-merges=separate", "--root", "--name-only", "--no-renames", "--parents",
            "--pretty=oneline", "--no-abbrev-commit", "--no-color", "--no-decorate", "--no-show-signature", start,
            as_process=True,
        )  # fmt: skip
        reachable = {start}
        current: _Record | None = None
        files: list[str] = []
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip(b"\n")
                header = HEADER.match(line)
                sha = header.group(1).decode() if header else None
                if sha is None or (sha not in reachable and (current is None or sha != current.sha)):
                    if line:
                        files.append(line.decode("utf-8", "surrogateescape"))
                    continue
                assert header is not None
                if current is not None and sha != current.sha:
                    yield current
                    current = None
                if current is None:
                    parents = header.group(2).decode().split()
                    reachable.update(parents)
                    current = _Record(sha, parents)
                files = current.diffs.setdefault(header.group(3).decode() if header.group(3) else None, [])
            if current is not None:
                yield current
        finally:
            _stop(process)


def _stop(process: git.cmd.Git.AutoInterrupt) -> None:
    """End the `git log` early once every folder has its answer: the rest of history is not needed."""
    proc = process.proc
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        proc.wait()


@dataclass(frozen=True)
class ImageTag:
    hub: str
    image: str
    tag: str
    folder: str
    helm_substitution_path: str

    @property
    def reference(self) -> str:
        return f"{self.image}:{self.tag}"


def hub_image_tags(
    repo: DeploymentRepo, deployment: Deployment, hub: Hub, images: list[ImageSpec] | None = None
) -> list[tuple[ImageSpec, str, str]]:
    """(image, folder, tag) of each of the hub's images at the deployment's commit, for builds and deploys alike.

    A folder no commit touched has no tag, and nothing can be built or deployed for it.
    """
    images = hub.images() if images is None else images
    folders = [hub.image_dir(image) for image in images]
    tags = ImageTagIndex(repo).tags(deployment.sha, folders)
    found = []
    for image, folder in zip(images, folders, strict=True):
        tag = tags[folder]
        if tag is None:
            raise HubployError(f"{deployment.snapshot.describe(folder)}: no commit touches the image folder")
        found.append((image, folder, tag))
    return found


def deployment_image_tags(index: ImageTagIndex, deployment: Deployment) -> list[ImageTag]:
    """Every image of every hub at the deployment's commit with its hubploy tag, from one history walk."""
    wanted = [(hub, image, hub.image_dir(image)) for hub in deployment.hubs.values() for image in hub.images()]
    tags = index.tags(deployment.sha, [folder for _, _, folder in wanted])
    return [
        ImageTag(hub.name, image.name, tags[folder] or "", folder, image.helm_substitution_path)
        for hub, image, folder in sorted(wanted, key=lambda w: (w[0].name, w[1].name))
        if tags[folder]
    ]
