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

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import git

from hubploy_dagster.deployment import Deployment
from hubploy_dagster.repo import DeploymentRepo, default_cache_dir, folders_of

MIN_TAG_LENGTH = 7
INDEX_MAX_COMMITS = 256
# `git log --parents --pretty=oneline -m`: "<sha> <parents...> [(from <parent>)] <subject>"
HEADER = re.compile(rb"^([0-9a-f]{40})((?: [0-9a-f]{40})*)(?: \(from ([0-9a-f]{40})\))?(?: |$)")


def tag_from_sha(sha: str) -> str:
    """hubploy's `substring_with_alpha`: the shortest prefix of >= 7 characters that contains a letter."""
    for length in range(MIN_TAG_LENGTH, len(sha) + 1):
        if any(c.isalpha() for c in sha[:length]):
            return sha[:length]
    return sha


def hubploy_last_commit(repo: DeploymentRepo, rev: str, path: str) -> str | None:
    """hubploy's own method, one `git log` per folder: the reference the fast walk must equal."""
    sha = repo.git_repo.git.log("-n", "1", "--pretty=format:%H", rev, "--", path)
    return sha or None


@dataclass
class _Record:
    sha: str
    parents: list[str]
    diff_parent: str | None
    folders: set[str]


class ImageTagIndex:
    """Computes, for a commit, the last commit that touched each of many folders."""

    def __init__(self, repo: DeploymentRepo, index_file: Path | None = None):
        self.repo = repo
        if index_file is None:
            key = hashlib.sha256(str(repo.path).encode()).hexdigest()[:16]
            index_file = default_cache_dir() / "image-tags" / f"{key}.json"
        self.index_file = index_file
        self._index: dict[str, dict[str, str | None]] = self._read_index()

    def _read_index(self) -> dict[str, dict[str, str | None]]:
        try:
            data = json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_index(self) -> None:
        entries = list(self._index.items())[-INDEX_MAX_COMMITS:]
        self._index = dict(entries)
        self.index_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.index_file.parent, prefix=".tags-")
        with os.fdopen(fd, "w") as handle:
            json.dump(self._index, handle)
        os.replace(tmp, self.index_file)

    def tags(self, rev: str, folders: Iterable[str]) -> dict[str, str | None]:
        """hubploy's tag of each folder at `rev` (None for a folder no commit touched)."""
        return {f: (tag_from_sha(sha) if sha else None) for f, sha in self.last_commits(rev, folders).items()}

    def last_commits(self, rev: str, folders: Iterable[str]) -> dict[str, str | None]:
        sha = self.repo.resolve(rev)
        wanted = sorted(set(folders))
        known = self._index.get(sha, {})
        if all(f in known for f in wanted):
            return {f: known[f] for f in wanted}
        result = self._walk(sha, wanted)
        self._index.pop(sha, None)
        self._index[sha] = {**known, **result}
        self._write_index()
        return result

    def _walk(self, start: str, folders: list[str]) -> dict[str, str | None]:
        pending: dict[str, set[str]] = {start: set(folders)}
        result: dict[str, str | None] = {}
        for sha, records in self._history(start):
            here = pending.pop(sha, None)
            if not here:
                continue
            cached = self._index.get(sha, {})
            for folder in [f for f in here if f in cached]:
                result[folder] = cached[folder]
                here.discard(folder)
            if here:
                self._step(sha, records, here, pending, result)
            if not pending:
                break
        for folder in set().union(*pending.values()) if pending else ():
            result.setdefault(folder, None)
        return result

    @staticmethod
    def _step(sha: str, records: list[_Record], here: set[str], pending: dict[str, set[str]], result: dict) -> None:
        parents = records[0].parents
        if not parents:  # the root commit: its diff against nothing touches every folder it has
            touched = records[0].folders
            for folder in here:
                result[folder] = sha if folder in touched else None
            return
        diffs = {r.diff_parent or parents[0]: r.folders for r in records if r.diff_parent or len(parents) == 1}
        for folder in here:
            same_as = next((p for p in parents if folder not in diffs.get(p, ())), None)
            if same_as is None:
                result[folder] = sha
            else:
                pending.setdefault(same_as, set()).add(folder)

    def _history(self, start: str) -> Iterator[tuple[str, list[_Record]]]:
        """Commits from `start` in topological order, each with its diff against each differing parent."""
        process = self.repo.git_repo.git(c="core.quotePath=false").log(
            "--topo-order", "-m", "--name-only", "--no-renames", "--parents",
            "--pretty=oneline", "--no-abbrev-commit", start,
            as_process=True,
        )  # fmt: skip
        try:
            current: list[_Record] = []
            files: list[str] = []
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip(b"\n")
                header = HEADER.match(line)
                if header is None:
                    if line:
                        files.append(line.decode("utf-8", "surrogateescape"))
                    continue
                if current:
                    current[-1].folders = folders_of(files)
                    files = []
                    if current[0].sha != header.group(1).decode():
                        yield current[0].sha, current
                        current = []
                current.append(
                    _Record(
                        sha=header.group(1).decode(),
                        parents=header.group(2).decode().split(),
                        diff_parent=header.group(3).decode() if header.group(3) else None,
                        folders=set(),
                    )
                )
            if current:
                current[-1].folders = folders_of(files)
                yield current[0].sha, current
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


def deployment_image_tags(index: ImageTagIndex, deployment: Deployment) -> list[ImageTag]:
    """Every image of every hub at the deployment's commit with its hubploy tag, from one history walk."""
    wanted = [(hub, image, hub.image_dir(image)) for hub in deployment.hubs.values() for image in hub.images()]
    tags = index.tags(deployment.sha, [folder for _, _, folder in wanted])
    return [
        ImageTag(hub.name, image.name, tags[folder] or "", folder, image.helm_substitution_path)
        for hub, image, folder in sorted(wanted, key=lambda w: (w[0].name, w[1].name))
        if tags[folder]
    ]
