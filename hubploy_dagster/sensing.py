"""What a move of a watched branch should deploy: the plain logic behind the git sensor.

A tick reads branch heads (one `git ls-remote`); only a moved branch costs a fetch and one tree comparison. A hub
is requested when its configuration changed and is not what its last successful release deployed, so neither a
first start nor a lost cursor redeploys everything; hubs the code location lacks are reported, to reload it first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from hubploy_dagster.changes import change_set
from hubploy_dagster.deployment import Hub
from hubploy_dagster.errors import ConfigProblem
from hubploy_dagster.repo import DeploymentRepo

RELOAD_MUTATION = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) { __typename }
}
"""


@dataclass
class BranchMove:
    """What one branch's move deploys: hubs to deploy at `new`, and what the operator must be told."""

    env: str
    branch: str
    old: str | None
    new: str
    deploy: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    hubs: dict[str, Hub] = field(default_factory=dict)  # every valid hub at `new`


def branch_move(
    repo: DeploymentRepo,
    env: str,
    branch: str,
    old: str | None,
    new: str,
    deployed_fingerprint: Callable[[str], str | None],  # hub -> what its last release deployed
    known_hubs: set[str],
) -> BranchMove:
    """Which hubs the move of `branch` from `old` to `new` deploys to `env`."""
    changes = change_set(repo, old if old is not None and _known_commit(repo, old) else None, new)
    after = changes.after
    move = BranchMove(env, branch, old, new, removed=changes.removed, problems=after.problems, hubs=after.hubs)
    move.fingerprints = {name: after.fingerprint(hub) for name, hub in after.hubs.items()}
    for name in changes.changed:
        if deployed_fingerprint(name) == move.fingerprints[name]:
            move.up_to_date.append(name)
        elif name not in known_hubs:
            move.unknown.append(name)
        else:
            move.deploy.append(name)
    return move


def _known_commit(repo: DeploymentRepo, sha: str) -> bool:
    """A force-push can drop the old head from the repository altogether: then compare with nothing."""
    try:
        repo.resolve(sha)
    except Exception:
        return False
    return True


def reload_code_location(webserver_url: str, location: str, timeout: float = 30.0) -> str:
    """Ask the Dagster webserver to reload the code location, so that a new hub's assets exist."""
    response = httpx.post(
        f"{webserver_url.rstrip('/')}/graphql",
        json={"query": RELOAD_MUTATION, "variables": {"location": location}},
        timeout=timeout,
    )
    response.raise_for_status()
    data = response.json()
    if data.get("errors"):
        raise RuntimeError(f"reloading {location} at {webserver_url} failed: {json.dumps(data['errors'])[:300]}")
    return str(data["data"]["reloadRepositoryLocation"]["__typename"])
