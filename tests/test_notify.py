"""Failed deploys reach the configured webhook (Slack's incoming-webhook format), received by a local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from sensors.notify import build_failure_sensor


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
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

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/services/T000/B000/XXXX", received
    server.shutdown()
    server.server_close()


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
