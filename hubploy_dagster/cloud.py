"""Registry and cluster credentials from hubploy's providers, scoped to a `with` block.

A registry login ends in a private `DOCKER_CONFIG` folder whose `config.json` holds the credentials (written by
us for `dockerconfig` and `aws`, by the cloud's own CLI for `gcloud` and `azure`); a cluster login in a private
KUBECONFIG. These folders, and any decrypted key, disappear when the block ends, and the process environment is
never changed: the CLIs get their variables in their own environment only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from hubploy_dagster.config import AwsCredentials
from hubploy_dagster.deployment import Hub
from hubploy_dagster.errors import ConfigError, HubployError
from hubploy_dagster.helm import Helm
from hubploy_dagster.registry import IDENTITY_TOKEN_USERNAME, Credentials, ImageName, credentials_from_docker_config
from hubploy_dagster.repo import Snapshot
from hubploy_dagster.secrets import Masker, Sops, decrypted_files, private_dir
from hubploy_dagster.tools import find_tool

Secret = Callable[[str, str], AbstractContextManager[Path]]  # (file in secrets/, config key) -> the decrypted file


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


def _aws_credentials(aws: AwsCredentials, env: dict[str, str], stack: ExitStack, secret: Secret, key: str) -> None:
    """AWS credentials in `env` until `stack` closes: a role assumed with the environment's, or the hub's key."""
    env["AWS_REGION"] = aws.region
    if aws.role_arn:
        profile = stack.enter_context(private_dir("hubploy-aws-")) / "config"
        profile.write_text(f"[default]\nrole_arn = {aws.role_arn}\ncredential_source = Environment\n")
        env["AWS_CONFIG_FILE"] = str(profile)
    else:
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(stack.enter_context(secret(aws.service_key or "", key)))


@contextmanager
def registry_login(hub: Hub, snapshot: Snapshot, sops: Sops, masker: Masker) -> Iterator[RegistryLogin]:
    """Credentials for pushing and pulling the hub's images; anonymous when the hub declares no registry."""
    registry = hub.config.images.registry if hub.config.images else None
    if registry is None:
        yield RegistryLogin(None, _anonymous)
        return
    secret = partial(_hub_secret, hub, snapshot, sops=sops, masker=masker)
    key = f"images.registry.{registry.provider}"
    with private_dir("hubploy-docker-") as docker_config, ExitStack() as stack:
        env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
        config_json = docker_config / "config.json"
        if registry.dockerconfig is not None:
            with secret(registry.dockerconfig.filename, f"{key}.filename") as plain:
                shutil.copyfile(plain, config_json)
                config_json.chmod(0o600)
                auths = json.loads(config_json.read_text()).get("auths", {})
                masker.add(str(entry.get("auth", "")) for entry in auths.values() if isinstance(entry, dict))
        elif registry.gcloud is not None:
            gcloud = find_tool("gcloud", f"registry login for hub {hub.name} (provider gcloud)")
            key_file = stack.enter_context(secret(registry.gcloud.service_key, f"{key}.service_key"))
            env["CLOUDSDK_CONFIG"] = str(stack.enter_context(private_dir("hubploy-gcloud-")))
            _run([gcloud, "auth", "activate-service-account", f"--key-file={key_file}"], env, masker, "gcloud login")
            hosts = ",".join(sorted({ImageName.parse(image.name).host for image in hub.images()}))
            _run([gcloud, "auth", "configure-docker", hosts, "--quiet"], env, masker, "gcloud configure-docker")
        elif registry.aws is not None:
            aws = registry.aws
            find_tool("docker-credential-ecr-login", f"registry login for hub {hub.name} (provider aws)")
            helper = {f"{aws.account_id}.dkr.ecr.{aws.region}.amazonaws.com": "ecr-login"}
            config_json.write_text(json.dumps({"credHelpers": helper}))
            _aws_credentials(aws, env, stack, secret, f"{key}.service_key")
        elif registry.azure is not None:
            az = find_tool("az", f"registry login for hub {hub.name} (provider azure)")
            auth_file = stack.enter_context(secret(registry.azure.auth_file, f"{key}.auth_file"))
            principal = json.loads(auth_file.read_text())
            env["AZURE_CONFIG_DIR"] = str(stack.enter_context(private_dir("hubploy-azure-")))
            login = [az, "login", "--service-principal", "--username", principal["appId"]]
            login += ["--password", principal["password"], "--tenant", principal["tenant"]]
            _run(login, env, masker, "az login")
            _run([az, "acr", "login", "--name", registry.azure.registry], env, masker, "az acr login")
        yield RegistryLogin(docker_config, credentials_from_docker_config(docker_config, env))


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


@contextmanager
def cluster_login(hub: Hub, snapshot: Snapshot, namespace: str, sops: Sops, masker: Masker) -> Iterator[ClusterLogin]:
    """Credentials for the hub's cluster in a private KUBECONFIG, for the length of the block only; without a
    `cluster` block, the current kubeconfig context (KUBECONFIG or ~/.kube/config)."""
    cluster = hub.config.cluster
    env = dict(os.environ)
    if cluster is None:
        yield ClusterLogin(env, None)
        return
    secret = partial(_hub_secret, hub, snapshot, sops=sops, masker=masker)
    key = f"cluster.{cluster.provider}"
    if cluster.kubeconfig is not None:
        settings = cluster.kubeconfig
        with secret(settings.filename, f"{key}.filename") as kubeconfig:
            context = settings.context.format(namespace=namespace) if settings.context else None
            yield ClusterLogin({**env, "KUBECONFIG": str(kubeconfig)}, context)
        return
    with private_dir("hubploy-kube-") as folder, ExitStack() as stack:
        env["KUBECONFIG"] = str(folder / "kubeconfig")
        purpose = f"cluster login for hub {hub.name} (provider {cluster.provider})"
        if cluster.gcloud is not None:
            gke = cluster.gcloud
            gcloud = find_tool("gcloud", purpose)
            if gke.service_key:  # hubploy classic: the hub's key, activated in a private gcloud configuration
                env["CLOUDSDK_CONFIG"] = str(folder / "gcloud")
                key_file = stack.enter_context(secret(gke.service_key, f"{key}.service_key"))
                _run([gcloud, "auth", "activate-service-account", f"--key-file={key_file}"], env, masker, purpose)
                credentials = [gcloud, "container", "clusters", f"--zone={gke.zone}", f"--project={gke.project}"]
                _run([*credentials, "get-credentials", gke.cluster], env, masker, purpose)
            else:
                # hubploy 1.2: keyless. GOOGLE_APPLICATION_CREDENTIALS (a key or workload identity federation file, as
                # CI auth actions write) becomes gcloud's credential file unless its own override is set; else gcloud
                # uses the machine's account or metadata server. No key is activated, the gcloud configuration kept.
                adc = env.get("GOOGLE_APPLICATION_CREDENTIALS")
                if adc and not env.get("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"):
                    env["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] = adc
                credentials = [gcloud, "container", "clusters", "get-credentials", gke.cluster]
                _run([*credentials, f"--zone={gke.zone}", f"--project={gke.project}"], env, masker, purpose)
        elif cluster.aws is not None:
            eks = cluster.aws
            aws = find_tool("aws", purpose)
            for name in [n for n in env if n.startswith("AWS_")]:  # only this hub's credentials, never ambient ones
                del env[name]
            _aws_credentials(eks, env, stack, secret, f"{key}.service_key")
            update = [aws, "eks", "update-kubeconfig", "--name", eks.cluster, "--region", eks.region]
            _run([*update, "--kubeconfig", env["KUBECONFIG"]], env, masker, purpose)
        elif cluster.azure is not None:
            aks = cluster.azure
            az = find_tool("az", purpose)
            env["AZURE_CONFIG_DIR"] = str(folder / "azure")
            with secret(aks.auth_file, f"{key}.auth_file") as auth_file:
                principal = json.loads(auth_file.read_text())
                login = [az, "login", "--service-principal", "--username", principal["appId"]]
                login += ["--password", principal["password"], "--tenant", principal["tenant"]]
                _run(login, env, masker, purpose)
            get = [az, "aks", "get-credentials", "--name", aks.cluster, "--resource-group", aks.resource_group]
            _run([*get, "--file", env["KUBECONFIG"]], env, masker, purpose)
        yield ClusterLogin(env, None)
