"""Rollouts on a real daemon (issue 18): per-cluster limits and canary waves.

Per-cluster concurrency: two hubs of one cluster with a limit of one never upgrade at the same time. The
project's dagster.yaml limits deploys per cluster with a tag concurrency limit on the run tag `cluster` (the
identity of the hub's `cluster` block; `current-context` for hubs without one, as both hubs here). Here a real
daemon queues the git sensor's runs, on the project's dagster.yaml with only that limit changed: 1, and then 2 to
show that the first assertion means something (the same two deploys do overlap when the limit lets them).

Canary waves: the canary hub's checks fail, so the daemon's sensor never deploys the later wave, and records why;
an operator resumes it (`hubploy release-hold`), and the sensor deploys it.

Dagster runs as in production, its code server, webserver and daemon as separate processes
(tests/services/dagster_split.py); the deploys are real (git, Docker engine, registry, helm) on the local control
plane (tests/services/cluster.py), started by the git sensor from one push, observed over GraphQL. Each hub's pod
becomes ready only SLOW_START after it is scheduled, so each deploy's `helm upgrade --wait` takes that long.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from services.dagster_dev import DagsterDev
from services.registry import remove_local_images
from services.repos import PROJECT_ROOT, RepoBuilder
from test_end_to_end import DEMO_KEY, push, slow_start, write_hubs

from hubploy_dagster.cli import main
from hubploy_dagster.history import deploy_history
from hubploy_dagster.record import DeployRecord, Held
from hubploy_dagster.resources import TAG_CLUSTER

pytestmark = pytest.mark.integration

HUBS = ("datahub", "research")  # the bundled example hubs: no `cluster` block, so one cluster
CLUSTER = "current-context"
SLOW_START = 8  # seconds each hub pod takes to become ready
WAIT_S = 300.0
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def concurrency(cluster_limit: int) -> dict[str, Any]:
    """The project's dagster.yaml `concurrency` section, its per-cluster limit set to `cluster_limit`."""
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["concurrency"]
    runs = settings["runs"]
    [entry] = [limit for limit in runs["tag_concurrency_limits"] if limit["key"] == TAG_CLUSTER]
    assert entry["value"] == {"applyLimitPerUniqueValue": True}, entry  # a limit per cluster, not one for all
    entry["limit"] = cluster_limit
    runs["max_concurrent_runs"] = 4  # the limit, not the queue's size, is what holds a run back
    return settings


@dataclass
class TwoHubs:
    """The two example hubs in a repository of their own, with an origin the daemon's sensor watches."""

    builder: RepoBuilder
    origin: Path
    env: dict[str, str]

    def push_staging(self, message: str) -> str:
        """Commit what the test wrote and push staging (only staging: its deploys are the only runs)."""
        sha = self.builder.commit(message)
        push(self.builder, self.origin, "staging:refs/heads/staging")
        return sha

    def edit_config(self, hub: str, edit: Callable[[dict[str, Any]], None]) -> None:
        path = self.builder.path / f"hubs/{hub}/hubploy.yaml"
        config = yaml.safe_load(path.read_text())
        edit(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture
def two_hubs(repo_builder: RepoBuilder, registry, k8s_cluster, chart_cache: Path, tmp_path: Path) -> Iterator[TwoHubs]:
    image_prefix = f"{registry.host}/rollout-{uuid.uuid4().hex[:8]}"
    namespaces = {
        (hub, env): k8s_cluster.new_namespace_name(f"ro-{hub}-{env}") for hub in HUBS for env in ("staging", "prod")
    }
    write_hubs(repo_builder, image_prefix, namespaces, hubs=HUBS)
    for hub in HUBS:
        slow_start(repo_builder.path / f"hubs/{hub}/config/staging.yaml", f"{SLOW_START}s")
    origin = tmp_path / "deployment.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=staging", str(origin)], check=True)
    env = k8s_cluster.helm_env() | {
        "HUBPLOY_REPO": str(origin),
        "HUBPLOY_SENSOR_INTERVAL": "2",
        "SOPS_AGE_KEY_FILE": str(DEMO_KEY),
        "HUBPLOY_CHART_CACHE": str(chart_cache),
        "HUBPLOY_BUILD_ARGS": "BASE_IMAGE=hubploy-dagster/base:busybox",
    }
    yield TwoHubs(repo_builder, origin, env)
    remove_local_images(image_prefix)


def finished_runs(dev: DagsterDev, hubs: tuple[str, ...], sha: str) -> list[dict[str, Any]] | None:
    """The staging runs of `hubs` at `sha` once each hub has one and all have finished (None until then)."""
    found = [dev.runs({"hub": hub, "env": "staging", "git_sha": sha}) for hub in hubs]
    if any(not runs or any(r["status"] not in FINISHED for r in runs) for runs in found):
        return None
    return [run for runs in found for run in runs]


@pytest.mark.parametrize(
    ("cluster_limit", "overlap"), [(1, False), (2, True)], ids=["limit-1-one-at-a-time", "limit-2-overlap"]
)
def test_two_hubs_of_one_cluster_never_upgrade_at_once_with_a_limit_of_one(
    cluster_limit: int, overlap: bool, two_hubs: TwoHubs, dagster_split
):
    sha = two_hubs.push_staging("two hubs of one cluster")
    dagster = dagster_split.start(two_hubs.env, instance={"concurrency": concurrency(cluster_limit)})
    dev = dagster.webserver
    runs = dev.wait_for("both hubs' staging deploys to finish", lambda: finished_runs(dev, HUBS, sha), WAIT_S)
    assert len(runs) == len(HUBS) and len(dev.runs()) == len(HUBS), dev.diagnostics()
    for run in runs:
        assert run["status"] == "SUCCESS", dev.diagnostics([run["runId"]])
        assert run["tags"][TAG_CLUSTER] == CLUSTER, run["tags"]
        # Slow indeed: the release step waited for the hub pod that long (helm upgrade --wait).
        hub = run["tags"]["hub"]
        [release] = [m for m in dev.materializations(f"{hub}/staging") if m["runId"] == run["runId"]]
        assert release["metadata"]["duration_seconds"] >= SLOW_START, release
    # Both requested by one sensor tick (one push): both queued together, from the start.
    ids = {run["runId"] for run in runs}
    ticks = dev.sensor_ticks(limit=20, statuses=["SUCCESS"])
    assert any(set(tick["runIds"]) == ids for tick in ticks), ticks

    first, second = sorted(runs, key=lambda run: run["startTime"])
    origin_time = min(run["creationTime"] for run in runs)
    timeline = {
        run["tags"]["hub"]: {k: round(run[k] - origin_time, 2) for k in ("creationTime", "startTime", "endTime")}
        for run in (first, second)
    }
    print(f"cluster limit {cluster_limit}: seconds after the first run was queued: {timeline}")
    # The second deploy was requested while the first was still going ...
    assert second["creationTime"] < first["endTime"], timeline
    if overlap:
        # ... and, with room for two deploys on the cluster, went at the same time.
        assert second["startTime"] < first["endTime"], timeline
        return
    # ... and waited in the queue until the first had ended: its release says so, naming the limit.
    assert second["startTime"] >= first["endTime"], timeline
    hub, run_id = second["tags"]["hub"], second["runId"]
    [release] = [m for m in dev.materializations(f"{hub}/staging") if m["runId"] == run_id]
    waited = second["startTime"] - second["creationTime"]
    assert SLOW_START <= release["metadata"]["queued_seconds"] <= waited, (release, timeline)
    assert release["metadata"]["queued_behind"] == f"at most 1 deploy(s) at once to cluster {CLUSTER}"
    with dg.DagsterInstance.from_config(str(dagster.home)) as instance:
        [entry] = [e for e in deploy_history(instance, hub, "staging", 5) if e.event == "release"]
    assert f"s in the run queue (at most 1 deploy(s) at once to cluster {CLUSTER})" in entry.detail, entry


def test_a_failing_canary_holds_the_later_wave_until_an_operator_resumes_it(two_hubs: TwoHubs, dagster_split):
    canary, later = HUBS

    def wave(number: int) -> Callable[[dict[str, Any]], None]:
        def edit(config: dict[str, Any]) -> None:
            config["environments"]["staging"]["rollout"] = {"wave": number}
            if number == 0:  # its hub API check fails: no JupyterHub answers at the example URL
                config["health"] = {"hub_api": {"enabled": True, "retries": 0, "timeout_seconds": 2}}

        return edit

    two_hubs.edit_config(canary, wave(0))
    two_hubs.edit_config(later, wave(1))
    sha = two_hubs.push_staging("a canary and a later wave")
    dagster = dagster_split.start(two_hubs.env)
    dev = dagster.webserver
    [run] = dev.wait_for("the canary's deploy to finish", lambda: finished_runs(dev, (canary,), sha), WAIT_S)
    [failed] = [c for c in dev.check_executions(f"{canary}/staging", "hub_api") if c["runId"] == run["runId"]]
    assert not failed["success"], failed
    ticks_before = len(dev.sensor_ticks(limit=100))
    dev.wait_for("three more sensor ticks", lambda: len(dev.sensor_ticks(limit=100)) >= ticks_before + 3, 60)
    assert dev.runs({"hub": later}) == [], "the later wave waits for the canary's checks"
    with dg.DagsterInstance.from_config(str(dagster.home)) as instance:
        record = DeployRecord(instance)
        hold = record.latest_fact(later, "staging")
        assert isinstance(hold, Held) and hold.kind == "wave" and canary in hold.reason, hold
        # The operator's decision, through the command, on the daemon's instance.
        resumed = CliRunner(env={"DAGSTER_HOME": str(dagster.home), "HUBPLOY_ACTOR": "carol"}).invoke(
            main, ["release-hold", later, "staging", "--reason", "the canary's URL is not served here"]
        )
        assert resumed.exit_code == 0 and "may deploy again (released by carol)" in resumed.output, resumed.output
    [deployed] = dev.wait_for("the resumed wave's deploy", lambda: finished_runs(dev, (later,), sha), WAIT_S)
    assert deployed["status"] == "SUCCESS", dev.diagnostics([deployed["runId"]])
