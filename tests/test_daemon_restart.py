"""The daemon dies with deploys queued and one running; the running deploy's worker dies with it. Then the
daemon comes back: no queued deploy is lost or launched twice, the interrupted one is failed (its worker found
gone) and retried once, and the retry does not put its older commit over the newer ones deployed meanwhile.

Dagster runs as in production, its code server, webserver and daemon as separate processes
(tests/services/dagster_split.py); the deploys are real (git, Docker engine, registry, helm) on the local
control plane (tests/services/cluster.py), started by the git sensor, observed over GraphQL.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from services.cluster import CRASHING_TAG
from services.registry import remove_local_images
from services.repos import RepoBuilder
from test_end_to_end import DEMO_KEY, push, write_hubs

from hubploy_dagster.helm import Helm

pytestmark = pytest.mark.integration

HUB = "datahub"
WAIT_S = 300.0
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def test_daemon_killed_with_deploys_queued_and_one_running_then_restarted(
    repo_builder: RepoBuilder, registry, k8s_cluster, chart_cache: Path, dagster_split, tmp_path: Path
):
    image_prefix = f"{registry.host}/restart-{uuid.uuid4().hex[:8]}"
    namespaces = {(HUB, env): k8s_cluster.new_namespace_name(f"rs-{HUB}-{env}") for env in ("staging", "prod")}
    write_hubs(repo_builder, image_prefix, namespaces, hubs=(HUB,))
    sha0 = repo_builder.commit("datahub")
    origin = tmp_path / "deployment.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=staging", str(origin)], check=True)
    push(repo_builder, origin, "staging:refs/heads/staging", "staging:refs/heads/prod")
    env = k8s_cluster.helm_env()
    env |= {
        "HUBPLOY_REPO": str(origin),
        "HUBPLOY_SENSOR_INTERVAL": "2",
        "SOPS_AGE_KEY_FILE": str(DEMO_KEY),
        "HUBPLOY_CHART_CACHE": str(chart_cache),
        "HUBPLOY_BUILD_ARGS": "BASE_IMAGE=hubploy-dagster/base:busybox",
    }
    staging_ns = namespaces[HUB, "staging"]
    with contextlib.ExitStack() as stack:
        stack.callback(remove_local_images, image_prefix)
        dagster = dagster_split.start(env)
        dev = dagster.webserver

        def runs(sha: str) -> list[dict[str, Any]]:
            return dev.runs({"hub": HUB, "env": "staging", "git_sha": sha})

        def one(sha: str, status: str) -> dict[str, Any] | None:
            found = runs(sha)
            return found[0] if len(found) == 1 and found[0]["status"] == status else None

        # A first deploy that succeeds (the release then has a good revision to return to).
        dev.wait_for("the first deploy", lambda: one(sha0, "SUCCESS"), WAIT_S)

        # A deploy held in `helm upgrade --wait`: a hub image whose pods crash-loop never becomes ready ...
        staging_values = repo_builder.path / "hubs/datahub/config/staging.yaml"
        good_values = staging_values.read_text()
        crashing = yaml.safe_load(good_values)
        crashing["jupyterhub"]["hub"]["image"] = {"tag": f"{CRASHING_TAG}-1"}
        staging_values.write_text(yaml.safe_dump(crashing))
        sha1 = repo_builder.commit("datahub: change 1")
        push(repo_builder, origin, "staging:refs/heads/staging")
        running = dev.wait_for("the run of change 1 in helm upgrade", lambda: in_helm_upgrade(dev, runs(sha1)), WAIT_S)
        # ... and two more pushes for the same hub, queued behind it (one run per hub at a time).
        queued = {}
        for n in (2, 3):
            staging_values.write_text(f"{good_values}# restart test: change {n}\n")
            sha = repo_builder.commit(f"datahub: change {n}")
            push(repo_builder, origin, "staging:refs/heads/staging")
            queued[sha] = dev.wait_for(f"the queued run of change {n}", lambda sha=sha: one(sha, "QUEUED"), WAIT_S)

        # The run worker was forked beside the daemon (hubploy's run launcher): the machine the daemon ran on
        # takes the worker and its helm with it.
        worker = running["tags"]["hubploy/run_worker"]
        dagster.kill_daemon()
        dagster.kill_run_worker(running["runId"])
        time.sleep(5)
        assert all(one(sha, "QUEUED") for sha in queued), "nothing is dequeued without a daemon"
        assert one(sha1, "STARTED"), "nothing notices the dead worker without a daemon"
        assert helm_status(env, staging_ns) == "pending-upgrade"  # what the killed helm left

        dagster.start_daemon()
        # The restarted daemon's run monitoring finds the worker gone by its pid and fails the run.
        failed = dev.wait_for("the interrupted run to be marked failed", lambda: one(sha1, "FAILURE"), WAIT_S)
        assert any(
            f"run worker pid {worker.rpartition(':')[2]} is gone" in m for m in dev.run_messages(failed["runId"])
        )
        retry = dev.wait_for(
            "the retry of the interrupted run",
            lambda: next((r for r in runs(sha1) if r["tags"].get("dagster/parent_run_id") == failed["runId"]), None),
            WAIT_S,
        )
        done = dev.wait_for(
            "every deploy to finish",
            lambda: all(r["status"] in FINISHED for sha in (sha1, *queued) for r in runs(sha)) and runs(sha1),
            WAIT_S,
        )
        assert done
        sha2, sha3 = queued
        # Each queued deploy ran exactly once, and succeeded.
        for sha in queued:
            [run] = runs(sha)
            assert run["runId"] == queued[sha]["runId"] and run["status"] == "SUCCESS", dev.diagnostics([run["runId"]])
        # The interrupted deploy: failed, retried exactly once; the retry stood down for the newer deploys.
        attempts = runs(sha1)
        assert len(attempts) == 2, attempts
        retry = next(r for r in attempts if r["runId"] != failed["runId"])
        assert retry["tags"]["dagster/retry_number"] == "1" and retry["status"] == "SUCCESS", dev.diagnostics(
            [retry["runId"]]
        )
        stood_down = [o for o in dev.observations(f"{HUB}/staging") if o["runId"] == retry["runId"]]
        assert stood_down and stood_down[0]["metadata"]["superseded_by"] in {q["runId"] for q in queued.values()}
        # Never two runs of the hub at once; the release ends at the newest commit, healthy and not pending.
        ordered = sorted([failed, *(runs(sha2) + runs(sha3)), retry], key=lambda r: r["startTime"])
        for before, after in itertools.pairwise(ordered):
            assert after["startTime"] >= before["endTime"], (before, after)
        latest = dev.materializations(f"{HUB}/staging", limit=1)[0]
        assert latest["metadata"]["git_sha"] == sha3 and latest["runId"] == queued[sha3]["runId"]
        assert helm_status(env, staging_ns) == "deployed"


def in_helm_upgrade(dev, found: list[dict[str, Any]]) -> dict[str, Any] | None:
    if len(found) != 1 or found[0]["status"] != "STARTED":
        return None
    messages = dev.run_messages(found[0]["runId"])
    return found[0] if any("helm upgrade --install" in m for m in messages) else None


def helm_status(helm_env: dict[str, str], namespace: str) -> str:
    status = Helm(env=helm_env).status(f"{HUB}-staging", namespace)
    return str((status or {}).get("info", {}).get("status"))
