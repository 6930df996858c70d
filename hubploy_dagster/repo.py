"""Git access to a deployment repository: branch heads, and files read at any commit without a work tree.

Deploys happen at exactly the commit a run pinned, so files are read from git objects, never a checkout. A remote
URL is mirrored into a local cache and fetched on demand; a local path (bare or not) is used as it is. A submodule
(hubploy's `secrets/`) answers from the commit its gitlink pins, found in a local clone's own copy or fetched from
the URL `.gitmodules` gives (relative URLs resolved as git does), as a recursive checkout would show it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import git
from git.objects import Blob, Commit, Submodule, Tree

from hubploy_dagster.errors import GitError

GITLINK_MODE = "160000"
NO_ENTRY_MODE = "000000"


class SubmoduleError(GitError):
    """A submodule's pinned commit cannot be read: names the submodule's path, its URL and the commit."""

    def __init__(self, path: str, url: str, commit: str, reason: str):
        self.path, self.url, self.commit, self.reason = path, url, commit, reason
        super().__init__(f"cannot read submodule {path} (url {url or 'unknown'}, commit {commit}): {reason}")


@dataclass(frozen=True)
class Gitlink:
    """A submodule entry of a tree: the commit pinned at `path`. GitPython's Submodule needs a checkout's
    .gitmodules for its `.name`; listings hold this instead, resolved to the submodule's tree only when read."""

    path: str
    hexsha: str
    type: str = "commit"

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


Entry = Tree | Blob | Gitlink


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
        folders.update("/".join(parts[:end]) for end in range(1, len(parts)))
    return folders


def _url_parent(url: str) -> str:
    """One level up in a URL or path: `https://h/org/a` -> `https://h/org`, `git@h:a` -> `git@h:`."""
    if "/" in url:
        return url.rpartition("/")[0] or "/"
    return f"{url.rpartition(':')[0]}:" if ":" in url else "."


def resolve_submodule_url(url: str, base: str) -> str:
    """git's rule: a `./` or `../` URL in .gitmodules is relative to the superproject's own URL (`base`)."""
    if not url.startswith(("./", "../")):
        return url
    base = base.rstrip("/")
    while url.startswith(("./", "../")):
        if url.startswith("../"):
            base = _url_parent(base)
        url = url.split("/", 1)[1]
    if not url:
        return base
    return f"{base}{'' if base.endswith(':') else '/'}{url}"


def remote_heads(source: str, branches: list[str]) -> dict[str, str]:
    """The current sha of each branch that exists, with one `git ls-remote` (cheap enough for a sensor tick)."""
    try:
        output = git.Git().ls_remote(source, *(f"refs/heads/{b}" for b in branches))
    except git.GitCommandError as exc:
        raise GitError(f"cannot list branches of {source}: {exc.stderr.strip() or exc}") from None
    lines = (line.partition("\t") for line in output.splitlines())
    return {ref.removeprefix("refs/heads/"): sha for sha, _, ref in lines}


class DeploymentRepo:
    """A deployment repository, local or remote, that can be read at any commit."""

    def __init__(self, source: str | os.PathLike[str], cache_dir: Path | None = None):
        self.source = str(source)
        self.cache_dir = cache_dir or default_cache_dir()
        self._submodule_repos: dict[str, DeploymentRepo] = {}
        self.mirrored = not _is_local_repository(self.source)
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        self.path = self.cache_dir / "mirrors" / f"{digest}.git" if self.mirrored else Path(self.source).resolve()
        if self.mirrored and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                git.Repo.clone_from(self.source, self.path, mirror=True)
            except git.GitCommandError as exc:
                raise GitError(f"cannot clone {self.source}: {exc.stderr.strip() or exc}") from None
        try:
            self.git_repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{self.source} is not a git repository") from None

    def fetch(self) -> None:
        """Bring a mirror up to date; a local repository is always current."""
        if self.mirrored:
            try:
                self.git_repo.git.fetch("--prune", "origin", "+refs/heads/*:refs/heads/*")
            except git.GitCommandError as exc:
                raise GitError(f"cannot fetch {self.source}: {exc.stderr.strip() or exc}") from None

    def has_commit(self, sha: str) -> bool:
        try:
            self.git_repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def ensure_commit(self, sha: str) -> None:
        """Make a commit present: a mirror fetches its branches, then the commit by id (a pin may be on no branch),
        kept under refs/hubploy/pins/ so that garbage collection never drops it."""
        if self.mirrored and not self.has_commit(sha):
            with suppress(GitError):
                self.fetch()
            if not self.has_commit(sha):
                with suppress(git.GitCommandError):
                    self.git_repo.git.fetch("origin", f"{sha}:refs/hubploy/pins/{sha}")
        if not self.has_commit(sha):
            raise GitError(f"commit {sha} is not in {self.source}")

    def upstream_url(self) -> str:
        """What relative submodule URLs are relative to, as for git: our URL, else the origin remote, else us."""
        if self.mirrored:
            return self.source
        with suppress(Exception):  # no origin remote, or one without a URL
            if url := self.git_repo.remotes.origin.url:
                return str(url)
        return str(self.path)

    def submodule_url(self, commit: str, path: str, pin: str) -> tuple[str, str]:
        """The name and URL that `.gitmodules`, as committed at `commit`, gives the submodule at `path`."""
        try:
            output = self.git_repo.git.config("--blob", f"{commit}:.gitmodules", "-z", "--get-regexp", r"^submodule\.")
        except git.GitCommandError:
            output = ""
        entries: dict[str, dict[str, str]] = {}
        for record in filter(None, output.split("\0")):
            key, _, value = record.partition("\n")
            name, _, variable = key.removeprefix("submodule.").rpartition(".")
            entries.setdefault(name, {})[variable] = value
        for name, entry in entries.items():
            if entry.get("path") == path and entry.get("url"):
                return name, entry["url"]
        raise SubmoduleError(path, "", pin, f".gitmodules at {commit[:7]} gives no URL for it")

    def _local_submodules(self, name: str, path: str) -> Iterator[DeploymentRepo]:
        """A non-bare clone's own copies of a submodule: `.git/modules/<name>`, then the checked-out folder."""
        candidates = [Path(self.git_repo.git_dir) / "modules" / name]
        if self.git_repo.working_tree_dir:
            candidates.append(Path(self.git_repo.working_tree_dir) / path)
        for candidate in candidates:
            if _is_local_repository(str(candidate)):
                with suppress(GitError):
                    yield self._submodule_repo(str(candidate))

    def _submodule_repo(self, location: str) -> DeploymentRepo:
        """One DeploymentRepo per submodule location (each holds git processes open), mirrored if a URL."""
        if location not in self._submodule_repos:
            self._submodule_repos[location] = DeploymentRepo(location, self.cache_dir)
        return self._submodule_repos[location]

    def submodule(self, commit: str, path: str, pin: str) -> DeploymentRepo:
        """The repository that holds the submodule at `path` of `commit`, with its pinned commit `pin` present: a
        local clone's own copy when it has the pin, else the URL from `.gitmodules` (a URL mirrored into our cache)."""
        name, url = self.submodule_url(commit, path, pin)
        local = next((repo for repo in self._local_submodules(name, path) if repo.has_commit(pin)), None)
        if local is not None:
            return local
        resolved = resolve_submodule_url(url, self.upstream_url())
        if resolved.startswith("-"):
            raise SubmoduleError(path, resolved, pin, "refusing a URL that starts with '-'")
        try:
            repo = self._submodule_repo(resolved)
            repo.ensure_commit(pin)
        except GitError as exc:
            raise SubmoduleError(path, resolved, pin, str(exc)) from None
        return repo

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
        return Snapshot(self, self.git_repo.commit(self.resolve(rev)))

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git_repo.is_ancestor(older, newer)

    def archive(self, sha: str, folder: str) -> bytes:
        """A tar of one folder as committed, with the folder as its root: a build context without a work tree.
        A folder inside a submodule comes from the pinned commit; a submodule inside it is an empty folder."""
        owner, owner_sha, inner = self.snapshot(sha).owner_of(folder)
        return owner.git_repo.git.archive("--format=tar", f"{owner_sha}:{inner}", stdout_as_string=False)

    def files(self, sha: str) -> list[str]:
        output = self.git_repo.git.ls_tree("-r", "-z", "--name-only", sha)
        return [p for p in output.split("\0") if p]

    def changed_paths(self, old: str, new: str) -> list[str]:
        """Paths whose content differs between two commits (a tree comparison: ancestry does not matter).

        A moved submodule pin gives the paths that differ inside the submodule, so a hub changes only when its own
        files there do; a submodule that cannot be read gives its own path: anything under it may have changed.
        """
        output = self.git_repo.git.diff(
            "--raw", "--no-abbrev", "--no-renames", "--ignore-submodules=none", "-z", old, new
        )
        fields = output.split("\0")  # ":<old mode> <new mode> <old id> <new id> <status>", then the path
        paths: list[str] = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            old_mode, new_mode, old_id, new_id = meta[1:].split()[:4]
            if {old_mode, new_mode} - {GITLINK_MODE, NO_ENTRY_MODE}:
                paths.append(path)
            if GITLINK_MODE in (old_mode, new_mode):
                old_pin = old_id if old_mode == GITLINK_MODE else None
                new_pin = new_id if new_mode == GITLINK_MODE else None
                paths += self._submodule_changes(old, new, path, old_pin, new_pin)
        return paths

    def _submodule_changes(self, old: str, new: str, path: str, old_pin: str | None, new_pin: str | None) -> list[str]:
        """The paths under a submodule that differ between two pins (all of its files when one side has none)."""
        try:
            if old_pin and new_pin:
                repo = self.submodule(new, path, new_pin)
                repo.ensure_commit(old_pin)
                inner = repo.changed_paths(old_pin, new_pin)
            else:
                commit, pin = (new, new_pin) if new_pin else (old, old_pin)
                inner = self.submodule(commit, path, pin).files(pin)
        except GitError:
            return [path]
        return [f"{path}/{p}" for p in inner]


@dataclass
class Snapshot:
    """The repository's content at one commit; folder listings are cached because hub discovery repeats them."""

    repo: DeploymentRepo
    commit: Commit
    _listings: dict[str, dict[str, Entry] | None] = field(default_factory=dict)
    _submodules: dict[str, Tree | SubmoduleError] = field(default_factory=dict)
    _mounts: dict[str, tuple[DeploymentRepo, str]] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return self.commit.hexsha

    def _listing(self, path: str) -> dict[str, Entry] | None:
        path = path.strip("/")
        if path not in self._listings:
            tree = self.commit.tree if not path else self.entry(path)
            self._listings[path] = None
            if isinstance(tree, Tree):
                entries = (Gitlink(item.path, item.hexsha) if isinstance(item, Submodule) else item for item in tree)
                self._listings[path] = {entry.name: entry for entry in entries}
        return self._listings[path]

    def _raw_entry(self, path: str) -> Entry | None:
        """The entry as its tree lists it: a submodule stays a Gitlink, so nothing is fetched for it."""
        parent_path, _, name = path.strip("/").rpartition("/")
        return (self._listing(parent_path) or {}).get(name)

    def entry(self, path: str) -> Tree | Blob | None:
        """A file or folder at this commit; a submodule is the tree of the commit it pins, from its repository."""
        entry = self._raw_entry(path)
        return self.submodule_tree(entry) if isinstance(entry, Gitlink) else entry

    def submodule_tree(self, link: Gitlink) -> Tree:
        """The pinned commit's tree, its paths prefixed with the submodule's; raises SubmoduleError (cached)."""
        if link.path not in self._submodules:
            self._submodules[link.path] = self._resolve(link)
        found = self._submodules[link.path]
        if isinstance(found, SubmoduleError):
            raise found
        return found

    def _mount_of(self, path: str) -> str:
        """The path of the innermost resolved submodule holding `path` ("" for the repository itself)."""
        holders = [mount for mount in self._mounts if path == mount or path.startswith(f"{mount}/")]
        return max(holders, key=len, default="")

    def _resolve(self, link: Gitlink) -> Tree | SubmoduleError:
        prefix = self._mount_of(link.path)
        owner, owner_sha = self._mounts.get(prefix) or (self.repo, self.sha)
        try:
            repo = owner.submodule(owner_sha, link.path.removeprefix(prefix).lstrip("/"), link.hexsha)
        except SubmoduleError as exc:  # a nested submodule's error named by its path here
            return SubmoduleError(link.path, exc.url, exc.commit, exc.reason)
        self._mounts[link.path] = (repo, link.hexsha)
        root = repo.git_repo.commit(link.hexsha).tree
        return Tree(repo.git_repo, root.binsha, root.mode, link.path)

    def owner_of(self, path: str) -> tuple[DeploymentRepo, str, str]:
        """The repository, commit and inner path that hold `path`: ours, or a submodule's at its pin."""
        self.entry(path)
        prefix = self._mount_of(path)
        if not prefix:
            return self.repo, self.sha, path
        repo, sha = self._mounts[prefix]
        return repo, sha, path.removeprefix(prefix).lstrip("/")

    def object_id(self, path: str) -> str | None:
        """The git object id of a file or folder at this commit (equal ids mean equal content); for a submodule's
        own path, the pinned commit, so it changes whenever the pin moves."""
        entry = self._raw_entry(path)
        return entry.hexsha if entry is not None else None

    def read(self, path: str) -> bytes | None:
        entry = self._raw_entry(path)
        return entry.data_stream.read() if isinstance(entry, Blob) else None

    def exists(self, path: str) -> bool:
        return self._raw_entry(path) is not None

    def is_dir(self, path: str) -> bool:
        return isinstance(self._raw_entry(path), Tree | Gitlink)

    def list_dir(self, path: str) -> list[Entry]:
        listing = self._listing(path)
        return sorted(listing.values(), key=lambda item: item.name) if listing else []

    def describe(self, path: str) -> str:
        """How files are named in errors: the path and the commit they were read at."""
        return f"{path}@{self.sha[:7]}"


def extract_tar(data: bytes, target: Path) -> None:
    """Unpack a tar (a `git archive`) into `target`; members or links that would land outside it are refused.

    tarfile's `filter="data"` does this from Python 3.11.4 on; Debian 12's python3 (deploy/Dockerfile) is 3.11.2.
    """
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
            return
        root = target.resolve()
        for member in archive.getmembers():
            path = (root / member.name).resolve()
            link = (path.parent / member.linkname).resolve() if member.issym() else root / member.linkname
            escapes = os.path.isabs(member.linkname) or not link.is_relative_to(root)
            if member.isdev() or not path.is_relative_to(root) or ((member.islnk() or member.issym()) and escapes):
                raise GitError(f"refusing to extract {member.name!r}: it would land outside {target}")
        archive.extractall(target)
