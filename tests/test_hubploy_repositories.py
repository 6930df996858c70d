"""hubploy repositories as they are today, through the `hubploy` command, on the local control plane.

Two shapes, both in hubploy's layout (`deployments/<hub>/`, the chart in `hub/`, sops secrets):

- **classic**: a hub with an `images` block (build, then deploy with the image tag injected), no `cluster`
  block (the current kubeconfig context);
- **hubploy 1.2**: a hub with only a `cluster` block (its sops-encrypted kubeconfig), the image name and tag
  pinned in `config/common.yaml`, and the environments develop -> staging -> prod in
  `hubploy-environments.yaml`.

Real git, sops with age, helm with the real jupyterhub chart, the Docker engine and a registry where a build
is tested; the ambient kubeconfig is pointed nowhere in the 1.2 tests, so only the hub's own cluster block
can reach the cluster.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from services.registry import push_image
from services.repos import PROJECT_ROOT, RepoBuilder, new_age_key, sops_encrypt

from hubploy_dagster.cli import main
from hubploy_dagster.helm import Helm
from hubploy_dagster.local_cluster import free_port
from hubploy_dagster.tags import tag_from_sha

pytestmark = pytest.mark.integration

BASE_IMAGE = "hubploy-dagster/base:busybox"  # made by `make setup` (scripts/make-base-image.sh)
CANARY = f"shapes-canary-{uuid.uuid4().hex}"
CHAIN = "environments:\n  - name: develop\n  - name: staging\n  - name: prod\n"
PINNED = "quay.io/example/user-image"


@dataclass
class Shape:
    """A deployment repository in hubploy's layout with one hub, and the `hubploy` command run on it."""

    builder: RepoBuilder
    hub: str
    cluster: object
    recipient: str
    workdir: Path

    @property
    def folder(self) -> str:
        return f"deployments/{self.hub}"

    def secret(self, env: str) -> dict[str, str]:
        plain = f"jupyterhub:\n  proxy:\n    secretToken: {CANARY}\n"
        return {f"{self.folder}/secrets/{env}.yaml": sops_encrypt(self.workdir, self.recipient, plain)}

    def cli(self, *args: str) -> Result:
        result = CliRunner().invoke(main, [*args, "--repo", str(self.builder.path)])
        assert CANARY not in result.output
        return result

    def deploy(self, env: str, *flags: str) -> Result:
        return self.cli("deploy", self.hub, "hub", env, *flags)

    def release(self, env: str) -> str:
        return f"{self.hub}-{env}"

    def values(self, env: str) -> dict:
        """What the release was deployed with (`helm get values`: the user-supplied values)."""
        args = ["get", "values", self.release(env), "--namespace", self.release(env), "-o", "json"]
        return json.loads(Helm(env=self.cluster.helm_env()).run(args, "helm get values", quiet=True))

    def revisions(self, env: str) -> list[tuple[int, str]]:
        status = Helm(env=self.cluster.helm_env()).status(self.release(env), self.release(env))
        if status is None:
            return []
        history = Helm(env=self.cluster.helm_env()).history(self.release(env), self.release(env))
        return [(h["revision"], h["status"]) for h in history]


@pytest.fixture
def shape(repo_builder: RepoBuilder, k8s_cluster, chart_cache, monkeypatch, tmp_path: Path) -> Shape:
    """An empty repository with the umbrella chart in `hub/` (hubploy's default), helm pointed at the cluster."""
    for name, value in k8s_cluster.helm_env().items():
        monkeypatch.setenv(name, value)
    key, recipient = new_age_key(tmp_path)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    shutil.copytree(PROJECT_ROOT / "chart", repo_builder.path / "hub", ignore=shutil.ignore_patterns("charts"))
    hub = k8s_cluster.new_namespace_name("shape")  # <hub>-<env> names namespaces: unique in the session
    return Shape(repo_builder, hub, k8s_cluster, recipient, tmp_path)


def classic(shape: Shape, image: str) -> str:
    """hubploy classic: `images` (the legacy `image_name`), an image folder, values and secrets; no cluster block."""
    return shape.builder.commit(
        "classic hub",
        {
            f"{shape.folder}/hubploy.yaml": f"images:\n  image_name: {image}\n",
            f"{shape.folder}/image/Dockerfile": f"ARG BASE_IMAGE=busybox\nFROM ${{BASE_IMAGE}}\nLABEL hub={shape.hub}\n",
            f"{shape.folder}/config/common.yaml": "jupyterhub:\n  cull:\n    enabled: false\n",
            f"{shape.folder}/config/staging.yaml": "jupyterhub:\n  singleuser:\n    memory: {limit: 1G}\n",
            **shape.secret("staging"),
            **shape.secret("prod"),
        },
    )


def hubploy_1_2(shape: Shape, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_block: str = "") -> str:
    """hubploy 1.2: only a `cluster` block, the image pinned in config/common.yaml, develop/staging/prod."""
    kubeconfig = sops_encrypt(tmp_path, shape.recipient, shape.cluster.kubeconfig.read_text())
    block = cluster_block or "cluster:\n  provider: kubeconfig\n  kubeconfig:\n    filename: kubeconfig.yaml\n"
    files = {
        "hubploy-environments.yaml": CHAIN,
        f"{shape.folder}/hubploy.yaml": block,
        f"{shape.folder}/secrets/kubeconfig.yaml": kubeconfig,
        f"{shape.folder}/config/common.yaml": textwrap.dedent(
            f"""\
            jupyterhub:
              singleuser:
                image:
                  name: {PINNED}
                  tag: "2025.10.1"
            """
        ),
    }
    for env, limit in (("develop", "512M"), ("staging", "1G"), ("prod", "2G")):
        files[f"{shape.folder}/config/{env}.yaml"] = f"jupyterhub:\n  singleuser:\n    memory: {{limit: {limit}}}\n"
        files.update(shape.secret(env))
    # Only the hub's cluster block can reach the cluster.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("HELM_KUBECONTEXT")
    return shape.builder.commit("hubploy 1.2 hub", files)


# --- classic ------------------------------------------------------------------------------------------------


def test_classic_deploy_needs_no_registry_and_check_registry_names_it(shape: Shape):
    """hubploy's deploy talks to the cluster only; --check-registry (the Dagster path's check) needs the registry."""
    unreachable = f"127.0.0.1:{free_port()}"
    sha = classic(shape, f"{unreachable}/classic/user-image")
    tag = json.loads(shape.cli("tags", "--json").stdout)[0]["tag"]
    result = shape.deploy("staging")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{shape.release('staging')}\t{shape.release('staging')}\trevision 1\tdeployed\n"
    image = shape.values("staging")["jupyterhub"]["singleuser"]["image"]
    assert image == {"name": f"{unreachable}/classic/user-image", "tag": tag}, "hubploy injects the image"

    result = shape.deploy("staging", "--check-registry")
    assert result.exit_code == 1
    assert f"registry {unreachable} is unreachable" in result.stderr, result.output
    assert shape.revisions("staging") == [(1, "deployed")], "refused before helm"
    assert tag == tag_from_sha(sha), "hubploy's tag: the image folder's last commit"


def test_classic_check_registry_refuses_a_missing_image_then_deploys_it(shape: Shape, registry):
    image = f"{registry.host}/tests/{shape.hub}"
    classic(shape, image)
    tag = json.loads(shape.cli("tags", "--json").stdout)[0]["tag"]
    result = shape.deploy("staging", "--check-registry")
    assert result.exit_code == 1 and f"{image}:{tag} not in the registry" in result.stderr, result.output
    assert shape.revisions("staging") == []
    push_image(registry, image.split("/", 1)[1], tag)
    result = shape.deploy("staging", "--check-registry")
    assert result.exit_code == 0, result.output
    assert shape.revisions("staging") == [(1, "deployed")]


def test_build_in_a_repository_without_a_chart_folder(shape: Shape, registry):
    """An image-only repository: `hubploy build --check-registry --push` needs no chart; deploy and validate name it."""
    shutil.rmtree(shape.builder.path / "hub")
    image = f"{registry.host}/tests/{shape.hub}-only"
    sha = classic(shape, image)
    build = ["build", shape.hub, "--check-registry", "--push", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    result = shape.cli(*build)
    assert result.exit_code == 0, result.output
    tag = json.loads(shape.cli("tags", "--json").stdout)[0]["tag"]
    assert result.stdout.startswith(f"{image}:{tag}\tbuilt and pushed\tsha256:"), result.output
    result = shape.cli(*build)
    assert result.exit_code == 0 and result.stdout.startswith(f"{image}:{tag}\talready in the registry")

    missing = f"error: {shape.folder}/hubploy.yaml@{sha[:7]}: chart: chart folder hub does not exist"
    result = shape.cli("validate")
    assert result.exit_code == 1 and result.stderr.splitlines() == [missing], result.output
    result = shape.deploy("staging")
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == missing, result.output
    assert shape.revisions("staging") == []


def test_classic_repository_without_a_chain_file_has_staging_and_prod(shape: Shape):
    classic(shape, f"127.0.0.1:{free_port()}/classic/user-image")
    result = shape.deploy("develop")
    assert result.exit_code == 1
    assert "environment 'develop' is not in the default chain (no hubploy-environments.yaml): staging -> prod" in (
        result.stderr
    )
    result = shape.cli("validate")
    assert result.exit_code == 0 and "(2 chart renders)" in result.stdout, result.output


# --- hubploy 1.2 --------------------------------------------------------------------------------------------


def test_hubploy_1_2_repository_deploys_to_every_environment_of_its_chain(shape: Shape, tmp_path, monkeypatch):
    hubploy_1_2(shape, tmp_path, monkeypatch)
    for env, limit in (("develop", "512M"), ("staging", "1G"), ("prod", "2G")):
        # datahub's CI command line: hubploy 1.2's global --verbose, then deploy's flags
        result = shape.cli("--verbose", "deploy", "--timeout", "30m", shape.hub, "hub", env)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"{shape.release(env)}\t{shape.release(env)}\trevision 1\tdeployed\n"
        singleuser = shape.values(env)["jupyterhub"]["singleuser"]
        assert singleuser["image"] == {"name": PINNED, "tag": "2025.10.1"}, "the pinned image, nothing injected"
        assert singleuser["memory"] == {"limit": limit}
    assert {f"{shape.hub}-{env}" for env in ("develop", "staging", "prod")} <= set(shape.cluster.namespaces())


def test_hubploy_1_2_refuses_an_image_name_without_a_tag_naming_the_file(shape: Shape, tmp_path, monkeypatch):
    hubploy_1_2(shape, tmp_path, monkeypatch)
    untagged = "jupyterhub:\n  singleuser:\n    image: {name: quay.io/example/other-image}\n"
    sha = shape.builder.commit("staging tries another image", {f"{shape.folder}/config/staging.yaml": untagged})
    problem = (
        f"error: {shape.folder}/config/staging.yaml@{sha[:7]}: jupyterhub.singleuser.image: "
        "image name 'quay.io/example/other-image' has no tag"
    )
    result = shape.deploy("staging")
    assert result.exit_code == 1 and result.stderr.startswith(problem), result.output
    assert shape.revisions("staging") == []
    result = shape.deploy("develop")  # its files pin name and tag: hubploy 1.2 checks common and the env's file
    assert result.exit_code == 0, result.output
    result = shape.cli("validate")
    assert result.exit_code == 1 and result.stderr.splitlines() == [
        problem + ": pin one in jupyterhub.singleuser.image.tag (hubploy 1.2 refuses an image without a tag)"
    ], result.output

    # A tag in the secrets does not count (hubploy 1.2 reads only config/common.yaml and config/<env>.yaml).
    tag_in_secrets = "jupyterhub:\n  singleuser:\n    image: {tag: '1'}\n"
    sha = shape.builder.commit(
        "name in common, tag in the secrets",
        {
            f"{shape.folder}/config/common.yaml": "jupyterhub:\n  singleuser:\n    image: {name: quay.io/example/x}\n",
            f"{shape.folder}/config/staging.yaml": "jupyterhub: {}\n",
            f"{shape.folder}/secrets/prod.yaml": sops_encrypt(tmp_path, shape.recipient, tag_in_secrets),
        },
    )
    result = shape.deploy("prod")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {shape.folder}/config/common.yaml@{sha[:7]}: jupyterhub.singleuser.image")
    assert shape.revisions("prod") == []


def test_hubploy_1_2_deploy_and_plan_take_only_environments_of_the_chain(shape: Shape, tmp_path, monkeypatch):
    sha = hubploy_1_2(shape, tmp_path, monkeypatch)
    refusal = f"environment 'qa' is not in hubploy-environments.yaml@{sha[:7]}: develop -> staging -> prod"
    result = shape.deploy("qa")
    assert result.exit_code == 1 and result.stderr == f"error: {refusal}\n", result.output
    assert f"{shape.hub}-qa" not in shape.cluster.namespaces()
    result = shape.cli("plan", "--env", "qa")
    assert result.exit_code == 1 and result.stderr == f"error: {refusal}\n", result.output
    monkeypatch.setenv("CI", "true")  # hubploy 1.2's global -D is its deploy's helm --debug: refused in CI
    result = shape.cli("-D", "deploy", shape.hub, "hub", "develop")
    assert result.exit_code == 1 and "refused because CI is set" in result.stderr, result.output


def test_hubploy_1_2_cli_deploys_are_recorded_per_environment(shape: Shape, tmp_path, monkeypatch):
    """`hubploy history --env` takes any environment the instance recorded (develop here, not in the default chain)."""
    hubploy_1_2(shape, tmp_path, monkeypatch)
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert shape.deploy("develop").exit_code == 0
    result = CliRunner().invoke(main, ["history", shape.hub, "--env", "develop", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [(e["env"], e["launched_by"]) for e in entries] == [("develop", "cli")], entries
    result = CliRunner().invoke(main, ["history", shape.hub, "--env", "staging"])
    assert result.exit_code == 0 and result.stdout.startswith("no deploys recorded"), result.output


def test_validate_renders_every_environment_of_the_chain(shape: Shape, tmp_path, monkeypatch):
    hubploy_1_2(shape, tmp_path, monkeypatch)
    result = shape.cli("validate")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 1 hubs valid") and "(3 chart renders)" in result.stdout
    sha = shape.builder.commit(
        "a broken develop, settings for an environment that is not in the chain",
        {
            f"{shape.folder}/config/develop.yaml": "jupyterhub:\n  singleuser:\n    bogus: 1\n",
            f"{shape.folder}/hubploy.yaml": (
                "cluster:\n  provider: kubeconfig\n  kubeconfig: {filename: kubeconfig.yaml}\n"
                "environments:\n  qa: {namespace: qa}\n"
            ),
        },
    )
    result = shape.cli("validate")
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    short = sha[:7]
    assert any(
        line.startswith(f"error: {shape.folder}/config/develop.yaml@{short}: jupyterhub.singleuser.bogus:")
        and "(the chart's values schema, develop)" in line
        for line in errors
    ), errors
    assert f"error: {shape.folder}/hubploy.yaml@{short}: environments.qa: 'qa' is not an environment of " in (
        result.stderr
    )
    assert len(errors) == 2, errors


# --- the keyless gcloud cluster login of hubploy 1.2 --------------------------------------------------------


def stand_in_gcloud(folder: Path, kubeconfig: Path) -> tuple[Path, Path]:
    """A `gcloud` that records its arguments and credential variables, and writes the cluster's kubeconfig."""
    log = folder / "gcloud-calls.jsonl"
    script = folder / "gcloud"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{shutil.which("python3")}
            import json, os, shutil, sys
            names = ("CLOUDSDK_CONFIG", "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", "KUBECONFIG")
            call = {{"args": sys.argv[1:], **{{name: os.environ.get(name) for name in names}}}}
            with open({str(log)!r}, "a") as out:
                out.write(json.dumps(call) + "\\n")
            if "get-credentials" in sys.argv:
                shutil.copyfile({str(kubeconfig)!r}, os.environ["KUBECONFIG"])
            """
        )
    )
    script.chmod(0o755)
    return script, log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_keyless_gcloud_cluster_login_uses_application_default_credentials(shape: Shape, tmp_path, monkeypatch):
    gcloud, log = stand_in_gcloud(tmp_path, shape.cluster.kubeconfig)
    monkeypatch.setenv("HUBPLOY_GCLOUD", str(gcloud))
    monkeypatch.delenv("CLOUDSDK_CONFIG", raising=False)
    monkeypatch.delenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", raising=False)
    adc = tmp_path / "wif-credentials.json"  # what CI providers' auth actions write (workload identity federation)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    keyless = (
        "cluster:\n  provider: gcloud\n  gcloud: {project: uni-hubs, cluster: hubs-cluster, zone: us-central1-b}\n"
    )
    hubploy_1_2(shape, tmp_path, monkeypatch, cluster_block=keyless)
    result = shape.deploy("staging")
    assert result.exit_code == 0, result.output
    [call] = calls(log)
    assert call["args"] == [
        "container", "clusters", "get-credentials", "hubs-cluster", "--zone=us-central1-b", "--project=uni-hubs"
    ]  # fmt: skip
    assert call["CLOUDSDK_CONFIG"] is None, "no private gcloud configuration: the machine's credentials"
    assert call["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] == str(adc)
    private = Path(call["KUBECONFIG"])
    assert private != tmp_path / "no-such-kubeconfig" and not private.exists(), "a private kubeconfig, removed"
    assert shape.revisions("staging") == [(1, "deployed")]


def test_gcloud_cluster_login_with_a_service_key_activates_it_privately(shape: Shape, tmp_path, monkeypatch):
    """hubploy classic's gcloud login, for contrast: the hub's decrypted key, in a private gcloud configuration."""
    gcloud, log = stand_in_gcloud(tmp_path, shape.cluster.kubeconfig)
    monkeypatch.setenv("HUBPLOY_GCLOUD", str(gcloud))
    keyed = "cluster:\n  provider: gcloud\n  gcloud: {project: p, cluster: c, zone: z, service_key: gke-key.json}\n"
    hubploy_1_2(shape, tmp_path, monkeypatch, cluster_block=keyed)
    key = sops_encrypt(tmp_path, shape.recipient, '{"type": "service_account"}', kind="json")
    shape.builder.commit("the key", {f"{shape.folder}/secrets/gke-key.json": key})
    result = shape.deploy("develop")
    assert result.exit_code == 0, result.output
    activate, get = calls(log)
    assert activate["args"][:3] == ["auth", "activate-service-account", activate["args"][2]]
    assert activate["args"][2].startswith("--key-file=")
    assert get["args"] == ["container", "clusters", "--zone=z", "--project=p", "get-credentials", "c"]
    assert activate["CLOUDSDK_CONFIG"] and activate["CLOUDSDK_CONFIG"] == get["CLOUDSDK_CONFIG"]
    assert not Path(activate["CLOUDSDK_CONFIG"]).exists() and not Path(get["KUBECONFIG"]).exists()
