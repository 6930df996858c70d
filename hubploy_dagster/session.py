"""One hub at one commit in one environment, and what every command on it shares.

A deploy, a check, a rollback or a render of a hub needs the same things: the deployment at the commit,
the hub, the environment, how to decrypt its secrets, a masker that keeps the decrypted values out of
every log line, and, for commands that reach the cluster, the hub's cluster login with helm bound to its
kube context. A session holds them; `with session.cluster() as cluster:` logs in for the block only, the
shape 2i2c's deployer gives its cluster authentication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hubploy_dagster.cloud import ClusterLogin, RegistryLogin, cluster_login, registry_login
from hubploy_dagster.deployment import Deployment, Hub, load_deployment
from hubploy_dagster.helm import Helm
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Masker, Sops


@dataclass(frozen=True)
class Cluster:
    """The hub's cluster for the length of a `with session.cluster()` block."""

    login: ClusterLogin
    helm: Helm


@dataclass(frozen=True)
class HubSession:
    deployment: Deployment
    hub: Hub
    env: str
    sops: Sops
    log: Callable[[str], None]
    masker: Masker = field(default_factory=Masker)

    @classmethod
    def at(
        cls, repo: DeploymentRepo, sha: str, hub: str, env: str, sops: Sops, log: Callable[[str], None]
    ) -> HubSession:
        """The session of `hub` as committed at `sha`."""
        deployment = load_deployment(repo.snapshot(sha))
        return cls(deployment, deployment.hub(hub), env, sops, log)

    @property
    def repo(self) -> DeploymentRepo:
        return self.deployment.snapshot.repo

    @property
    def sha(self) -> str:
        return self.deployment.sha

    @property
    def release(self) -> str:
        return self.hub.release_name(self.env)

    @property
    def namespace(self) -> str:
        return self.hub.namespace(self.env)

    @contextmanager
    def cluster(self, namespace: str | None = None) -> Iterator[Cluster]:
        """The hub's cluster credentials, active for the block only; helm is bound to the hub's context."""
        with cluster_login(
            self.hub, self.deployment.snapshot, namespace or self.namespace, self.sops, self.masker
        ) as login:
            yield Cluster(login, login.helm(self.masker, self.log))

    @contextmanager
    def registry(self) -> Iterator[RegistryLogin]:
        """The hub's registry credentials, active for the block only."""
        with registry_login(self.hub, self.deployment.snapshot, self.sops, self.masker) as login:
            yield login
