"""After the deploy: every release's checks run again on a schedule, so a hub that breaks later turns red.

An environment of the chain with `watch: 1h` (hubploy-environments.yaml) has each of its deployed releases
checked again once per hour: the same health checks as after a deploy, and the drift check (the live release
against its commit). One check-only run per hub and period (its run key names the period), queued like any
run of the hub. A failure is retried as every check is (its `retries`), and reported, never rolled back: what
broke a running hub is for an operator to judge.
"""

import dagster as dg

from hubploy_dagster import rollout
from hubploy_dagster.chain import Chain
from hubploy_dagster.config import parse_duration
from hubploy_dagster.keys import image_key, release_key
from hubploy_dagster.resources import TAG_PURPOSE
from sensors.git_sensor import checks_request


def build_watch_sensor(chain: Chain) -> dg.SensorDefinition:
    @dg.sensor(
        name="watch_releases",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.all(),  # no job of its own in the snapshot (see git_sensor.py)
        description="Runs every deployed release's checks again, as often as each environment's `watch` says",
    )
    def watch_releases(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        graph = context.repository_def.asset_graph
        hubs = sorted({key.path[0] for key in graph.get_all_asset_keys() if key != image_key(key.path[0])})
        requests = []
        for env, every in chain.watch.items():
            period = int(rollout.now().timestamp() // parse_duration(every).total_seconds())
            deployed = context.instance.get_latest_materialization_events([release_key(hub, env) for hub in hubs])
            for key in sorted(k for k, event in deployed.items() if event is not None):
                hub = key.path[0]
                request = checks_request(context, hub, env, f"{hub}:{env}:watch:{period}", {TAG_PURPOSE: "watch"})
                if request.asset_check_keys:
                    requests.append(request)
        if not requests:
            return dg.SkipReason(f"no deployed release in {', '.join(chain.watch)} to check")
        return dg.SensorResult(run_requests=requests)

    return watch_releases
