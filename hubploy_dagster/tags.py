"""Image tags exactly as hubploy computes them, for every hub in one history walk.

hubploy tags an image with the last commit touching its folder (`git log -n 1 --pretty=format:%H -- <dir>`), cut
to the shortest prefix of at least 7 characters holding a letter (an all-digit tag would be a number in helm).
One walk serves every folder, following git's history simplification so the answer is identical: a non-merge
commit whose diff touches the folder is the answer, else its parent's answer is; a merge takes the answer of its
first parent with the same content in the folder, and is the answer itself when it differs from every parent.
Answers are memoised per commit in a small persistent index: a new commit costs only the walk back to one indexed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
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
    first_letter = next((i for i, c in enumerate(sha) if c.isalpha()), None)
    return sha if first_letter is None else sha[: max(MIN_TAG_LENGTH, first_letter + 1)]


@dataclass
class _Record:
    """One commit of the walk, with the files of its diff against each parent it differs from (None: no parent)."""

    sha: str
    parents: list[str]
    diffs: dict[str | None, list[str]] = field(default_factory=dict)

    def touched(self, parent: str | None) -> set[str]:
        return folders_of(self.diffs.get(parent, ()))


class ImageTagIndex:
    """Computes, for a commit, the last commit that touched each of many folders; answers are kept per commit, one
    file each. A commit-graph is written after a long walk, so that git streams `--topo-order` at once."""

    def __init__(self, repo: DeploymentRepo, index_dir: Path | None = None):
        self.repo = repo
        if index_dir is None:
            key = hashlib.sha256(str(repo.path).encode()).hexdigest()[:16]
            index_dir = default_cache_dir() / "image-tags" / key
        self.index_dir = index_dir
        self._memory: dict[str, dict[str, str | None]] = {}
        self._stored: set[str] | None = None

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
            answers, read = self._walk(sha, missing)
            self._remember(sha, answers)
            known = self._known(sha)
            if read > COMMIT_GRAPH_AFTER:  # an optimisation: a lock held by another writer or a read-only repo is fine
                with contextlib.suppress(git.GitCommandError):
                    self.repo.git_repo.git.execute(["git", "commit-graph", "write", "--reachable", "--split"])
        return {f: known[f] for f in sorted(wanted)}

    def _walk(self, start: str, folders: set[str]) -> tuple[dict[str, str | None], int]:
        """The last commit touching each folder (None: none did), and how many commits the walk read."""
        result: dict[str, str | None] = {}
        pending: dict[str, set[str]] = {start: set(folders)}

        def move(commit: str, moving: set[str]) -> None:
            known = self._known(commit)
            result.update({folder: known[folder] for folder in moving & known.keys()})
            if rest := moving - known.keys():
                pending.setdefault(commit, set()).update(rest)

        read = 0
        for record in self._history(start):
            read += 1
            here = pending.pop(record.sha, set())
            if here and len(record.parents) <= 1:  # a root commit is diffed against nothing: all its files count
                touched = here & record.touched(None)
                result.update(dict.fromkeys(touched, record.sha))
                if record.parents:
                    move(record.parents[0], here - touched)
            elif here:
                differs = {parent: record.touched(parent) for parent in record.parents}
                for folder in here:
                    same_as = next((p for p in record.parents if folder not in differs[p]), None)
                    if same_as is None:
                        result[folder] = record.sha
                    else:
                        move(same_as, {folder})
            if not pending:
                break
        return {folder: result.get(folder) for folder in folders}, read

    def _history(self, start: str) -> Iterator[_Record]:
        """Commits from `start` in topological order, each with its diff against each differing parent.

        Every option configuration could change (log.diffMerges, log.showRoot, color, decorations, signatures) is
        set, as hubploy's own `git log -- <dir>` is immune to them. A line is a commit header only when it names a
        commit the walk can reach next, so a file named like a sha is never mistaken for a commit.
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
            for raw in process.stdout:
                line = raw.rstrip(b"\n")
                header = HEADER.match(line)
                if header is None or header.group(1).decode() not in reachable:
                    if line:
                        files.append(line.decode("utf-8", "surrogateescape"))
                    continue
                sha, parent = header.group(1).decode(), header.group(3)
                if current is None or sha != current.sha:
                    if current is not None:
                        yield current
                    current = _Record(sha, header.group(2).decode().split())
                    reachable.update(current.parents)
                files = current.diffs.setdefault(parent.decode() if parent else None, [])
            if current is not None:
                yield current
        finally:  # ends the `git log` early once every folder has its answer (kill does nothing once it exited)
            if process.proc is not None:
                process.proc.kill()
                process.proc.wait()


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
    """(image, folder, tag) of each of the hub's images at the deployment's commit, for builds and deploys alike;
    a folder no commit touched has no tag, and nothing can be built or deployed for it."""
    images = hub.images() if images is None else images
    folders = [hub.image_dir(image) for image in images]
    tags = ImageTagIndex(repo).tags(deployment.sha, folders)
    untouched = next((folder for folder in folders if tags[folder] is None), None)
    if untouched is not None:
        raise HubployError(f"{deployment.snapshot.describe(untouched)}: no commit touches the image folder")
    return [(image, folder, tags[folder]) for image, folder in zip(images, folders, strict=True)]


def deployment_image_tags(index: ImageTagIndex, deployment: Deployment) -> list[ImageTag]:
    """Every image of every hub at the deployment's commit with its hubploy tag, from one history walk."""
    wanted = [(hub, image, hub.image_dir(image)) for hub in deployment.hubs.values() for image in hub.images()]
    tags = index.tags(deployment.sha, [folder for _, _, folder in wanted])
    return [
        ImageTag(hub.name, image.name, tags[folder] or "", folder, image.helm_substitution_path)
        for hub, image, folder in sorted(wanted, key=lambda w: (w[0].name, w[1].name))
        if tags[folder]
    ]
