"""Health checks after each release, the promotion gate and automatic rollback.

The cluster is the local control plane (tests/services/cluster.py); the hub the API and test-user checks talk to
is a real JupyterHub (tests/services/jupyterhub.py).
"""

from __future__ import annotations

import socket

import dagster as dg
import pytest
from services.lab import CRASHING_HUB, Lab
from services.ticker import Ticker

from hubploy_dagster.holds import release_held_configuration
from hubploy_dagster.keys import release_key
from hubploy_dagster.record import DeployRecord, Held

pytestmark = pytest.mark.integration


def dead_url() -> str:
    """A loopback address where nothing listens: a hub that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_every_check_passes_against_a_healthy_release_and_a_real_hub(lab: Lab, jupyterhub_server):
    lab.configure(
        lab.environments(staging_url=jupyterhub_server.url) + "health: {test_user: {enabled: true}}\n",
        token=jupyterhub_server.token,
    )
    lab.push_current_image()
    run = lab.materialize(checks=True)
    assert run.success, run.error() if not run.success else ""
    checks = run.checks()
    assert set(checks) == {"release_deployed", "workloads_ready", "hub_api", "test_user_server"}
    assert all(check.passed for check in checks.values()), {n: c.description for n, c in checks.items()}
    assert checks["release_deployed"].description == "release lab-staging deployed at revision 1"
    assert checks["hub_api"].metadata["version"].value
    [healthy] = [o for o in run.observations() if "healthy_revision" in o]
    assert healthy["healthy_revision"] == 1 and healthy["fingerprint"] == run.metadata()["fingerprint"]
    assert jupyterhub_server.token not in run.recorded()


def test_readiness_names_the_crash_looping_pod(lab: Lab):
    lab.push_current_image()
    assert lab.materialize().success
    pods = lab.cluster.mark_crashloop(lab.namespace, "hub")
    run = lab.materialize(checks_only=True)
    workloads = run.checks()["workloads_ready"]
    assert not workloads.passed
    assert f"pod {pods[0]} container hub: CrashLoopBackOff" in (workloads.description or "")
    assert run.checks()["release_deployed"].passed


def test_failing_blocking_check_on_staging_stops_prod_in_the_same_run(lab: Lab):
    lab.configure(lab.environments(staging_url=dead_url()))
    lab.push_current_image()
    run = lab.materialize("staging", "prod", checks=True)
    assert not run.checks()["hub_api"].passed and "connection refused" in (run.checks()["hub_api"].description or "")
    assert run.materialized() == ["lab/staging"]
    assert not lab.release_exists("prod")


def test_rollback_returns_to_the_last_healthy_revision_and_says_so(lab: Lab, jupyterhub_server):
    lab.configure(lab.environments(staging_url=jupyterhub_server.url) + "rollback: on-failure\n")
    lab.push_current_image()
    healthy = lab.materialize(checks=True)
    assert healthy.success and all(c.passed for c in healthy.checks().values())
    lab.configure(lab.environments(staging_url=dead_url()) + "rollback: on-failure\n")
    broken = lab.materialize(checks=True)
    assert broken.metadata()["helm_revision"] == 2
    assert not broken.checks()["hub_api"].passed
    [rollback] = [o for o in broken.observations() if "rollback" in o]
    assert rollback == {
        "rollback": "done",
        "from_revision": 2,
        "to_revision": 1,
        "new_revision": 3,
        "failed_checks": "hub_api",
        "fingerprint": broken.metadata()["fingerprint"],  # the configuration rolled away from: held by the sensor
    }
    history = lab.history()
    assert [h["revision"] for h in history] == [1, 2, 3] and history[-1]["description"] == "Rollback to 1"
    assert history[-1]["status"] == "deployed"


def test_rollback_finds_the_healthy_revision_behind_hundreds_of_later_events(lab: Lab, jupyterhub_server):
    """The deploy record is queried, not windowed: 500 other events on the release and elsewhere hide nothing."""
    lab.configure(lab.environments(staging_url=jupyterhub_server.url) + "rollback: on-failure\n")
    lab.push_current_image()
    assert lab.materialize(checks=True).success
    for n in range(250):
        for key in (release_key("lab", "staging"), release_key("another-hub", "staging")):
            lab.instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata={"note": n}))
    lab.configure(lab.environments(staging_url=dead_url()) + "rollback: on-failure\n")
    broken = lab.materialize(checks=True)
    [rollback] = [o for o in broken.observations() if "rollback" in o]
    assert (rollback["rollback"], rollback["from_revision"], rollback["to_revision"]) == ("done", 2, 1)


def test_no_rollback_without_an_earlier_healthy_revision(lab: Lab):
    lab.configure(lab.environments(staging_url=dead_url()) + "rollback: on-failure\n")
    lab.push_current_image()
    run = lab.materialize(checks=True)
    assert {"rollback": "impossible", "from_revision": 1, "failed_checks": "hub_api"} in run.observations()
    assert [h["revision"] for h in lab.history()] == [1]


def test_promotion_gate_refuses_an_untested_configuration_and_allows_a_tested_one(lab: Lab, jupyterhub_server):
    lab.configure(lab.environments(staging_url=jupyterhub_server.url))
    lab.push_current_image()
    refused = lab.materialize("prod")
    assert refused.success and refused.materialized() == []
    [observation] = refused.observations()
    assert observation["promotion"] == "refused" and "never passed its staging checks" in observation["reason"]
    assert not lab.release_exists("prod")

    assert lab.materialize(checks=True).success
    promoted = lab.materialize("prod")
    assert promoted.materialized() == ["lab/prod"]
    assert "promotion_override" not in promoted.metadata("prod")
    assert lab.history("prod")[-1]["status"] == "deployed"

    lab.builder.commit("an untested change", {"hubs/lab/config/prod.yaml": "jupyterhub: {cull: {timeout: 7200}}\n"})
    forced = lab.materialize("prod", tags={"promotion_override": "alice: hotfix, incident 42"})
    assert forced.materialized() == ["lab/prod"]
    assert forced.metadata("prod")["promotion_override"] == "alice: hotfix, incident 42"


def test_rollback_job_returns_a_release_to_a_chosen_revision(lab: Lab):
    """The operator's rollback job: helm rollback with the hub's credentials, recorded on the release asset."""
    lab.push_current_image()
    _, result = lab.upgrade_then_roll_back()
    assert result.success
    history = lab.history()
    assert [h["revision"] for h in history] == [1, 2, 3] and history[-1]["description"] == "Rollback to 1"
    [observation] = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    metadata = {k: v.value for k, v in observation.asset_observation_data.asset_observation.metadata.items()}
    replaced = DeployRecord(lab.instance).deployed_fingerprints(["lab"], "staging")["lab"]
    assert metadata == {"rollback": "manual", "to_revision": 1, "new_revision": 3, "fingerprint": replaced}


def test_a_failed_upgrade_rolls_back_to_the_last_healthy_revision_and_prod_is_untouched(lab: Lab):
    """helm fails halfway (the new revision's hub never becomes ready, no --atomic): with `rollback: on-failure`
    the release goes back to the last healthy revision, prod in the same run is not deployed, and the run's
    events hold both the failure and the rollback. The same configuration pushed again is held by the git
    sensor until an operator releases it (issue 19)."""
    lab.configure(lab.environments() + "rollback: on-failure\nhelm: {timeout: 15s}\n")
    lab.push_current_image()
    healthy = lab.materialize("staging", "prod", checks=True)
    assert healthy.success, healthy.error()
    prod_before = lab.history("prod")
    lab.builder.commit("a hub image that crashes", {"hubs/lab/config/staging.yaml": CRASHING_HUB})
    failed = lab.materialize("staging", "prod", checks=True)
    assert not failed.success
    assert "helm upgrade of lab-staging" in failed.error()
    history = lab.history()
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "failed"), (3, "deployed")]
    assert history[-1]["description"] == "Rollback to 1"
    [rollback] = [o for o in failed.observations() if "rollback" in o]
    assert rollback == {
        "rollback": "done",
        "from_revision": None,
        "to_revision": 1,
        "new_revision": 3,
        "failed_upgrade": "helm upgrade of lab-staging",
        "fingerprint": lab.fingerprint(),  # the configuration that failed: the sensor holds it
    }
    assert failed.materialized() == [] and lab.history("prod") == prod_before

    again = lab.builder.commit("notes, the configuration as it was", {"NOTES.md": "the crash is looked into\n"})
    ticker = Ticker(lab.builder)
    ticker.instance = lab.instance  # the sensor reads the deploy record the rollback wrote
    assert ticker.tick()[0] == [], "the rolled-back configuration is not deployed again"
    hold = DeployRecord(lab.instance).latest_fact("lab", "staging")
    assert isinstance(hold, Held) and (hold.kind, hold.git_sha) == ("rollback", again), hold
    release_held_configuration(DeployRecord(lab.instance), "lab", "staging", "dana", "the image is fixed upstream")
    assert ticker.tick()[0] == [("lab", "staging", again)], "released: the sensor deploys it"
