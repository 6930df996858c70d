"""Tell people when a deploy fails: a message to a webhook in the format Slack incoming webhooks accept.

Nothing is posted without a configured webhook. The message names hub, environment, commit and failing
step and links the run; it never quotes the error, which could carry values from a failed command.
"""

import dagster as dg
import httpx

from hubploy_dagster.lineage import run_url
from hubploy_dagster.resources import TAG_ENV, TAG_GIT_SHA, TAG_HUB


def failure_message(run: dg.DagsterRun, failed_steps: list[str], webserver_url: str | None) -> dict[str, str]:
    tags = run.tags
    hub, env, sha = tags.get(TAG_HUB, "?"), tags.get(TAG_ENV, "?"), tags.get(TAG_GIT_SHA, "")
    steps = ", ".join(failed_steps) or "the run itself"
    link = run_url(webserver_url, run.run_id) or run.run_id
    text = f":x: deploy of *{hub}* to *{env}* at `{sha[:7] or '?'}` failed in {steps}: <{link}|run {run.run_id[:8]}>"
    return {"text": text}


def build_failure_sensor(webhook_url: str | None, webserver_url: str | None) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="notify_deploy_failures",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts failed deploys to the configured webhook (HUBPLOY_WEBHOOK_URL)",
    )
    def notify_deploy_failures(context: dg.RunFailureSensorContext) -> None:
        if not webhook_url:
            return
        failed = [event.step_key for event in context.get_step_failure_events() if event.step_key]
        response = httpx.post(webhook_url, json=failure_message(context.dagster_run, failed, webserver_url), timeout=10)
        response.raise_for_status()

    return notify_deploy_failures
