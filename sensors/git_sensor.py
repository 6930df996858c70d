"""The git sensor: a push to an environment's branch deploys exactly the hubs it changed, at that commit, once.

The environments are the repository's chain (`staging -> prod` by default). Past the first, an environment
is requested for a hub only once the same configuration has passed its checks in the environment before;
until then that branch's move is planned again at every tick.

Thin by design: `hubploy_dagster.sensing` decides what to deploy; this module turns the decision into run
requests (one per hub and environment, in the chain's order) and keeps the cursor (the last head seen per
branch).
A run key of hub, environment and sha makes each deploy happen at most once, even if the cursor is lost.
"""

import json

import dagster as dg

from hubploy_dagster import settings
from hubploy_dagster.chain import Chain
from hubploy_dagster.errors import HubployError
from hubploy_dagster.keys import image_key, release_key
from hubploy_dagster.policy import awaiting_promotion, held, record_holds, soaking, wave_holds, window_holds
from hubploy_dagster.record import DeployRecord, Held, observation
from hubploy_dagster.repo import DeploymentRepo, remote_heads
from hubploy_dagster.resources import TAG_BRANCH, TAG_CLUSTER, TAG_ENV, TAG_GIT_SHA, TAG_HUB
from hubploy_dagster.sensing import branch_move, reload_code_location

LOCATION_NAME = "hubploy"


def run_key(hub: str, env: str, sha: str) -> str:
    return f"{hub}:{env}:{sha}"


def deploy_request(hub: str, env: str, branch: str, sha: str, with_image: bool, cluster: str) -> dg.RunRequest:
    """The first environment builds the hub's image (when it has one) and deploys; later ones only deploy."""
    keys = [image_key(hub), release_key(hub, env)] if with_image else [release_key(hub, env)]
    return dg.RunRequest(
        run_key=run_key(hub, env, sha),
        asset_selection=keys,
        tags={TAG_HUB: hub, TAG_ENV: env, TAG_GIT_SHA: sha, TAG_BRANCH: branch, TAG_CLUSTER: cluster},
    )


def build_git_sensor(source: str, chain: Chain, interval_seconds: int = 30) -> dg.SensorDefinition:
    """Watches the branch of each environment of `chain`."""
    branches = chain.branches

    @dg.sensor(
        name="git_branches",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # Runs of the code location's own asset job, each with its hub's assets: a `target` would add a job
        # spanning every hub's assets to the snapshot every client fetches (2.6 MB of 10.8 at 300 hubs).
        asset_selection=dg.AssetSelection.all(),
        description=f"Deploys the hubs each push to {', '.join(branches.values())} of {source} changes",
    )
    def git_branches(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        try:
            heads = remote_heads(source, list(branches.values()))
        except HubployError as exc:  # the remote is down: say so, keep the cursor, try again next tick
            return dg.SkipReason(f"cannot read branch heads: {exc}")
        moved = {
            env: branch for env, branch in branches.items() if heads.get(branch) and heads[branch] != cursor.get(branch)
        }
        if not moved:
            return dg.SkipReason(f"no new commit on {', '.join(branches.values())}")
        repo = DeploymentRepo(source)
        repo.fetch()
        keys = context.repository_def.asset_graph.get_all_asset_keys()
        known = {key.path[0] for key in keys}
        imaged = {key.path[0] for key in keys if key == image_key(key.path[0])}
        requests: list[dg.RunRequest] = []
        record = DeployRecord(context.instance)
        for env in chain.names:  # in promotion order
            if env not in moved:
                continue
            branch, new = moved[env], heads[moved[env]]

            deployed = record.deployed_fingerprints(sorted(known), env)
            move = branch_move(repo, env, branch, cursor.get(branch), new, deployed.get, known)
            for problem in move.problems:
                context.log.error(f"{branch}@{new[:7]}: {problem}")
            for hub in move.removed:
                context.log.warning(
                    f"hub {hub} was removed from {branch} at {new[:7]}: its {env} release is left as it is"
                )
            if move.up_to_date:
                context.log.info(f"{branch}@{new[:7]}: already deployed as committed: {', '.join(move.up_to_date)}")
            if move.unknown:
                ask_for_reload(context, move.unknown, branch)
                continue  # the cursor stays: this move is planned again once the new hubs have assets
            before = chain.before(env)
            waiting = awaiting_promotion(record, before, move.deploy, move.fingerprints)
            candidates = {hub: move.hubs[hub] for hub in move.deploy if hub not in waiting}
            soaks = soaking(record, chain, env, candidates, move.fingerprints)
            changed = {hub: move.hubs[hub] for hub in [*move.deploy, *move.up_to_date]}
            holds = (
                wave_holds(record, chain, env, list(candidates), changed, move.fingerprints)
                | window_holds(chain, env, candidates)
                | {hub: soak.hold for hub, soak in soaks.items()}
                | record_holds(record, env, {hub: move.fingerprints[hub] for hub in candidates})
            )
            for hub, hold in holds.items():
                note_hold(context, record, f"{branch}@{new[:7]}", hub, env, held(hold, new, move.fingerprints[hub]))
            requests += [
                recheck_request(context, hub, before, new, soak.recheck)
                for hub, soak in soaks.items()
                if before is not None and soak.recheck is not None
            ]
            requests += [
                deploy_request(hub, env, branch, new, before is None and hub in imaged, move.hubs[hub].cluster)
                for hub in move.deploy
                if hub not in waiting and hub not in holds
            ]
            if waiting:
                context.log.info(
                    f"{branch}@{new[:7]}: waiting for {before} checks of {', '.join(waiting)} to promote them"
                )
            if waiting or holds:  # the cursor stays: planned again next tick; requests made repeat no run (run keys)
                continue
            cursor[branch] = new
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return git_branches


def note_hold(
    context: dg.SensorEvaluationContext, record: DeployRecord, where: str, hub: str, env: str, fact: Held
) -> None:
    """Say why a deploy waits, and record it on the release once (not at every tick)."""
    context.log.info(f"{where}: {hub} held: {fact.reason}")
    if record.latest_fact(hub, env) != fact:
        context.instance.report_runless_asset_event(observation(hub, env, fact))


def recheck_request(context: dg.SensorEvaluationContext, hub: str, env: str, sha: str, since: int) -> dg.RunRequest:
    """The checks of `hub` in `env` once more, after its configuration soaked there (once per soak: `since`)."""
    return checks_request(context, hub, env, f"{hub}:{env}:soaked:{since}", {TAG_GIT_SHA: sha})


def checks_request(
    context: dg.SensorEvaluationContext, hub: str, env: str, run_key: str, tags: dict[str, str]
) -> dg.RunRequest:
    """A run of the release's checks alone (no deploy), tagged with its hub and environment besides `tags`."""
    key = release_key(hub, env)
    checks = [check for check in context.repository_def.asset_graph.asset_check_keys if check.asset_key == key]
    return dg.RunRequest(
        run_key=run_key, asset_selection=[], asset_check_keys=checks, tags={TAG_HUB: hub, TAG_ENV: env, **tags}
    )


def ask_for_reload(context: dg.SensorEvaluationContext, hubs: list[str], branch: str) -> None:
    webserver = settings.current().webserver_url
    names = ", ".join(hubs)
    if not webserver:
        context.log.warning(
            f"new hubs on {branch} ({names}) need a reload of the code location; set HUBPLOY_WEBSERVER_URL"
        )
        return
    reload_code_location(webserver, LOCATION_NAME)
    context.log.info(f"new hubs on {branch} ({names}): asked {webserver} to reload the code location")
