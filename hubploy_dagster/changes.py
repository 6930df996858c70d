"""Which hubs a move of a branch from commit A to commit B changes.

A hub changed when the content of any of its inputs (its folder, chart, secrets-submodule copy, `watch_paths`)
differs between A and B: a comparison of trees, the same whether B descends from A, merges it or replaced it by a
force-push (where hubploy's `git diff A...B` failed), and a change made then reverted changes nothing. A secrets
submodule is compared file by file; one that cannot be read changes every hub with inputs under it, no other.
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


def change_set(repo: DeploymentRepo, old: str | None, new: str) -> ChangeSet:
    """The hubs to deploy when a branch moves from `old` (None: never deployed) to `new`: the one answer the git
    sensor, `hubploy plan` and `hubploy changed` all ask."""
    after = load_deployment(repo.snapshot(new))
    if old is None:
        names = sorted(after.hubs)
        return ChangeSet(after, None, changed=names, removed=[], added=names)
    before = load_deployment(repo.snapshot(old))
    paths = repo.changed_paths(before.sha, after.sha) if before.sha != after.sha else []
    changed_paths = set(paths)
    touched = changed_paths | folders_of(paths)
    changed = []
    for name, hub in sorted(after.hubs.items()):
        previous = before.hubs.get(name)
        inputs = [*hub.input_paths(), *previous.input_paths()] if previous is not None else []
        # new, or an input changed: a changed path is it, lies under it or holds it (an unreadable submodule's path)
        if previous is None or touched.intersection(inputs) or changed_paths.intersection(folders_of(inputs)):
            changed.append(name)
    added = sorted(set(after.hubs) - set(before.hubs))
    removed = sorted({*before.hubs, *before.invalid} - {*after.hubs, *after.invalid})
    return ChangeSet(after, before.sha, changed, removed, added, not repo.is_ancestor(before.sha, after.sha))
