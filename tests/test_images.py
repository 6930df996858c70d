"""The image asset and `hubploy build` against the real Docker engine and real registries."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import docker
import httpx
import pytest
from click.testing import CliRunner
from services.lab import Run
from services.repos import CHART_FILES, PROJECT_ROOT, RepoBuilder, new_age_key, sops_encrypt

from hubploy_dagster.assets import image_asset
from hubploy_dagster.chain import default_chain
from hubploy_dagster.cli import main
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.keys import image_key
from hubploy_dagster.registry import RegistryClient
from hubploy_dagster.resources import DeploymentRepoResource, DockerEngineResource, SopsResource
from hubploy_dagster.tags import tag_from_sha

pytestmark = pytest.mark.integration

BASE_IMAGE = "hubploy-dagster/base:busybox"
DOCKERFILE = "ARG BASE_IMAGE=quay.io/jupyter/base-notebook:2024-07-29\nFROM ${BASE_IMAGE}\nCOPY . /srv/image/\n"


@pytest.fixture
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.images.get(BASE_IMAGE)  # made by `make setup` (scripts/make-base-image.sh)
    yield client
    client.close()


def image_hub(builder: RepoBuilder, image: str, extra_config: str = "", dockerfile: str = DOCKERFILE) -> str:
    builder.commit(
        "hub with an image",
        {
            **CHART_FILES,
            "hubs/lab/hubploy.yaml": f"images:\n  image_name: {image}\n{extra_config}chart: chart\n",
            "hubs/lab/image/Dockerfile": dockerfile,
            "hubs/lab/image/environment.yml": "dependencies: [python=3.11]\n",
            "hubs/lab/config/common.yaml": "jupyterhub: {}\n",
        },
    )
    return builder.repo.head.commit.hexsha


def materialize_image(
    builder: RepoBuilder,
    sha: str,
    age_key: Path | None = None,
    instance: dg.DagsterInstance | None = None,
    checks_only: bool = False,
) -> Run:
    instance = instance or dg.DagsterInstance.ephemeral()
    deployment = load_deployment(builder.open().snapshot(sha))
    hub = deployment.hub("lab")
    key = image_key("lab")
    result = dg.materialize(
        [image_asset(hub, default_chain())],
        selection=dg.AssetSelection.checks_for_assets(key) if checks_only else None,
        instance=instance,
        resources={
            "deployment_repo": DeploymentRepoResource(source=str(builder.path)),
            "docker_engine": DockerEngineResource(build_args={"BASE_IMAGE": BASE_IMAGE}),
            "sops": SopsResource(age_key_file=str(age_key) if age_key else None),
        },
        tags={"git_sha": sha},
        raise_on_error=False,
    )
    return Run(result, instance)


def next_second() -> int:
    """The engine's event filter counts whole seconds: start watching at a fresh one."""
    time.sleep(1 - time.time() % 1)
    return int(time.time())


def engine_events(client: docker.DockerClient, since: float) -> list[tuple[str, str]]:
    """What the engine did since a moment: builds show as container runs and image tags, pushes as pushes."""
    until = time.time() + 1
    return [(e["Type"], e["Action"]) for e in client.events(since=int(since), until=int(until) + 1, decode=True)]


def test_build_push_then_never_again_then_rebuild_with_cache(
    repo_builder: RepoBuilder, registry, docker_client: docker.DockerClient
):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-user-image"
    first = image_hub(repo_builder, image)
    result = materialize_image(repo_builder, first)
    assert result.success
    meta = result.metadata("image")
    assert meta["built"] is True and meta["tag"] == tag_from_sha(first) and meta["git_sha"] == first
    assert meta["digest"] == RegistryClient(lambda host: None).manifest_digest(image, tag_from_sha(first))
    assert meta["cache_from"] == "none"
    check = result.checks()["image_in_registry"]
    assert check.passed

    # a commit that does not touch the image folder: the tag is unchanged and the engine does nothing
    second = repo_builder.commit("values only", {"hubs/lab/config/common.yaml": "jupyterhub: {hub: {}}\n"})
    since = next_second()
    result = materialize_image(repo_builder, second)
    assert result.success
    meta = result.metadata("image")
    assert meta["built"] is False and meta["tag"] == tag_from_sha(first) and meta["git_sha"] == second
    assert engine_events(docker_client, since) == []

    # a commit that touches the image: a new tag, built with the previous tag as cache
    third = repo_builder.commit("add a package", {"hubs/lab/image/environment.yml": "dependencies: [numpy]\n"})
    since = next_second()
    result = materialize_image(repo_builder, third)
    assert result.success
    meta = result.metadata("image")
    assert meta["built"] is True and meta["tag"] == tag_from_sha(third)
    assert meta["cache_from"] == f"{image}:{tag_from_sha(first)}"
    actions = engine_events(docker_client, since)
    assert ("image", "pull") in actions and ("image", "push") in actions
    logs = result.log_text()
    assert f"pulling {image}:{tag_from_sha(first)} to use as build cache" in logs


def test_build_context_is_the_commit_not_the_work_tree(repo_builder: RepoBuilder, registry, docker_client):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-committed"
    sha = image_hub(repo_builder, image, dockerfile=DOCKERFILE + "RUN cat /srv/image/environment.yml\n")
    (repo_builder.path / "hubs/lab/image/environment.yml").write_text("uncommitted: garbage\n")
    result = materialize_image(repo_builder, sha)
    assert result.success
    output = docker_client.containers.run(f"{image}:{tag_from_sha(sha)}", "cat /srv/image/environment.yml", remove=True)
    assert output.decode() == "dependencies: [python=3.11]\n"


def test_failing_run_step_reports_the_last_build_lines_and_pushes_nothing(repo_builder: RepoBuilder, registry):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-failing"
    sha = image_hub(repo_builder, image, dockerfile=DOCKERFILE + "RUN echo preparing-the-env && exit 3\n")
    result = materialize_image(repo_builder, sha)
    assert not result.success
    cls, message = result.error_class(), result.error()
    assert cls == "BuildError" and f"build of {image}:{tag_from_sha(sha)} failed" in message
    assert "preparing-the-env" in message and "returned a non-zero code: 3" in message
    assert RegistryClient(lambda host: None).manifest_digest(image, tag_from_sha(sha)) is None


def test_missing_dockerfile_is_named(repo_builder: RepoBuilder, registry):
    image = f"{registry.host}/tests/nodockerfile"
    image_hub(repo_builder, image)
    repo_builder.remove("hubs/lab/image/Dockerfile", "hubs/lab/image/environment.yml")
    sha = repo_builder.commit("no dockerfile", {"hubs/lab/image/README.md": "nothing to build\n"})
    result = materialize_image(repo_builder, sha)
    assert f"hubs/lab/image@{sha[:7]}: the image folder has no Dockerfile" in result.error()


def test_repo2docker_folder_without_repo2docker_installed_says_so(repo_builder: RepoBuilder, registry, monkeypatch):
    monkeypatch.setenv("HUBPLOY_REPO2DOCKER", "repo2docker-not-installed-here")
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-r2d"
    image_hub(repo_builder, image)
    repo_builder.remove("hubs/lab/image/Dockerfile")
    sha = repo_builder.commit("repo2docker style")
    result = materialize_image(repo_builder, sha)
    message = result.error()
    assert "needs the `repo2docker-not-installed-here` command, which is not installed" in message
    assert f"hubs/lab/image@{sha[:7]}" in message


def test_registry_down_names_host_and_port_and_builds_nothing(repo_builder: RepoBuilder, registry, docker_client):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-down"
    sha = image_hub(repo_builder, image)
    registry.stop()
    try:
        since = next_second()
        result = materialize_image(repo_builder, sha)
        assert engine_events(docker_client, since) == []
    finally:
        registry.start()
    assert f"registry {registry.host} is unreachable" in result.error()
    retries = [e for e in result.result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2, "a registry outage is transient: the step is retried before it fails"
    assert RegistryClient(lambda host: None).manifest_digest(image, tag_from_sha(sha)) is None
    assert materialize_image(repo_builder, sha).success, "the same run succeeds once the registry is back"


def test_registry_lost_during_the_build_leaves_nothing_pushed_and_a_rerun_succeeds(
    repo_builder: RepoBuilder, registry, docker_client
):
    """The registry answers the tag look-up, then goes down while a RUN step builds: the push fails naming
    the registry, no tag is left in it, and the same deploy run again once it is back pushes a verified image."""
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-midway"
    marker = f"sleep 5 # {uuid.uuid4().hex[:8]}"
    sha = image_hub(repo_builder, image, dockerfile=DOCKERFILE + f"RUN {marker}\n")
    stopped = threading.Event()

    def stop_registry_once_building() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for container in docker_client.containers.list():
                if marker in " ".join(container.attrs["Config"].get("Cmd") or []):
                    registry.stop()
                    stopped.set()
                    return
            time.sleep(0.2)

    stopper = threading.Thread(target=stop_registry_once_building, daemon=True)
    stopper.start()
    try:
        result = materialize_image(repo_builder, sha)
    finally:
        stopper.join(timeout=130)
        registry.start()
    assert stopped.is_set(), "the build never reached its RUN step"
    assert not result.success
    assert registry.host in result.error(), result.error()
    assert RegistryClient(lambda host: None).manifest_digest(image, tag_from_sha(sha)) is None  # nothing half-pushed
    rerun = materialize_image(repo_builder, sha)
    assert rerun.success, rerun.error()
    recorded = rerun.metadata("image")["images"][0]
    assert RegistryClient(lambda host: None).manifest_digest(image, tag_from_sha(sha)) == recorded["digest"]


def docker_config_hub(builder: RepoBuilder, tmp_path: Path, image: str, host: str, user: str, password: str) -> Path:
    """A hub whose registry is `dockerconfig`: a sops-encrypted docker config.json in its secrets/."""
    key, recipient = new_age_key(tmp_path)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    encrypted = sops_encrypt(tmp_path, recipient, json.dumps({"auths": {host: {"auth": auth}}}), kind="json")
    registry_config = "  registry:\n    provider: dockerconfig\n    dockerconfig: {filename: docker-config.json}\n"
    image_hub(builder, image, extra_config=registry_config)
    builder.commit("registry credentials", {"hubs/lab/secrets/docker-config.json": encrypted})
    return key


def test_htpasswd_registry_with_dockerconfig_and_no_credential_leak(
    repo_builder: RepoBuilder, auth_registry, tmp_path: Path, capfd
):
    image = f"{auth_registry.host}/tests/{uuid.uuid4().hex[:8]}-private"
    key = docker_config_hub(
        repo_builder, tmp_path, image, auth_registry.host, auth_registry.username, auth_registry.password
    )
    sha = repo_builder.repo.head.commit.hexsha
    result = materialize_image(repo_builder, sha, age_key=key)
    assert result.success, result.error()
    assert result.metadata("image")["built"] is True
    assert result.checks()["image_in_registry"].passed
    captured = capfd.readouterr()
    recorded = result.recorded() + captured.out + captured.err
    assert "pushed" in recorded, "the canary search must see the run's logs"
    secret_auth = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    assert auth_registry.password not in recorded and secret_auth not in recorded


def test_wrong_registry_password_fails_clearly_and_pushes_nothing(repo_builder: RepoBuilder, auth_registry, tmp_path):
    image = f"{auth_registry.host}/tests/{uuid.uuid4().hex[:8]}-wrongpw"
    key = docker_config_hub(
        repo_builder, tmp_path, image, auth_registry.host, auth_registry.username, "wrong-password-x"
    )
    result = materialize_image(repo_builder, repo_builder.repo.head.commit.hexsha, age_key=key)
    assert not result.success
    message = result.error()
    assert auth_registry.host in message and "authentication" in message
    assert not [e for e in result.result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"], (
        "no retry of bad credentials"
    )
    assert "wrong-password-x" not in result.recorded()


def test_check_fails_when_the_tag_disappears_from_the_registry(repo_builder: RepoBuilder, registry):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-deleted"
    sha = image_hub(repo_builder, image)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_image(repo_builder, sha, instance=instance)
    digest = result.metadata("image")["digest"]
    assert (
        materialize_image(repo_builder, sha, instance=instance, checks_only=True).checks()["image_in_registry"].passed
    )
    repository = image.split("/", 1)[1]
    httpx.delete(f"http://{registry.host}/v2/{repository}/manifests/{digest}").raise_for_status()
    evaluation = materialize_image(repo_builder, sha, instance=instance, checks_only=True).checks()["image_in_registry"]
    assert not evaluation.passed and f"{image}:{tag_from_sha(sha)}" in (evaluation.description or "")


def test_cli_build_push_and_commit_range(repo_builder: RepoBuilder, registry):
    image = f"{registry.host}/tests/{uuid.uuid4().hex[:8]}-cli"
    first = image_hub(repo_builder, image)
    runner = CliRunner()
    args = ["build", "lab", "--repo", str(repo_builder.path), "--push", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{image}:{tag_from_sha(first)}\tbuilt and pushed\tsha256:")
    result = runner.invoke(main, [*args, "--check-registry"])
    assert result.stdout.startswith(f"{image}:{tag_from_sha(first)}\talready in the registry")
    second = repo_builder.commit("values", {"hubs/lab/config/common.yaml": "jupyterhub: {a: 1}\n"})
    result = runner.invoke(main, [*args, "--commit-range", f"{first}...{second}"])
    assert result.exit_code == 0 and result.stdout == "" and "did not change in" in result.stderr
    result = runner.invoke(main, [*args, "--commit-range", "a...b", "--check-registry"])
    assert result.exit_code == 2 and "mutually exclusive" in result.output
    result = runner.invoke(main, [*args, "--image", "other/name"])
    assert result.exit_code == 1 and "has no image matching other/name" in result.stderr


@pytest.mark.parametrize(
    ("provider", "block", "command"),
    [
        ("gcloud", "{project: p, service_key: key.json}", "gcloud"),
        ("aws", "{account_id: '1', region: r, service_key: aws.cfg}", "docker-credential-ecr-login"),
        ("azure", "{resource_group: rg, registry: acr, auth_file: azure.json}", "az"),
    ],
)
def test_cloud_provider_without_its_cli_names_the_command(
    repo_builder: RepoBuilder, registry, provider: str, block: str, command: str, monkeypatch
):
    monkeypatch.setenv(f"HUBPLOY_{command.upper().replace('-', '_')}", f"{command}-missing")
    image = f"{registry.host}/tests/cloud-{provider}"
    sha = image_hub(
        repo_builder, image, extra_config=f"  registry:\n    provider: {provider}\n    {provider}: {block}\n"
    )
    assert f"needs the `{command}-missing` command" in materialize_image(repo_builder, sha).error()


def test_example_hub_images_build_from_the_local_base(docker_client: docker.DockerClient):
    """The bundled Dockerfiles build here from the locally made base image (upstream is unreachable)."""
    for hub in ("datahub", "research"):
        folder = PROJECT_ROOT / "hubs" / hub / "image"
        assert "ARG BASE_IMAGE=" in (folder / "Dockerfile").read_text()
        tag = f"example-{hub}:test-{uuid.uuid4().hex[:6]}"
        docker_client.images.build(path=str(folder), buildargs={"BASE_IMAGE": BASE_IMAGE}, tag=tag, rm=True)
        try:
            info = docker_client.containers.run(tag, f"cat /srv/{hub}/build-info.txt", remove=True).decode()
        finally:
            docker_client.images.remove(tag)
        assert f"hub={hub}\nbase_image={BASE_IMAGE}\n" in info
