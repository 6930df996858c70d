"""Where a release came from, as links the Dagster UI shows: the commit on its forge, the run, the staging pass.

A release's materialization is where an operator starts when asking "what is this hub running, and why":
its metadata links the commit page (when the deployment repository lives on a forge we know how to link
to), the run that deployed it (when the webserver's address is configured), and for prod the staging
materialization whose checks allowed the promotion. Only the forge's host and repository path are ever
taken from a remote URL, so credentials in it (`https://user:token@...`) never reach the metadata.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from hubploy_dagster import settings
from hubploy_dagster.release import ReleaseResult
from hubploy_dagster.repo import DeploymentRepo

# The commit page of each forge, relative to the repository's page.
FORGE_COMMIT_PATHS = {
    "github.com": "commit/{sha}",
    "gitlab.com": "-/commit/{sha}",
    "bitbucket.org": "commits/{sha}",
}

# git's scp-like form: `git@github.com:owner/repo.git` (no scheme, a colon before the path).
SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[^@/:]+):(?P<path>[^/].*)$")


def forge_repository(remote: str | None) -> tuple[str, str] | None:
    """(host, owner/repo) of a remote on a known forge, in https, ssh:// or scp-like form; None otherwise."""
    if not remote:
        return None
    parts = urlsplit(remote)
    if parts.scheme in ("https", "http", "ssh", "git") and parts.hostname:
        host, path = parts.hostname, parts.path
    elif not parts.scheme and (match := SCP_LIKE.match(remote)):
        host, path = match["host"], match["path"]
    else:
        return None
    path = path.strip("/").removesuffix(".git")
    if host.lower() not in FORGE_COMMIT_PATHS or "/" not in path:
        return None
    return host.lower(), path


def commit_url(remote: str | None, sha: str) -> str | None:
    found = forge_repository(remote)
    if found is None:
        return None
    host, path = found
    return f"https://{host}/{path}/{FORGE_COMMIT_PATHS[host].format(sha=sha)}"


def run_url(webserver: str | None, run_id: str | None) -> str | None:
    return f"{webserver.rstrip('/')}/runs/{run_id}" if webserver and run_id else None


def remote_of(repo: DeploymentRepo) -> str | None:
    """The deployment repository's forge address: its URL when mirrored, else a local clone's `origin`."""
    if repo.mirrored:
        return repo.source
    return next((remote.url for remote in repo.git_repo.remotes if remote.name == "origin"), None)


def release_metadata(result: ReleaseResult, repo: DeploymentRepo, run_id: str | None) -> dict[str, Any]:
    """What a release deployed (helm's record) and where it came from: the commit, the image, the run."""
    link = commit_url(remote_of(repo), result.git_sha)
    metadata: dict[str, Any] = {
        **result.metadata(),
        "commit": dg.MetadataValue.url(link) if link else dg.MetadataValue.text(result.git_sha),
    }
    if result.url:
        metadata["url"] = dg.MetadataValue.url(result.url)
    if run := run_url(settings.current().webserver_url, run_id):
        metadata["run"] = dg.MetadataValue.url(run)
    return metadata


PROMOTION_SECONDS = "promotion_seconds"


def promoted_from(release: dg.EventLogRecord | None, passed: dg.EventLogRecord) -> dict[str, Any]:
    """For a promotion: the release materialization whose checks passed (`passed`, their healthy mark) and its run.

    The checks read the latest release when they ran, so the one they passed is the newest one stored before
    their healthy mark (`release`).
    """
    run_id = release.run_id if release else passed.run_id
    metadata: dict[str, Any] = {"promoted_from_run": run_id}
    if release:
        metadata["promoted_from_storage_id"] = release.storage_id
        metadata["promoted_from_time"] = dg.MetadataValue.timestamp(release.timestamp)
        # a number the UI plots per release: the lead time from the environment before
        metadata[PROMOTION_SECONDS] = round(time.time() - release.timestamp, 1)
    if link := run_url(settings.current().webserver_url, run_id):
        metadata["promoted_from_run_link"] = dg.MetadataValue.url(link)
    return metadata
