"""`hubploy deploy <hub> <chart> <env>` at one commit: the code the release assets and the CLI both run.

Bad input fails before the cluster is touched: with `check_registry` (the Dagster release assets always, the CLI
on request) the images must be in the registry (a deploy never builds: prod only runs what the first environment
built); chart and values are read at the pinned commit, secrets decrypted into a private folder, `helm template`
checks the values against the chart's schema, and only then are the namespace and release changed. Without it a
deploy talks to the cluster only, as hubploy's does (CI runners with cluster credentials but no registry access).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from hubploy_dagster.cloud import ClusterLogin
from hubploy_dagster.config import DEFAULT_HELM_SUBSTITUTION_PATH, parse_yaml
from hubploy_dagster.deployment import Deployment, Hub
from hubploy_dagster.errors import ConfigError, ConfigProblem, HubployError
from hubploy_dagster.helm import Helm, HelmError, ImageValue, UpgradeRequest, prepare_dependencies
from hubploy_dagster.kube import ensure_namespace
from hubploy_dagster.registry import RegistryClient
from hubploy_dagster.repo import extract_tar
from hubploy_dagster.secrets import decrypted_files, private_dir, refuse_git_crypt
from hubploy_dagster.session import HubSession
from hubploy_dagster.settings import Settings, current
from hubploy_dagster.tags import hub_image_tags


class ImageMissingError(HubployError):
    """A release needs an image tag that is not in the registry: deploys never build."""


class UpgradeFailedError(HelmError):
    """`helm upgrade` itself failed: unlike a values or template error, the cluster may hold a failed revision."""


@dataclass(frozen=True)
class DeployOptions:
    """hubploy's `deploy` flags; None or False leave the hub's own `helm` settings in force."""

    chart: str | None = None
    namespace: str | None = None
    set_values: list[str] = field(default_factory=list)
    set_string_values: list[str] = field(default_factory=list)
    version: str | None = None
    timeout: str | None = None
    force: bool = False
    atomic: bool = False
    cleanup_on_fail: bool = False
    dry_run: bool = False
    helm_debug: bool = False
    check_registry: bool = False  # fail before helm when an image tag is not in the registry (the Dagster path)


@dataclass(frozen=True)
class ReleaseResult:
    hub: str
    env: str
    git_sha: str
    release: str
    namespace: str
    revision: int | None
    status: str
    chart: str
    images: list[str]
    values_digest: str
    seconds: float
    url: str | None
    dependencies: str

    def metadata(self) -> dict[str, Any]:
        return {
            "git_sha": self.git_sha,
            "release": self.release,
            "namespace": self.namespace,
            "helm_revision": self.revision,
            "helm_status": self.status,
            "chart": self.chart,
            "image": ", ".join(self.images),
            "values_digest": self.values_digest,
            "duration_seconds": self.seconds,
        }


def refuse_secret_printing(options: DeployOptions, settings: Settings | None = None) -> None:
    """hubploy's guard: --dry-run and helm --debug print decrypted values; never in CI, and locally on request only."""
    if not (options.dry_run or options.helm_debug):
        return
    settings = settings or current()
    if settings.ci:
        raise HubployError("--dry-run and --helm-debug print secret values in plain text: refused because CI is set")
    if not settings.local_debug:
        raise HubployError(
            "--dry-run and --helm-debug print secret values in plain text: set HUBPLOY_LOCAL_DEBUG=1 to allow it here"
        )


def pinned_image(values: Any) -> dict[str, Any] | None:
    """What one values file sets at `jupyterhub.singleuser.image` (hubploy 1.2's image reference), if anything."""
    for part in DEFAULT_HELM_SUBSTITUTION_PATH.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values if isinstance(values, dict) else None


def _pinned_images(deployment: Deployment, hub: Hub, env: str) -> list[tuple[str, dict[str, Any]]]:
    """(file, image) of config/common.yaml and config/<env>.yaml (never secrets); unparsable files skipped."""
    found = []
    snapshot = deployment.snapshot
    for values_file in deployment.values_files(hub, env):
        if values_file.secret:
            continue
        label = snapshot.describe(values_file.path)
        try:
            image = pinned_image(parse_yaml(snapshot.read(values_file.path) or b"", label))
        except ConfigError:
            continue  # the values checks (helm, validate) name it
        if image is not None:
            found.append((label, image))
    return found


def pinned_image_problems(deployment: Deployment, hub: Hub, env: str) -> list[ConfigProblem]:
    """hubploy 1.2's image sanity: an image name without a tag in config/common.yaml or config/<env>.yaml.

    Each file is checked on its own (a tag in another file does not count), secrets not at all, as hubploy 1.2
    does; only for a hub without an `images` block (there the deploy sets each image's tag).
    """
    if hub.images():
        return []
    return [
        ConfigProblem(
            label,
            DEFAULT_HELM_SUBSTITUTION_PATH,
            f"image name {str(image['name'])!r} has no tag: pin one in {DEFAULT_HELM_SUBSTITUTION_PATH}.tag "
            "(hubploy 1.2 refuses an image without a tag)",
        )
        for label, image in _pinned_images(deployment, hub, env)
        if image.get("name") and image.get("tag") in (None, "")
    ]


def pinned_reference(deployment: Deployment, hub: Hub, env: str) -> str | None:
    """The `name:tag` the values of a hub without an `images` block deploy (a later file wins), if they pin one."""
    merged: dict[str, Any] = {}
    for _, image in _pinned_images(deployment, hub, env):
        merged.update({k: v for k, v in image.items() if k in ("name", "tag") and v not in (None, "")})
    return f"{merged['name']}:{merged['tag']}" if {"name", "tag"} <= merged.keys() else None


def refuse_untagged_images(session: HubSession) -> None:
    """A hub whose values pin an image name without a tag is not deployed (hubploy 1.2); no image at all warns."""
    deployment, hub, env = session.deployment, session.hub, session.env
    if hub.images():
        return
    problems = pinned_image_problems(deployment, hub, env)
    if problems:
        raise ConfigError(problems)
    if not any(image.get("name") for _, image in _pinned_images(deployment, hub, env)):
        session.log(
            f"warning: {hub.name} has no `images` block and no {DEFAULT_HELM_SUBSTITUTION_PATH}.name in "
            f"config/common.yaml or config/{env}.yaml: the chart's default image is deployed"
        )


def hub_images(session: HubSession) -> list[ImageValue]:
    tags = hub_image_tags(session.repo, session.deployment, session.hub)
    return [ImageValue(image.helm_substitution_path, image.name, tag) for image, _, tag in tags]


def missing_images(session: HubSession, images: list[ImageValue]) -> list[str]:
    """The images whose tag is not in the registry, asked with the hub's registry login."""
    with session.registry() as login:
        registry = RegistryClient(login.credentials)
        return [f"{i.name}:{i.tag}" for i in images if not registry.exists(i.name, i.tag)]


def require_chart(deployment: Deployment, hub: Hub, chart_path: str | None = None) -> None:
    """The chart folder exists at the commit; checked where a chart is used (a build needs none).

    The hub's own `chart` key is named as the problem's file and key; a chart given on the command line
    (hubploy's CHART argument, when it is not the hub's) is named as such.
    """
    chart_path = chart_path or hub.config.chart
    if deployment.snapshot.is_dir(chart_path):
        return
    if chart_path == hub.config.chart:
        file = deployment.snapshot.describe(hub.config_path)
        raise ConfigError.single(file, "chart", f"chart folder {chart_path} does not exist")
    raise HubployError(f"chart folder {chart_path} (the CHART argument) does not exist at {deployment.sha[:7]}")


@dataclass(frozen=True)
class PreparedRelease:
    """Everything a helm command for one hub needs, valid only inside `prepared_release`'s block."""

    request: UpgradeRequest
    helm: Helm
    login: ClusterLogin
    chart_path: str
    dependencies: str
    images: list[ImageValue]


@contextmanager
def prepared_release(
    session: HubSession, options: DeployOptions, images: list[ImageValue], with_cluster: bool = True
) -> Iterator[PreparedRelease]:
    """The chart and values as committed, secrets decrypted, cluster credentials active: all gone afterwards."""
    deployment, hub, env, masker = session.deployment, session.hub, session.env, session.masker
    snapshot = deployment.snapshot
    namespace = options.namespace or hub.namespace(env)
    settings = hub.config.helm
    values_files = deployment.values_files(hub, env)
    chart_path = options.chart or hub.config.chart
    require_chart(deployment, hub, chart_path)
    plain = [(snapshot.describe(f.path), snapshot.read(f.path) or b"") for f in values_files if not f.secret]
    secret = [(snapshot.describe(f.path), snapshot.read(f.path) or b"") for f in values_files if f.secret]
    refuse_git_crypt(plain)
    with ExitStack() as stack:
        workdir = stack.enter_context(private_dir("hubploy-deploy-"))
        chart = workdir / "chart"
        extract_tar(session.repo.archive(deployment.sha, chart_path), chart)
        secret_paths = stack.enter_context(decrypted_files(secret, session.sops, masker, hub.config.secrets.encryption))
        if with_cluster:
            cluster = stack.enter_context(session.cluster(namespace))
            login, helm = cluster.login, cluster.helm
        else:
            login = ClusterLogin(dict(os.environ), None)
            helm = login.helm(masker, session.log)
        plain_paths = []
        for index, (_, content) in enumerate(plain):
            path = workdir / f"values-{index}.yaml"
            path.write_bytes(content)
            plain_paths.append(path)
        request = UpgradeRequest(
            release=hub.release_name(env),
            namespace=namespace,
            chart=chart,
            values_files=plain_paths + secret_paths,
            set_values=options.set_values,
            set_string_values=options.set_string_values,
            images=images,
            kube_context=login.kube_context,
            version=options.version,
            timeout=options.timeout or settings.timeout,
            force=options.force or settings.force,
            atomic=options.atomic or settings.atomic,
            cleanup_on_fail=options.cleanup_on_fail or settings.cleanup_on_fail,
            debug=options.helm_debug,
            dry_run=options.dry_run,
            extra_args=settings.extra_args,
        )
        dependencies = prepare_dependencies(chart, helm)
        yield PreparedRelease(request, helm, login, chart_path, dependencies, images)


def render_hub(session: HubSession) -> str:
    """`helm template` of the hub's release at this commit: checks the values against the chart's schema.

    The rendered manifests contain secret values: callers mask them before showing anything.
    """
    images = hub_images(session)
    with prepared_release(session, DeployOptions(), images, with_cluster=False) as prepared:
        purpose = (
            f"helm template of {session.hub.name} ({session.env}) at {session.sha[:7]} with chart {prepared.chart_path}"
        )
        return prepared.helm.run(prepared.request.template_args(), purpose, quiet=True)


def deploy_hub(session: HubSession, options: DeployOptions) -> ReleaseResult:
    refuse_secret_printing(options)
    refuse_untagged_images(session)
    hub, env, sha, log = session.hub, session.env, session.sha, session.log
    started = time.monotonic()
    images = hub_images(session)
    if options.check_registry and (missing := missing_images(session, images)):
        raise ImageMissingError(
            f"{', '.join(missing)} not in the registry: the {env} release of {hub.name} at {sha[:7]} needs it, and "
            "deploys never build (materialize the hub's image first; prod only runs what staging built)"
        )
    with prepared_release(session, options, images) as prepared:
        request, helm, login = prepared.request, prepared.helm, prepared.login
        log(f"checking the values of {request.release} against chart {prepared.chart_path} (helm template)")
        helm.run(request.template_args(), f"helm template of {hub.name} ({env}) at {sha[:7]}", quiet=True)
        if not options.dry_run:
            ensure_namespace(login, request.namespace)
            recover_interrupted_release(helm, request.release, request.namespace, log)
        log(f"helm upgrade --install {request.release} in namespace {request.namespace} at {sha[:7]}")
        try:
            helm.run(request.upgrade_args(), f"helm upgrade of {request.release} in {request.namespace}")
        except HelmError as exc:
            raise UpgradeFailedError(str(exc)) from None
        latest = {} if options.dry_run else helm.history(request.release, request.namespace)[-1]
        digest = request.values_digest()
    return ReleaseResult(
        hub=hub.name,
        env=env,
        git_sha=sha,
        release=request.release,
        namespace=request.namespace,
        revision=latest.get("revision"),
        status=latest.get("status", "dry-run" if options.dry_run else "unknown"),
        chart=latest.get("chart", ""),
        images=[f"{i.name}:{i.tag}" for i in images]
        or [p for p in [pinned_reference(session.deployment, hub, env)] if p],
        values_digest=digest,
        seconds=round(time.monotonic() - started, 3),
        url=hub.url(env),
        dependencies=prepared.dependencies,
    )


def recover_interrupted_release(helm: Helm, release: str, namespace: str, log: Callable[[str], None]) -> None:
    """Undo what a helm killed mid-operation left: a release `pending-*`, which every later upgrade refuses.

    Runs of one hub never overlap (dagster.yaml), so a pending release when a deploy starts is an interrupted
    one, not one in progress. As operators do by hand: roll back to the last revision that was deployed, or,
    when the interrupted operation was the first install, uninstall what it left.
    """
    status = helm.status(release, namespace)
    state = str((status or {}).get("info", {}).get("status", ""))
    if not state.startswith("pending-"):
        return
    history = helm.history(release, namespace)
    good = [h for h in history[:-1] if h["status"] in ("deployed", "superseded")]
    if good:
        target = int(good[-1]["revision"])
        log(f"{release} was left {state} by an interrupted helm: rolling back to revision {target} first")
        helm.run(["rollback", release, str(target), "--namespace", namespace], f"helm rollback of {release}")
    else:
        log(f"{release} was left {state} by an interrupted first install: uninstalling it first")
        helm.run(["uninstall", release, "--namespace", namespace, "--wait"], f"helm uninstall of {release}")
