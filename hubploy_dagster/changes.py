"""Which hubs a move of a branch from commit A to commit B changes.

A hub changed when the content of any of its inputs (its folder, its chart, the secrets-submodule copy, its
`watch_paths`) differs between A and B. That is a comparison of trees, not a walk of the commits in between,
so it is the same whether B descends from A, merges it, or replaced it with a force-push; a change made and
reverted between A and B correctly changes nothing. hubploy's three-dot `git diff A...B` instead failed on
force-pushes ("Invalid symmetric difference expression").

A secrets submodule is compared inside, file by file, so moving its pin changes only the hubs whose files
under it differ; one that cannot be read changes every hub with inputs under it (their deploys then fail,
naming it) and no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hubploy_dagster.deployment import Deployment, load_deployment
from hubploy_dagster.errors import ConfigProblem
from hubploy_dagster.repo import DeploymentRepo, folders_of


@dataclass(frozen=True)
class ChangeSet:
    """The hubs a move from `old` to `new` changes, and the deployment at `new` they are read from."""

    after: Deployment
    old: str | None
    changed: list[str]
    removed: list[str]
    added: list[str] = field(default_factory=list)
    force_push: bool = False

    @property
    def new(self) -> str:
        return self.after.sha

    @property
    def problems(self) -> list[ConfigProblem]:
        return self.after.problems

    def to_json(self) -> dict:
        return {
            "old": self.old,
            "new": self.new,
            "changed": self.changed,
            "removed": self.removed,
            "added": self.added,
            "force_push": self.force_push,
            "problems": [str(p) for p in self.problems],
        }


def change_set(repo: DeploymentRepo, old: str | None, new: str) -> ChangeSet:
    """The hubs to deploy when a branch moves from `old` (None: never deployed) to `new`.

    The one answer to "which hubs does this move change": the git sensor, `hubploy plan` and `hubploy
    changed` all ask it.
    """
    after = load_deployment(repo.snapshot(new))
    if old is None:
        names = sorted(after.hubs)
        return ChangeSet(after, None, changed=names, removed=[], added=names)
    return _compare(repo, load_deployment(repo.snapshot(old)), after)


def _compare(repo: DeploymentRepo, before: Deployment, after: Deployment) -> ChangeSet:
    paths = repo.changed_paths(before.sha, after.sha) if before.sha != after.sha else []
    touched = set(paths) | folders_of(paths)
    changed, added = [], []
    for name, hub in sorted(after.hubs.items()):
        previous = before.hubs.get(name)
        if previous is None:
            added.append(name)
            changed.append(name)
        elif _touches(touched, set(paths), [*hub.input_paths(), *previous.input_paths()]):
            changed.append(name)
    known_before = set(before.hubs) | set(before.invalid)
    known_after = set(after.hubs) | set(after.invalid)
    removed = sorted(known_before - known_after)
    return ChangeSet(
        after,
        old=before.sha,
        changed=changed,
        removed=removed,
        added=added,
        force_push=not repo.is_ancestor(before.sha, after.sha),
    )


def _touches(touched: set[str], changed: set[str], inputs: list[str]) -> bool:
    """An input changed when a changed path is it, lies under it, or holds it (an unreadable submodule's path)."""
    return bool(touched.intersection(inputs) or changed.intersection(folders_of(inputs)))
