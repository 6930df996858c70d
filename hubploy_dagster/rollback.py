"""`helm rollback` of a hub's release, with the hub's cluster credentials: for the checks and for operators."""

from __future__ import annotations

from hubploy_dagster.session import HubSession


def helm_rollback(session: HubSession, revision: int) -> int:
    """Roll the release back to `revision`; returns the revision helm created for the rollback."""
    release, namespace = session.release, session.namespace
    args = ["rollback", release, str(revision), "--namespace", namespace, "--wait"]
    if session.hub.config.helm.timeout:
        args += ["--timeout", session.hub.config.helm.timeout]
    with session.cluster() as cluster:
        cluster.helm.run(args, f"helm rollback of {release} to revision {revision}")
        return int(cluster.helm.history(release, namespace)[-1]["revision"])
