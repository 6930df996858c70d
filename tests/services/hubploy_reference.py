"""hubploy's own methods, the reference the product's faster ones are checked and benchmarked against."""

from __future__ import annotations

from hubploy_dagster.repo import DeploymentRepo


def hubploy_last_commit(repo: DeploymentRepo, rev: str, path: str) -> str | None:
    """hubploy's image tag source, one `git log` per folder: what the single-walk index must equal."""
    sha = repo.git_repo.git.log("-n", "1", "--pretty=format:%H", rev, "--", path)
    return sha or None
