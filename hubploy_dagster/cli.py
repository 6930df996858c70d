"""The `hubploy` command: hubploy-compatible entry points over the same code the Dagster assets run.

Every command reads the deployment repository at a commit (`--rev`) from git objects, never from the work tree,
so `hubploy tags --rev prod` answers for the prod branch whatever is checked out. The main group reads the
settings once and hands them to the commands; Dagster is imported only by the commands that use the Dagster
instance (`history`, and `deploy` when it records), so the others start without it.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from hubploy_dagster.build import BuildRequest, build_hub_images
from hubploy_dagster.chain import load_chain, repository_chain
from hubploy_dagster.changes import change_set
from hubploy_dagster.config import json_schema
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.errors import ConfigError, HubployError
from hubploy_dagster.images import BuildOptions, docker_client
from hubploy_dagster.plan import branch_head, plan_deploy
from hubploy_dagster.release import DeployOptions, deploy_hub, refuse_secret_printing
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Sops
from hubploy_dagster.session import HubSession
from hubploy_dagster.settings import Settings, SettingsError, current
from hubploy_dagster.tags import ImageTagIndex, deployment_image_tags
from hubploy_dagster.validate import validate_repository

repo_option = click.option(
    "--repo",
    default=".",
    show_default=True,
    help="Deployment repository: a local path (bare or not) or a remote URL.",
)
rev_option = click.option("--rev", default="HEAD", show_default=True, help="Commit, branch or tag to read.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Operator errors become one clear message and exit status 1, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except HubployError as exc:
            for problem in exc.problems if isinstance(exc, ConfigError) else [exc]:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", is_flag=True, help="Accepted for hubploy 1.2's command lines: progress is always logged."
)
@click.option(
    "-d", "--debug", is_flag=True, help="Accepted for hubploy 1.2's command lines: progress is always logged."
)
@click.option(
    "-D", "--helm-debug", "global_helm_debug", is_flag=True, help="hubploy 1.2's place of deploy's -D: helm --debug."
)
@click.pass_context
def main(ctx: click.Context, verbose: bool, debug: bool, global_helm_debug: bool) -> None:
    """Continuous deployment of JupyterHubs: hubploy's workflow with Dagster's lineage, checks and UI.

    hubploy 1.2's global flags are accepted where its CI puts them (`hubploy --verbose deploy ...`).
    """
    try:
        ctx.obj = current()
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


pass_settings = click.make_pass_decorator(Settings)


@main.command()
@repo_option
@rev_option
@json_option
@reports_errors
def hubs(repo: str, rev: str, as_json: bool) -> None:
    """List the hubs of the repository at a commit, and the folders that are not valid hubs."""
    deployment = load_deployment(DeploymentRepo(repo).snapshot(rev))
    if as_json:
        _emit_json(
            {
                "commit": deployment.sha,
                "hubs": [{"name": h.name, "path": h.path} for h in deployment.hubs.values()],
                "invalid": {name: [str(p) for p in problems] for name, problems in deployment.invalid.items()},
            }
        )
        return
    for hub in sorted(deployment.hubs.values(), key=lambda h: h.name):
        click.echo(f"{hub.name}\t{hub.path}")
    for problem in deployment.problems:
        click.echo(f"invalid: {problem}", err=True)


@main.command()
@repo_option
@rev_option
@json_option
@reports_errors
def tags(repo: str, rev: str, as_json: bool) -> None:
    """The image tag of every hub's images at a commit, as hubploy computes it."""
    deployment_repo = DeploymentRepo(repo)
    deployment = load_deployment(deployment_repo.snapshot(rev))
    image_tags = deployment_image_tags(ImageTagIndex(deployment_repo), deployment)
    if as_json:
        _emit_json([{"hub": t.hub, "image": t.image, "tag": t.tag} for t in image_tags])
        return
    for t in image_tags:
        click.echo(f"{t.hub}\t{t.image}:{t.tag}")


@main.command()
@click.argument("old")
@click.argument("new")
@repo_option
@json_option
@reports_errors
def changed(old: str, new: str, repo: str, as_json: bool) -> None:
    """The hubs that a move from commit OLD to commit NEW changes (and the hubs it removes)."""
    changes = change_set(DeploymentRepo(repo), old, new)
    if as_json:
        _emit_json({"changed": changes.changed, "removed": changes.removed})
        return
    if changes.force_push:
        click.echo(f"note: {old} is not an ancestor of {new}; compared their trees", err=True)
    for name in changes.changed:
        click.echo(f"changed\t{name}" + ("\t(new hub)" if name in changes.added else ""))
    for name in changes.removed:
        click.echo(f"removed\t{name}")
    for problem in changes.problems:
        click.echo(f"invalid: {problem}", err=True)


@main.command()
@click.argument("hub")
@repo_option
@rev_option
@click.option("--check-registry", is_flag=True, help="Build only when the tag is not in the registry (the default).")
@click.option("--commit-range", help="Build only when the image folder changed in this range (git diff RANGE).")
@click.option("--push", is_flag=True, help="Push what was built.")
@click.option("--no-cache", is_flag=True, help="Do not use earlier tags as build cache.")
@click.option("--image", "images", multiple=True, help="Only the image with this full name (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE build argument (repeatable).")
@click.option("--docker-host", help="Docker engine address (default: DOCKER_HOST or the local socket).")
@pass_settings
@reports_errors
def build(
    settings: Settings,
    hub: str,
    repo: str,
    rev: str,
    check_registry: bool,
    commit_range: str | None,
    push: bool,
    no_cache: bool,
    images: tuple[str, ...],
    build_args: tuple[str, ...],
    docker_host: str | None,
) -> None:
    """Build (and with --push, push) HUB's images at a commit, as `hubploy build` does."""
    if check_registry and commit_range:
        raise click.UsageError("--check-registry and --commit-range are mutually exclusive (as in hubploy)")
    deployment_repo = DeploymentRepo(repo)
    deployment = load_deployment(deployment_repo.snapshot(rev))
    options = BuildOptions(
        no_cache=no_cache,
        build_args=dict(arg.split("=", 1) for arg in build_args),
        push=push,
        check_registry=commit_range is None,
    )
    results = build_hub_images(
        deployment_repo,
        deployment,
        deployment.hub(hub),
        docker_client(docker_host or settings.docker_host),
        Sops(),
        BuildRequest(options, only_images=list(images), commit_range=commit_range),
        lambda line: click.echo(line, err=True),
    )
    for result in results:
        state = "built and pushed" if result.pushed else "built" if result.built else "already in the registry"
        click.echo(f"{result.reference}\t{state}" + (f"\t{result.digest}" if result.digest else ""))


@main.command()
@click.argument("hub")
@click.argument("chart")
@click.argument("environment")
@repo_option
@rev_option
@click.option("--namespace", help="Namespace to deploy into (default: <hub>-<environment>).")
@click.option("--set", "set_values", multiple=True, help="helm --set (repeatable).")
@click.option("--set-string", "set_string_values", multiple=True, help="helm --set-string (repeatable).")
@click.option("--version", help="helm --version of the chart.")
@click.option("--timeout", help="helm --timeout (e.g. 30m).")
@click.option("--force", is_flag=True, help="helm --force.")
@click.option("--atomic", is_flag=True, help="helm --atomic: roll back a failed upgrade.")
@click.option("--cleanup-on-fail", is_flag=True, help="helm --cleanup-on-fail.")
@click.option("--dry-run", is_flag=True, help="helm --dry-run (prints secrets: refused when CI is set).")
@click.option("-D", "--helm-debug", is_flag=True, help="helm --debug (prints secrets: refused when CI is set).")
@click.option(
    "--check-registry",
    is_flag=True,
    help="Fail before helm when an image tag of the hub is not in its registry (default: the cluster only, as hubploy).",
)
@pass_settings
@reports_errors
def deploy(settings: Settings, hub: str, chart: str, environment: str, repo: str, rev: str, **helm_flags: Any) -> None:
    """Deploy HUB's ENVIRONMENT release with the helm CHART folder, as `hubploy deploy` does.

    ENVIRONMENT is one of the repository's chain at --rev (`hubploy-environments.yaml`; without it staging and
    prod). The deploy talks to the cluster only, as hubploy's does; --check-registry first checks that the
    hub's image tags are in its registry (what the Dagster release assets always do).

    hubploy's deploy exactly: no health checks, no promotion gate. When DAGSTER_HOME is set, the deploy is also
    recorded in that Dagster instance as a materialization of the hub's release marked `launched_by: cli` and
    `deployed_by` (HUBPLOY_ACTOR, else the login name) (it
    runs here, not in a Dagster run), so `hubploy history` and the UI list it beside the sensor's deploys.
    """
    repeated = {key: list(helm_flags.pop(key)) for key in ("set_values", "set_string_values")}
    helm_flags["helm_debug"] = helm_flags["helm_debug"] or click.get_current_context().find_root().params.get(
        "global_helm_debug", False
    )
    options = DeployOptions(chart=chart.rstrip("/"), **repeated, **helm_flags)
    refuse_secret_printing(options, settings)
    deployment_repo = DeploymentRepo(repo)
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    snapshot = deployment_repo.snapshot(rev)
    load_chain(snapshot, settings.branches).require(environment)  # the environments of the repository at --rev
    deployment = load_deployment(snapshot)
    session = HubSession(deployment, deployment.hub(hub), environment, Sops(), log)
    result = deploy_hub(session, options)
    if settings.dagster_home and not options.dry_run:
        # Dagster, only when recording
        from hubploy_dagster.history import open_instance
        from hubploy_dagster.record import DeployRecord

        actor = settings.actor or getpass.getuser()
        DeployRecord(open_instance()).record_cli_deploy(
            deployment_repo, session.deployment, session.hub, result, options, actor
        )
        log(f"recorded in the Dagster instance at {settings.dagster_home} as deployed by {actor}")
    click.echo(f"{result.release}\t{result.namespace}\trevision {result.revision}\t{result.status}")


@main.command()
@click.argument("hub", required=False)
@click.option("--env", help="Only this environment (any the instance recorded, in the chain or not any more).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Newest entries to list.")
@click.option("--repo", help="Deployment repository for commit authors [default: HUBPLOY_REPO].")
@click.option("--stats", is_flag=True, help="Per hub and environment: deploys, failure rate, median times, rollbacks.")
@json_option
@pass_settings
@reports_errors
def history(
    settings: Settings, hub: str | None, env: str | None, limit: int, repo: str | None, stats: bool, as_json: bool
) -> None:
    """The deploy audit of HUB (or every hub) from the Dagster instance at DAGSTER_HOME, newest first.

    One entry per release, rollback and refused promotion: commit and its author, image tag, helm revision,
    checks, run, and how it was started (sensor, cli, ui or other).
    """
    from hubploy_dagster.history import deploy_history, history_table, open_instance  # Dagster, only here

    if stats:
        from hubploy_dagster.insights import deploy_stats, stats_table

        figures = deploy_stats(open_instance(), hub, env, limit)
        if as_json:
            _emit_json([s.as_json() for s in figures])
        else:
            for line in stats_table(figures) if figures else ["no deploys recorded"]:
                click.echo(line)
        return
    entries = deploy_history(open_instance(), hub, env, limit, repo or settings.repo)
    if as_json:
        _emit_json([entry.as_json() for entry in entries])
        return
    if not entries:
        scope = "".join(f" {part}" for part in (hub and f"of hub {hub}", env and f"in {env}") if part)
        click.echo(f"no deploys recorded{scope} in the Dagster instance at {settings.dagster_home}")
        return
    for line in history_table(entries):
        click.echo(line)


@main.command("release-hold")
@click.argument("hub")
@click.argument("environment")
@click.option("--reason", required=True, help="Why the held configuration may deploy again (recorded).")
@pass_settings
@reports_errors
def release_hold(settings: Settings, hub: str, environment: str, reason: str) -> None:
    """Let the configuration that a rollback or a canary wave holds for HUB in ENVIRONMENT deploy again."""
    from hubploy_dagster.history import open_instance  # Dagster, only here
    from hubploy_dagster.holds import release_held_configuration
    from hubploy_dagster.record import DeployRecord

    by = settings.actor or getpass.getuser()
    fact = release_held_configuration(DeployRecord(open_instance()), hub, environment, by, reason)
    click.echo(f"{hub}\t{environment}\tconfiguration {fact.fingerprint[:12]} may deploy again (released by {by})")


@main.command()
@click.argument("hub")
@repo_option
@rev_option
@click.option("--reason", required=True, help="Why it must never deploy (recorded).")
@pass_settings
@reports_errors
def reject(settings: Settings, hub: str, repo: str, rev: str, reason: str) -> None:
    """Reject HUB's configuration at --rev: the sensor and the release assets never deploy it, anywhere."""
    from hubploy_dagster.history import open_instance  # Dagster, only here
    from hubploy_dagster.holds import reject_configuration
    from hubploy_dagster.record import DeployRecord

    by = settings.actor or getpass.getuser()
    fact = reject_configuration(DeployRecord(open_instance()), DeploymentRepo(repo), rev, hub, by, reason)
    click.echo(f"{hub}\tconfiguration {fact.fingerprint[:12]} rejected everywhere (by {by})")


@main.command()
def schema() -> None:
    """Print the JSON Schema of hubploy.yaml (for editors' YAML language servers)."""
    _emit_json(json_schema())


@main.command()
@repo_option
@rev_option
@reports_errors
def validate(repo: str, rev: str) -> None:
    """Check the whole repository at a commit (config, files, secrets, chart renders); list every problem."""
    report = validate_repository(DeploymentRepo(repo), rev, Sops())
    if report.problems:
        raise ConfigError(report.problems)
    if not report.hubs:
        raise HubployError(f"no hubs found under hubs/ or deployments/ at {report.sha[:7]}")
    click.echo(f"ok: {len(report.hubs)} hubs valid at {report.sha[:7]} ({report.renders} chart renders)")


@main.command()
@repo_option
@click.option("--env", help="Environment of the repository's chain [default: its first].")
@click.option(
    "--from", "from_rev", help="Plan the hubs changed since this commit (default: every hub against its release)."
)
@click.option("--to", "to_rev", help="Commit to plan (default: the head of the environment's branch).")
@json_option
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "markdown"]),
    help="text (default), json (as --json), or markdown: what a CI job posts on a pull request.",
)
@pass_settings
@reports_errors
def plan(
    settings: Settings,
    repo: str,
    env: str | None,
    from_rev: str | None,
    to_rev: str | None,
    as_json: bool,
    output: str | None,
) -> None:
    """What deploying ENV at a commit would change: hubs, images to build, and a diff of each hub's resources.

    The environments are the repository's chain at --to (without it, the chain the code location follows:
    at the repository's HEAD); without --to, the commit is the head of the branch ENV follows.
    """
    deployment_repo = DeploymentRepo(repo)
    if to_rev:
        chain = load_chain(deployment_repo.snapshot(to_rev), settings.branches)
    else:
        chain = repository_chain(deployment_repo, settings.branches)
    env = chain.require(env) if env else chain.first
    new = deployment_repo.resolve(to_rev) if to_rev else branch_head(deployment_repo, chain.branch(env))
    result = plan_deploy(deployment_repo, env, new, from_rev, Sops(), lambda line: click.echo(line, err=True))
    if settings.dagster_home:  # the holds the deploy record puts on them: soak, waves, rollbacks, rejections
        from hubploy_dagster.history import open_instance  # Dagster, only here
        from hubploy_dagster.policy import recorded_holds
        from hubploy_dagster.record import DeployRecord

        deployment = load_deployment(deployment_repo.snapshot(result.new))
        hubs = {plan.hub: deployment.hub(plan.hub) for plan in result.hubs}
        fingerprints = {name: deployment.fingerprint(hub) for name, hub in hubs.items()}
        found = recorded_holds(DeployRecord(open_instance()), chain, env, hubs, fingerprints)
        result.holds |= {hub: hold.reason for hub, hold in found.items()}
    output = "json" if as_json else output or "text"
    if output == "json":
        _emit_json(result.to_json())
    else:
        click.echo(result.to_markdown() if output == "markdown" else result.to_text(), nl=False)


if __name__ == "__main__":
    main()
