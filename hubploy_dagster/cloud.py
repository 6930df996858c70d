"""Registry credentials from hubploy's providers, scoped to a `with` block.

Every provider ends in the same place: a private `DOCKER_CONFIG` folder whose `config.json` holds the
credentials (written by us for `dockerconfig` and `aws`, by the cloud's own CLI for `gcloud` and `azure`).
The folder, and any decrypted key, disappear when the block ends, and the process environment is never
changed: the CLIs get their variables in their own environment only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubploy_dagster.config import RegistryConfig
from hubploy_dagster.deployment import Hub
from hubploy_dagster.errors import ConfigError, HubployError
from hubploy_dagster.helm import Helm
from hubploy_dagster.registry import IDENTITY_TOKEN_USERNAME, ImageName, credentials_from_docker_config
from hubploy_dagster.repo import Snapshot
from hubploy_dagster.secrets import Masker, Sops, decrypted_files, private_dir
from hubploy_dagster.tools import find_tool

Credentials = Callable[[str], tuple[str, str] | None]


class CloudAuthError(HubployError):
    """A provider's CLI refused the credentials or failed."""


@dataclass(frozen=True)
class RegistryLogin:
    docker_config: Path | None
    credentials: Credentials

    def auth_config(self, host: str) -> dict[str, str] | None:
        found = self.credentials(host)
        if found is None:
            return None
        if found[0] == IDENTITY_TOKEN_USERNAME:  # an OAuth2 refresh token: the engine wants it as such
            return {"identitytoken": found[1]}
        return {"username": found[0], "password": found[1]}


def _anonymous(host: str) -> None:
    return None


def _run(command: list[str], env: dict[str, str], masker: Masker, purpose: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = masker(result.stderr.strip() or result.stdout.strip())
        raise CloudAuthError(f"{purpose} failed ({Path(command[0]).name} exit {result.returncode}): {detail}")


@contextmanager
def _hub_secret(hub: Hub, snapshot: Snapshot, filename: str, key: str, sops: Sops, masker: Masker) -> Iterator[Path]:
    """A credentials file from the hub's secrets/ folder (hubploy's convention), decrypted while in use."""
    path = f"{hub.path}/secrets/{filename}"
    content = snapshot.read(path)
    if content is None:
        raise ConfigError.single(snapshot.describe(hub.config_path), key, f"{path} does not exist")
    with decrypted_files([(snapshot.describe(path), content)], sops, masker, hub.config.secrets.encryption) as [plain]:
        yield plain


@contextmanager
def registry_login(hub: Hub, snapshot: Snapshot, sops: Sops, masker: Masker) -> Iterator[RegistryLogin]:
    """Credentials for pushing and pulling the hub's images; anonymous when the hub declares no registry."""
    registry = hub.config.images.registry if hub.config.images else None
    if registry is None:
        yield RegistryLogin(None, _anonymous)
        return
    with private_dir("hubploy-docker-") as docker_config:
        env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
        with _provider_login(registry, hub, snapshot, sops, masker, docker_config, env):
            yield RegistryLogin(docker_config, credentials_from_docker_config(docker_config, env))


@contextmanager
def _provider_login(
    registry: RegistryConfig,
    hub: Hub,
    snapshot: Snapshot,
    sops: Sops,
    masker: Masker,
    docker_config: Path,
    env: dict[str, str],
) -> Iterator[None]:
    key = f"images.registry.{registry.provider}"
    config_json = docker_config / "config.json"
    if registry.dockerconfig is not None:
        with _hub_secret(hub, snapshot, registry.dockerconfig.filename, f"{key}.filename", sops, masker) as plain:
            shutil.copyfile(plain, config_json)
            config_json.chmod(0o600)
            auths = json.loads(config_json.read_text()).get("auths", {})
            masker.add(str(entry.get("auth", "")) for entry in auths.values() if isinstance(entry, dict))
        yield
    elif registry.gcloud is not None:
        gcloud = find_tool("gcloud", f"registry login for hub {hub.name} (provider gcloud)")
        with (
            _hub_secret(hub, snapshot, registry.gcloud.service_key, f"{key}.service_key", sops, masker) as key_file,
            private_dir("hubploy-gcloud-") as gcloud_config,
        ):
            env["CLOUDSDK_CONFIG"] = str(gcloud_config)
            _run([gcloud, "auth", "activate-service-account", f"--key-file={key_file}"], env, masker, "gcloud login")
            hosts = ",".join(sorted({ImageName.parse(image.name).host for image in hub.images()}))
            _run([gcloud, "auth", "configure-docker", hosts, "--quiet"], env, masker, "gcloud configure-docker")
            yield
    elif registry.aws is not None:
        aws = registry.aws
        find_tool("docker-credential-ecr-login", f"registry login for hub {hub.name} (provider aws)")
        config_json.write_text(
            json.dumps({"credHelpers": {f"{aws.account_id}.dkr.ecr.{aws.region}.amazonaws.com": "ecr-login"}})
        )
        env["AWS_REGION"] = aws.region
        if aws.role_arn:
            with private_dir("hubploy-aws-") as aws_dir:
                profile = aws_dir / "config"
                profile.write_text(f"[default]\nrole_arn = {aws.role_arn}\ncredential_source = Environment\n")
                env["AWS_CONFIG_FILE"] = str(profile)
                yield
        else:
            with _hub_secret(hub, snapshot, aws.service_key or "", f"{key}.service_key", sops, masker) as creds:
                env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
                yield
    elif registry.azure is not None:
        azure = registry.azure
        az = find_tool("az", f"registry login for hub {hub.name} (provider azure)")
        with _hub_secret(hub, snapshot, azure.auth_file, f"{key}.auth_file", sops, masker) as auth_file:
            principal = json.loads(auth_file.read_text())
            with private_dir("hubploy-azure-") as azure_config:
                env["AZURE_CONFIG_DIR"] = str(azure_config)
                login = [az, "login", "--service-principal", "--username", principal["appId"]]
                login += ["--password", principal["password"], "--tenant", principal["tenant"]]
                _run(login, env, masker, "az login")
                _run([az, "acr", "login", "--name", azure.registry], env, masker, "az acr login")
                yield


@dataclass(frozen=True)
class ClusterLogin:
    """Where helm and the kubernetes client find the cluster: the environment to run them with, and a context."""

    env: dict[str, str]
    kube_context: str | None

    @property
    def kubeconfig(self) -> str | None:
        return self.env.get("KUBECONFIG")

    def helm(self, masker: Masker, log: Callable[[str], None]) -> Helm:
        """helm with these credentials, every command in this login's context."""
        return Helm(env=self.env, masker=masker, log=log, kube_context=self.kube_context)


def _application_default_credentials(env: dict[str, str]) -> None:
    """gcloud (and the kubeconfig's auth plugin) with the application default credentials, as hubploy 1.2 logs in.

    GOOGLE_APPLICATION_CREDENTIALS (a key file or a workload identity federation configuration, as CI
    providers' auth actions write) becomes gcloud's credential file, unless the operator already set gcloud's
    own override; without it gcloud uses what the machine has (its active account, or the metadata server of a
    GCE or GKE machine). No key is activated and the machine's gcloud configuration is left as it is: only
    the kubeconfig is private.
    """
    adc = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc and not env.get("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"):
        env["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] = adc


@contextmanager
def cluster_login(hub: Hub, snapshot: Snapshot, namespace: str, sops: Sops, masker: Masker) -> Iterator[ClusterLogin]:
    """Credentials for the hub's cluster in a private KUBECONFIG, for the length of the block only.

    A hub without a `cluster` block deploys to the current kubeconfig context (KUBECONFIG or ~/.kube/config).
    """
    cluster = hub.config.cluster
    env = dict(os.environ)
    if cluster is None:
        yield ClusterLogin(env, None)
        return
    key = f"cluster.{cluster.provider}"
    if cluster.kubeconfig is not None:
        settings = cluster.kubeconfig
        with _hub_secret(hub, snapshot, settings.filename, f"{key}.filename", sops, masker) as kubeconfig:
            context = settings.context.format(namespace=namespace) if settings.context else None
            yield ClusterLogin({**env, "KUBECONFIG": str(kubeconfig)}, context)
        return
    with private_dir("hubploy-kube-") as folder:
        env["KUBECONFIG"] = str(folder / "kubeconfig")
        purpose = f"cluster login for hub {hub.name} (provider {cluster.provider})"
        if cluster.gcloud is not None:
            gke = cluster.gcloud
            gcloud = find_tool("gcloud", purpose)
            if gke.service_key:  # hubploy classic: the hub's key, activated in a private gcloud configuration
                env["CLOUDSDK_CONFIG"] = str(folder / "gcloud")
                with _hub_secret(hub, snapshot, gke.service_key, f"{key}.service_key", sops, masker) as key_file:
                    _run([gcloud, "auth", "activate-service-account", f"--key-file={key_file}"], env, masker, purpose)
                    credentials = [gcloud, "container", "clusters", f"--zone={gke.zone}", f"--project={gke.project}"]
                    _run([*credentials, "get-credentials", gke.cluster], env, masker, purpose)
                    yield ClusterLogin(env, None)
            else:  # hubploy 1.2: keyless, the machine's application default credentials
                _application_default_credentials(env)
                credentials = [gcloud, "container", "clusters", "get-credentials", gke.cluster]
                _run([*credentials, f"--zone={gke.zone}", f"--project={gke.project}"], env, masker, purpose)
                yield ClusterLogin(env, None)
        elif cluster.aws is not None:
            eks = cluster.aws
            aws = find_tool("aws", purpose)
            for name in [n for n in env if n.startswith("AWS_")]:  # only this hub's credentials, never ambient ones
                del env[name]
            env["AWS_REGION"] = eks.region
            with ExitStack() as stack:
                if eks.role_arn:
                    profile = folder / "aws-config"
                    profile.write_text(f"[default]\nrole_arn = {eks.role_arn}\ncredential_source = Environment\n")
                    env["AWS_CONFIG_FILE"] = str(profile)
                else:
                    creds = stack.enter_context(
                        _hub_secret(hub, snapshot, eks.service_key or "", f"{key}.service_key", sops, masker)
                    )
                    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
                update = [aws, "eks", "update-kubeconfig", "--name", eks.cluster, "--region", eks.region]
                _run([*update, "--kubeconfig", env["KUBECONFIG"]], env, masker, purpose)
                yield ClusterLogin(env, None)
        elif cluster.azure is not None:
            aks = cluster.azure
            az = find_tool("az", purpose)
            env["AZURE_CONFIG_DIR"] = str(folder / "azure")
            with _hub_secret(hub, snapshot, aks.auth_file, f"{key}.auth_file", sops, masker) as auth_file:
                principal = json.loads(auth_file.read_text())
                login = [az, "login", "--service-principal", "--username", principal["appId"]]
                _run(
                    [*login, "--password", principal["password"], "--tenant", principal["tenant"]], env, masker, purpose
                )
            get = [az, "aks", "get-credentials", "--name", aks.cluster, "--resource-group", aks.resource_group]
            _run([*get, "--file", env["KUBECONFIG"]], env, masker, purpose)
            yield ClusterLogin(env, None)
