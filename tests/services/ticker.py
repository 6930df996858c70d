"""`Ticker`: the git sensor evaluated as the daemon evaluates it, on a real repository, tick after tick.

Shared by the sensor tests and the fault-injection suite.
"""

from __future__ import annotations

import dagster as dg

from hubploy_dagster.chain import repository_chain
from hubploy_dagster.definitions import build_definitions
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.keys import release_key
from hubploy_dagster.repo import DeploymentRepo
from sensors.git_sensor import build_git_sensor
from services.repos import RepoBuilder

BRANCHES = {"staging": "staging", "prod": "prod"}


class Ticker:
    """Evaluates the sensor the way the daemon does: same instance, cursor carried from tick to tick."""

    def __init__(self, builder: RepoBuilder, source: str | None = None):
        """`source` is the repository the sensor watches (default: the builder's own, pushed to by committing)."""
        self.builder = builder
        self.source = source or str(builder.path)
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None
        self.rechecks: list[tuple[str, str, str | None]] = []  # check-only runs requested (hub, env, run key)
        self.reload()

    def reload(self) -> None:
        """What a code-location reload does: the chain and the asset graph are read from the repository again."""
        self.defs = build_definitions(self.source)
        self.chain = repository_chain(DeploymentRepo(self.source), tuple(BRANCHES.values()))

    def tick(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        sensor = build_git_sensor(self.source, self.chain)
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return [], [result.skip_message or ""]
        self.cursor = result.cursor
        deploys = [r for r in result.run_requests or [] if r.asset_selection]
        self.rechecks += [
            (r.tags["hub"], r.tags["env"], r.run_key) for r in result.run_requests or [] if not r.asset_selection
        ]
        for request in deploys:
            assert request.run_key == f"{request.tags['hub']}:{request.tags['env']}:{request.tags['git_sha']}"
            assert request.tags["branch"] == BRANCHES[request.tags["env"]]
        return [(r.tags["hub"], r.tags["env"], r.tags["git_sha"]) for r in deploys], []

    def mark_staging_healthy(self, hub: str, rev: str) -> None:
        """Record what the staging checks record when they all pass: the promotion gate's evidence."""
        deployment = load_deployment(self.builder.open().snapshot(rev))
        fingerprint = deployment.fingerprint(deployment.hub(hub))
        self.instance.report_runless_asset_event(
            dg.AssetObservation(
                release_key(hub, "staging"), metadata={"healthy_revision": 1, "fingerprint": fingerprint}
            )
        )

    def mark_deployed(self, hub: str, env: str, rev: str) -> None:
        """Record a successful release of `hub` at `rev` as the release asset would."""
        deployment = load_deployment(self.builder.open().snapshot(rev))
        fingerprint = deployment.fingerprint(deployment.hub(hub))
        self.instance.report_runless_asset_event(
            dg.AssetMaterialization(release_key(hub, env), metadata={"fingerprint": fingerprint, "git_sha": rev})
        )


def head(builder: RepoBuilder, branch: str = "staging") -> str:
    return builder.repo.commit(branch).hexsha
