"""Tell people what happened: failed deploys, rollbacks, refused promotions, holds and drift, to webhooks.

Messages go to the global webhook (HUBPLOY_WEBHOOK_URL) and to the webhook of the hub's owners (`owners` in its
hubploy.yaml), in the format Slack incoming webhooks accept, naming the owners. Nothing is posted without a
webhook. A message names hub, environment, commit and what happened, and links the run; it never quotes an
error, which could carry values from a failed command: only the deploy record's own words (check names,
revisions, the reasons hubploy wrote).
"""

from collections.abc import Mapping

import dagster as dg
import httpx

from hubploy_dagster.config import Owners
from hubploy_dagster.lineage import run_url
from hubploy_dagster.record import Held, RefusedPromotion, Rejected, Rollback, fact_of, values_of
from hubploy_dagster.resources import TAG_ENV, TAG_GIT_SHA, TAG_HUB

PAGE = 200


def recipients(webhook_url: str | None, owners: Mapping[str, Owners], hub: str) -> list[str]:
    """The global webhook and the hub owners' one (each once)."""
    hub_webhook = owners[hub].webhook if hub in owners else None
    return list(dict.fromkeys(url for url in (webhook_url, hub_webhook) if url))


def _owners(owners: Mapping[str, Owners], hub: str) -> str:
    names = owners[hub].names if hub in owners else []
    return f" (owners: {', '.join(names)})" if names else ""


def post(urls: list[str], text: str) -> None:
    for url in urls:
        httpx.post(url, json={"text": text}, timeout=10).raise_for_status()


def failure_message(run: dg.DagsterRun, failed_steps: list[str], webserver_url: str | None) -> dict[str, str]:
    tags = run.tags
    hub, env, sha = tags.get(TAG_HUB, "?"), tags.get(TAG_ENV, "?"), tags.get(TAG_GIT_SHA, "")
    steps = ", ".join(failed_steps) or "the run itself"
    link = run_url(webserver_url, run.run_id) or run.run_id
    text = f":x: deploy of *{hub}* to *{env}* at `{sha[:7] or '?'}` failed in {steps}: <{link}|run {run.run_id[:8]}>"
    return {"text": text}


def build_failure_sensor(
    webhook_url: str | None, webserver_url: str | None, owners: Mapping[str, Owners] | None = None
) -> dg.SensorDefinition:
    owners = owners or {}

    @dg.run_failure_sensor(
        name="notify_deploy_failures",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts failed deploys to the global webhook (HUBPLOY_WEBHOOK_URL) and the hub owners' one",
    )
    def notify_deploy_failures(context: dg.RunFailureSensorContext) -> None:
        hub = context.dagster_run.tags.get(TAG_HUB, "")
        urls = recipients(webhook_url, owners, hub)
        if not urls:
            return
        failed = [event.step_key for event in context.get_step_failure_events() if event.step_key]
        text = failure_message(context.dagster_run, failed, webserver_url)["text"] + _owners(owners, hub)
        post(urls, text)

    return notify_deploy_failures


def drift_message(hub: str, env: str, evaluation: dg.AssetCheckEvaluation) -> str | None:
    """The message for a failed drift check."""
    if evaluation.passed:
        return None
    return f":warning: *{hub}* in *{env}* drifted from its commit: {evaluation.description or 'see the check'}"


def event_message(hub: str, env: str, record: dg.EventLogRecord) -> str | None:
    """The message for a deploy-record fact worth telling people about, if any."""
    where = f"*{hub}* in *{env}*"
    fact = fact_of(values_of(record))
    if isinstance(fact, Rollback):
        return f":rewind: {where} rolled back: {fact.summary()} ({fact.reason() or fact.state})"
    if isinstance(fact, RefusedPromotion):
        return f":no_entry: promotion of {where} refused: {fact.reason}"
    if isinstance(fact, Held):
        return f":hourglass: deploy of {where} at `{fact.git_sha[:7]}` held ({fact.kind}): {fact.reason}"
    if isinstance(fact, Rejected):
        return f":no_entry_sign: configuration {fact.fingerprint[:12]} of *{hub}* rejected by {fact.by}: {fact.reason}"
    return None


def build_event_notifier(
    webhook_url: str | None, owners: Mapping[str, Owners], interval_seconds: int = 30
) -> dg.SensorDefinition:
    """Posts new rollbacks, refused promotions, holds, rejections and drift as the deploy record gets them."""

    @dg.sensor(
        name="notify_deploy_events",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts rollbacks, refused promotions, holds and drift to the global and the owners' webhooks",
    )
    def notify_deploy_events(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        # Deploy-record facts are asset observations, which every event log storage can list across runs by
        # storage id. Check evaluations are not (SQLite's default storage keeps them in each run's own file):
        # the drift checks' latest executions are read by check key, with the id of their execution record.
        storage = context.instance.event_log_storage
        drift_keys = [key for key in context.repository_def.asset_graph.asset_check_keys if key.name == "drift"]
        latest_drift = storage.get_latest_asset_check_execution_by_key(drift_keys) if drift_keys else {}
        newest_drift = max((execution.id for execution in latest_drift.values()), default=0)
        observed_text, _, drift_text = (context.cursor or "").partition(":")
        if not observed_text:  # a new instance or sensor: only what happens from now on
            newest = storage.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.ASSET_OBSERVATION), limit=1)
            context.update_cursor(f"{newest[0].storage_id if newest else 0}:{newest_drift}")
            return dg.SkipReason("started: events from now on are posted")
        observed = int(observed_text)
        drift_seen = int(drift_text) if drift_text else newest_drift  # an older cursor had no drift part
        messages: list[tuple[str, str]] = []
        for record in storage.get_event_records(
            dg.EventRecordsFilter(dg.DagsterEventType.ASSET_OBSERVATION, after_cursor=observed),
            limit=PAGE,
            ascending=True,
        ):
            observed = record.storage_id
            if record.asset_key is not None and len(record.asset_key.path) == 2:
                hub, env = record.asset_key.path
                if text := event_message(hub, env, record):
                    messages.append((hub, text))
        for key, execution in sorted(latest_drift.items(), key=lambda item: item[1].id):
            event = execution.event.dagster_event if execution.event is not None else None
            evaluation = event.event_specific_data if event is not None else None
            if execution.id > drift_seen and isinstance(evaluation, dg.AssetCheckEvaluation):
                hub, env = key.asset_key.path
                if text := drift_message(hub, env, evaluation):
                    messages.append((hub, text))
        posted = 0
        for hub, text in messages:
            if urls := recipients(webhook_url, owners, hub):
                post(urls, text + _owners(owners, hub))
                posted += 1
        context.update_cursor(f"{observed}:{max(drift_seen, newest_drift)}")
        return dg.SkipReason(f"posted {posted} message(s)")

    return notify_deploy_events
