"""Failed deploys reach the configured webhook (Slack's incoming-webhook format), received by a local server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import dagster as dg
import pytest
from services.http_stub import serving

from hubploy_dagster.config import Owners
from hubploy_dagster.record import Held, RefusedPromotion, Rollback, observation
from sensors.notify import build_event_notifier, build_failure_sensor


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server standing in for Slack: it records what is posted."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield f"{url}/services/T000/B000/XXXX", received


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    with receiver() as found:
        yield found


@pytest.fixture
def owners_webhook() -> Iterator[tuple[str, list[dict]]]:
    """A second receiver: the webhook of one hub's owners."""
    with receiver() as found:
        yield found


def failed_run(instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    """A real failed run: a deploy step raising, tagged as the git sensor tags deploys."""

    @dg.asset(key=["alpha", "staging"])
    def staging() -> None:
        raise RuntimeError("helm upgrade failed")

    tags = {"hub": "alpha", "env": "staging", "git_sha": "b" * 40, "branch": "staging"}
    result = dg.materialize([staging], instance=instance, tags=tags, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    [failure] = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"]
    return run, failure


def test_failed_deploy_is_posted_to_the_webhook(webhook):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    run, event = failed_run(instance)
    sensor = build_failure_sensor(url, "http://127.0.0.1:3000")
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    )
    sensor(context.for_run_failure())
    [post] = received
    assert post["path"] == "/services/T000/B000/XXXX" and post["type"] == "application/json"
    text = post["body"]["text"]
    assert "*alpha*" in text and "*staging*" in text and "`bbbbbbb`" in text and "alpha__staging" in text
    assert f"http://127.0.0.1:3000/runs/{run.run_id}" in text
    assert "helm upgrade failed" not in text, "error text is never quoted"


def test_nothing_is_posted_without_a_webhook(webhook):
    _, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    run, event = failed_run(instance)
    sensor = build_failure_sensor(None, None)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    )
    sensor(context.for_run_failure())
    assert received == []


@pytest.fixture
def sqlite_instance(tmp_path) -> Iterator[dg.DagsterInstance]:
    """The storage `dagster dev` has with the shipped dagster.yaml: SQLite, events in one file per run."""
    (tmp_path / "dagster.yaml").write_text("")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_failures_rollbacks_refusals_holds_and_drift_reach_the_owners_and_the_global_webhook(
    webhook, owners_webhook, sqlite_instance
):
    url, received = webhook
    owners_url, owners_received = owners_webhook
    owners = {"alpha": Owners(names=["alice", "@data-team"], webhook=owners_url)}
    instance = sqlite_instance
    run, event = failed_run(instance)
    failures = build_failure_sensor(url, None, owners)
    context = dg.build_run_status_sensor_context(
        sensor_name=failures.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    )
    failures(context.for_run_failure())
    assert [p["body"]["text"] for p in received] == [p["body"]["text"] for p in owners_received]
    assert "(owners: alice, @data-team)" in received[0]["body"]["text"]

    notifier = build_event_notifier(url, owners)
    cursor = run_notifier(notifier, instance, None)  # the first evaluation posts nothing of the past
    received.clear()
    owners_received.clear()
    assert run_notifier(notifier, instance, cursor) == cursor and not received
    for hub, fact in (
        ("alpha", Rollback("done", 3, 2, 4, {"failed_checks": "hub_api"}, "f" * 64)),
        ("alpha", RefusedPromotion("never passed its staging checks", "a" * 40, "f" * 64)),
        ("alpha", Held("window", "inside the deny window", "2026-12-01 17:00 UTC", "a" * 40)),
        ("beta", Held("soak", "soaking 2h", "", "b" * 40)),
    ):
        instance.report_runless_asset_event(observation(hub, "staging", fact))
    drift = dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(["alpha", "prod"]),
        check_name="drift",
        passed=False,
        description="alpha-prod drifted: revision 5 (Upgrade complete) was not made by hubploy",
    )
    instance.report_runless_asset_event(drift)
    cursor = run_notifier(notifier, instance, cursor)
    texts = [p["body"]["text"] for p in received]
    assert ":warning: *alpha* in *prod* drifted from its commit: alpha-prod drifted: revision 5" in texts[-1]
    texts = texts[:-1]
    assert len(texts) == 4 and "rolled back: revision 3 -> 2 (now revision 4) (failed checks: hub_api)" in texts[0]
    assert "promotion of *alpha* in *staging* refused" in texts[1] and "held (window)" in texts[2]
    assert [p["body"]["text"] for p in owners_received][:3] == texts[:3], "beta has no owners' webhook"
    assert run_notifier(notifier, instance, cursor) == cursor and len(received) == 5, "each event once"


@dg.asset_check(asset=dg.AssetKey(["alpha", "prod"]), name="drift")
def alpha_prod_drift() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def run_notifier(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None) -> str:
    definitions = dg.Definitions(sensors=[sensor], asset_checks=[alpha_prod_drift])
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions)
    sensor(context)
    assert context.cursor is not None
    return context.cursor
