"""`helm rollback` of a hub's release, with the hub's cluster credentials: for the checks and for operators."""

from __future__ import annotations

from collections.abc import Callable

from hubploy_dagster.cloud import cluster_login
from hubploy_dagster.deployment import Hub, load_deployment
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Masker, Sops


def helm_rollback(
    repo: DeploymentRepo, sha: str, hub: Hub, env: str, revision: int, sops: Sops, log: Callable[[str], None]
) -> int:
    """Roll the release back to `revision`; returns the revision helm created for the rollback."""
    deployment = load_deployment(repo.snapshot(sha))
    namespace, release = hub.namespace(env), hub.release_name(env)
    masker = Masker()
    with cluster_login(hub, deployment.snapshot, namespace, sops, masker) as login:
        helm = login.helm(masker, log)
        args = ["rollback", release, str(revision), "--namespace", namespace, "--wait"]
        if hub.config.helm.timeout:
            args += ["--timeout", hub.config.helm.timeout]
        helm.run(args, f"helm rollback of {release} to revision {revision}")
        return int(helm.history(release, namespace)[-1]["revision"])
