"""Git access to a deployment repository: branch heads, and files read at any commit without a work tree.

Deploys must happen at exactly the commit a run pinned, so nothing here looks at a checkout: files are read
from git objects. A remote URL is mirrored into a local cache once and fetched on demand; a local path
(bare or not) is used as it is.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import git
from git.objects import Blob, Commit, Tree

from hubploy_dagster.errors import GitError

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hubploy-dagster"


def _is_local_repository(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and ((path / ".git").exists() or (path / "HEAD").is_file())


def folders_of(paths: Iterable[str]) -> set[str]:
    """Every folder that contains one of the paths: `a/b/c` gives `a` and `a/b`."""
    folders: set[str] = set()
    for path in paths:
        parts = path.split("/")
        for end in range(1, len(parts)):
            folders.add("/".join(parts[:end]))
    return folders


def remote_heads(source: str, branches: list[str]) -> dict[str, str]:
    """The current sha of each branch that exists, with one `git ls-remote` (cheap enough for a sensor tick)."""
    refs = [f"refs/heads/{b}" for b in branches]
    try:
        output = git.Git().ls_remote(source, *refs)
    except git.GitCommandError as exc:
        raise GitError(f"cannot list branches of {source}: {exc.stderr.strip() or exc}") from None
    heads: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, ref = line.partition("\t")
        heads[ref.removeprefix("refs/heads/")] = sha
    return heads


class DeploymentRepo:
    """A deployment repository, local or remote, that can be read at any commit."""

    def __init__(self, source: str | os.PathLike[str], cache_dir: Path | None = None):
        self.source = str(source)
        if _is_local_repository(self.source):
            self.path = Path(self.source).resolve()
            self.mirrored = False
        else:
            digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
            self.path = (cache_dir or default_cache_dir()) / "mirrors" / f"{digest}.git"
            self.mirrored = True
            if not self.path.exists():
                self._clone_mirror()
        try:
            self.git_repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{self.source} is not a git repository") from None

    def _clone_mirror(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            git.Repo.clone_from(self.source, self.path, mirror=True)
        except git.GitCommandError as exc:
            raise GitError(f"cannot clone {self.source}: {exc.stderr.strip() or exc}") from None

    def fetch(self) -> None:
        """Bring a mirror up to date; a local repository is always current."""
        if not self.mirrored:
            return
        try:
            self.git_repo.git.fetch("--prune", "origin", "+refs/heads/*:refs/heads/*")
        except git.GitCommandError as exc:
            raise GitError(f"cannot fetch {self.source}: {exc.stderr.strip() or exc}") from None

    def heads(self, branches: list[str]) -> dict[str, str]:
        return remote_heads(self.source, branches)

    def resolve(self, rev: str) -> str:
        """The full sha of a revision; fetches a mirror once when the revision is not known yet."""
        for attempt in range(2):
            try:
                return self.git_repo.commit(rev).hexsha
            except (git.BadName, ValueError):
                if attempt == 0 and self.mirrored:
                    self.fetch()
        raise GitError(f"unknown revision {rev!r} in {self.source}")

    def snapshot(self, rev: str) -> Snapshot:
        sha = self.resolve(rev)
        return Snapshot(self, self.git_repo.commit(sha))

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git_repo.is_ancestor(older, newer)

    def archive(self, sha: str, folder: str) -> bytes:
        """A tar of one folder as committed, with the folder as its root: a build context without a work tree."""
        return self.git_repo.git.archive("--format=tar", f"{sha}:{folder}", stdout_as_string=False)

    def changed_paths(self, old: str, new: str) -> list[str]:
        """Paths whose content differs between two commits (a tree comparison: ancestry does not matter)."""
        output = self.git_repo.git.diff("--name-only", "--no-renames", "-z", old, new)
        return [p for p in output.split("\0") if p]


@dataclass
class Snapshot:
    """The repository's content at one commit; folder listings are cached because hub discovery repeats them."""

    repo: DeploymentRepo
    commit: Commit
    _listings: dict[str, dict[str, Tree | Blob] | None] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return self.commit.hexsha

    def _listing(self, path: str) -> dict[str, Tree | Blob] | None:
        path = path.strip("/")
        if path not in self._listings:
            tree: Tree | Blob | None = self.commit.tree if not path else self.entry(path)
            self._listings[path] = {item.name: item for item in tree} if isinstance(tree, Tree) else None
        return self._listings[path]

    def entry(self, path: str) -> Tree | Blob | None:
        parent_path, _, name = path.strip("/").rpartition("/")
        listing = self._listing(parent_path)
        return listing.get(name) if listing is not None else None

    def object_id(self, path: str) -> str | None:
        """The git object id of a file or folder at this commit (equal ids mean equal content)."""
        entry = self.entry(path)
        return entry.hexsha if entry is not None else None

    def read(self, path: str) -> bytes | None:
        entry = self.entry(path)
        return entry.data_stream.read() if isinstance(entry, Blob) else None

    def exists(self, path: str) -> bool:
        return self.entry(path) is not None

    def is_dir(self, path: str) -> bool:
        return isinstance(self.entry(path), Tree)

    def list_dir(self, path: str) -> list[Tree | Blob]:
        listing = self._listing(path)
        return sorted(listing.values(), key=lambda item: item.name) if listing else []

    def describe(self, path: str) -> str:
        """How files are named in errors: the path and the commit they were read at."""
        return f"{path}@{self.sha[:7]}"


def extract_tar(data: bytes, target: Path) -> None:
    """Unpack a tar (a `git archive`) into `target`; members or links that would land outside it are refused.

    tarfile's `filter="data"` does this from Python 3.11.4 on; Debian 12's python3 (the code-location image's,
    deploy/Dockerfile) is 3.11.2 and lacks it, so there the same rule is checked here before extracting.
    """
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
            return
        root = target.resolve()
        for member in archive.getmembers():
            path = (root / member.name).resolve()
            link = (path.parent / member.linkname).resolve() if member.issym() else root / member.linkname
            unsafe = (
                member.isdev()
                or not path.is_relative_to(root)
                or (
                    (member.islnk() or member.issym())
                    and (os.path.isabs(member.linkname) or not link.is_relative_to(root))
                )
            )
            if unsafe:
                raise GitError(f"refusing to extract {member.name!r}: it would land outside {target}")
        archive.extractall(target)
