"""After the deploy (issue 19): drift detected, and health checked again on a schedule, on the real cluster.

An out-of-band `helm rollback` is reported by the drift check (a warning naming the revision nobody recorded
and the keys whose values differ, never the values); the watch sensor asks for each deployed release's checks
once per period; and a hub that breaks after its deploy turns red on the next scheduled evaluation without
being rolled back.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import dagster as dg
import httpx
import pytest
from services.cluster import tool
from services.http_stub import serving
from services.lab import CANARY, Lab

from hubploy_dagster import rollout
from hubploy_dagster.assets import hub_assets
from hubploy_dagster.chain import Chain, default_chain
from hubploy_dagster.record import DeployRecord, Rollback
from hubploy_dagster.resources import TAG_PURPOSE, DeploymentRepoResource, DockerEngineResource, SopsResource
from sensors.watch import build_watch_sensor

pytestmark = pytest.mark.integration


WATCHED = Chain(default_chain().branches, watch={"staging": "1h"})


def test_only_watched_environments_check_drift(lab: Lab):
    def staging_checks(chain: Chain) -> set[str]:
        definitions = hub_assets(lab.hub(), chain)
        return {key.name for d in definitions for key in d.check_keys if key.asset_key.path[-1] == "staging"}

    assert "drift" not in staging_checks(default_chain()) and "drift" in staging_checks(WATCHED)


def test_an_out_of_band_rollback_is_reported_as_drift(lab: Lab):
    lab.push_current_image()
    first = lab.materialize(checks=True, chain=WATCHED)
    assert first.checks()["drift"].passed, first.checks()["drift"].description
    lab.builder.commit("bigger", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  singleuser:\n    cpu: {limit: 2}\n"})
    second = lab.materialize(checks=True, chain=WATCHED)
    assert second.checks()["drift"].passed, "a release hubploy made right now has not drifted"

    helm = [tool("helm"), "rollback", "lab-staging", "1", "--namespace", lab.namespace, "--wait"]
    subprocess.run(helm, env=lab.cluster.helm_env(), check=True, capture_output=True)  # by hand, outside hubploy
    watched = lab.materialize(checks_only=True, tags={TAG_PURPOSE: "watch"}, chain=WATCHED)
    drift = watched.checks()["drift"]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert "revision 3 (Rollback to 1) was not made by hubploy, which last deployed revision 2" in drift.description
    changed = drift.metadata["changed_values"].value
    assert "jupyterhub.singleuser.cpu" in ",".join(changed), changed
    objects = drift.metadata["changed_objects"].value  # revision 3 renders revision 1's manifest, not 2's
    assert objects and "revision 3 renders differently from 2: " in drift.description, drift.description
    assert all("/" in name for name in objects), "objects are named, never shown"
    assert CANARY not in watched.recorded(), "values are named by their keys, never shown"
    assert [h["revision"] for h in lab.history()] == [1, 2, 3], "drift is reported, never corrected"


def test_an_image_edited_in_the_cluster_is_reported_as_drift(lab: Lab):
    """`kubectl set image`: helm never sees it, so only the live workloads against the manifest show it."""
    lab.push_current_image()
    deployed = lab.materialize(checks=True, chain=WATCHED)
    assert deployed.checks()["drift"].passed, deployed.checks()["drift"].description
    by_hand = [tool("kubectl"), "set", "image", "deployment/hub", "hub=registry.invalid/edited:by-hand"]
    subprocess.run(
        [*by_hand, "--namespace", lab.namespace], env=lab.cluster.kubectl_env(), check=True, capture_output=True
    )
    watched = lab.materialize(checks_only=True, tags={TAG_PURPOSE: "watch"}, chain=WATCHED)
    drift = watched.checks()["drift"]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    [edited] = drift.metadata["edited_images"].value
    assert edited.startswith("Deployment/hub container hub runs registry.invalid/edited:by-hand where the release has ")
    assert "not made by hubploy" not in drift.description, "the revision is still hubploy's: helm never saw the edit"


def test_an_out_of_band_upgrade_is_reported_as_drift(lab: Lab, jupyterhub_chart: Path, tmp_path: Path):
    lab.push_current_image()
    deployed = lab.materialize(checks=True, chain=WATCHED)
    assert deployed.checks()["drift"].passed, deployed.checks()["drift"].description
    chart = tmp_path / "chart"  # the hub's chart as an operator has it at hand, with its dependency
    shutil.copytree(lab.builder.path / "chart", chart)
    (chart / "charts").mkdir(exist_ok=True)
    shutil.copy(jupyterhub_chart, chart / "charts")
    by_hand = [tool("helm"), "upgrade", "lab-staging", str(chart), "--namespace", lab.namespace, "--reuse-values"]
    by_hand += ["--set", "jupyterhub.singleuser.cpu.limit=3", "--wait", "--timeout", "60s"]
    subprocess.run(by_hand, env=lab.cluster.helm_env(), check=True, capture_output=True)
    watched = lab.materialize(checks_only=True, tags={TAG_PURPOSE: "watch"}, chain=WATCHED)
    drift = watched.checks()["drift"]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert "revision 2 (Upgrade complete) was not made by hubploy, which last deployed revision 1" in drift.description
    assert "jupyterhub.singleuser.cpu" in ",".join(drift.metadata["changed_values"].value)
    assert CANARY not in watched.recorded()


def test_the_watch_sensor_asks_for_each_release_s_checks_once_per_period(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    lab.push_current_image()
    assert lab.materialize().success
    clock = [datetime(2026, 12, 1, 10, 5, tzinfo=UTC)]
    monkeypatch.setattr(rollout, "now", lambda: clock[0])
    chain = WATCHED
    assets = hub_assets(lab.hub(), chain)
    resources = {
        "deployment_repo": DeploymentRepoResource(source=str(lab.builder.path)),
        "docker_engine": DockerEngineResource(),
        "sops": SopsResource(age_key_file=str(lab.age_key)),
    }
    defs = dg.Definitions(assets=assets, sensors=[build_watch_sensor(chain)], resources=resources)
    sensor = defs.resolve_sensor_def("watch_releases")

    def requests() -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=lab.instance, definitions=defs)
        return list(sensor(context).run_requests or [])

    [request] = requests()
    assert request.asset_selection == [] and request.tags[TAG_PURPOSE] == "watch"
    assert {check.name for check in request.asset_check_keys or []} >= {"release_deployed", "workloads_ready", "drift"}
    clock[0] += timedelta(minutes=30)
    assert [r.run_key for r in requests()] == [request.run_key], "one run per period"
    clock[0] += timedelta(hours=1)
    assert [r.run_key for r in requests()] != [request.run_key], "the next period checks again"


class BlipFront(BaseHTTPRequestHandler):
    """In front of the real hub: the first request of each blip meets a 503 (a load balancer's hiccup), the
    others reach the hub."""

    upstream = ""
    blips = 1  # requests left to refuse

    def do_GET(self) -> None:
        if BlipFront.blips > 0:
            BlipFront.blips -= 1
            self.send_response(503)
            self.end_headers()
            return
        answer = httpx.get(BlipFront.upstream + self.path)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_hub_that_breaks_after_its_deploy_turns_red_and_is_not_rolled_back(lab: Lab, jupyterhub_server):
    """A failure is retried: a blip passes on its second attempt, a hub that stays down is reported after all of
    them (the check's metadata counts them), and the scheduled run never rolls back."""
    BlipFront.upstream = jupyterhub_server.url.rstrip("/")
    with serving(BlipFront) as front:
        lab.configure(lab.environments(staging_url=front) + "rollback: on-failure\n", hub_api_retries=1)
        lab.push_current_image()
        BlipFront.blips = 0
        deployed = lab.materialize(checks=True)
        assert deployed.checks()["hub_api"].passed
        BlipFront.blips = 1
        blip = lab.materialize(checks_only=True, tags={TAG_PURPOSE: "watch"})
        hub_api = blip.checks()["hub_api"]
        assert hub_api.passed and hub_api.metadata["attempts"].value == 2, "a blip is retried, not reported"
        jupyterhub_server.stop()  # the hub breaks later (a node pool change, an expired certificate...)
        try:
            watched = lab.materialize(checks_only=True, tags={TAG_PURPOSE: "watch"})
        finally:
            jupyterhub_server.start()
    hub_api = watched.checks()["hub_api"]
    assert not hub_api.passed, "red on the scheduled evaluation"
    assert hub_api.metadata["attempts"].value == 2, "reported once every attempt failed (retries: 1)"
    assert not any(isinstance(f, Rollback) for _, f in DeployRecord(lab.instance).facts("lab", "staging"))
    assert [h["revision"] for h in lab.history()] == [1], "reported, not rolled back"
