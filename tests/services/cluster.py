"""The Kubernetes cluster of the integration tests: the project's local control plane, started once a session.

It is hubploy_dagster.local_cluster: real etcd, kube-apiserver (RBAC on), kube-controller-manager and
kube-scheduler built from Go modules by scripts/build-control-plane.sh, on free loopback ports, with a kwok
node. Nothing runs in its pods: kwok marks a scheduled pod Running and Ready, a Job's pod Succeeded, and a
pod whose image reference contains `crashloop` (CRASHING_TAG) CrashLoopBackOff. helm keeps its releases in
Secrets, as on every cluster.

Load with `pytest_plugins = ["services.cluster"]`. Fixtures: `k8s_cluster` (session) and `k8s_namespace`
(a fresh namespace per test).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubploy_dagster.local_cluster import LocalCluster, LocalClusterError, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = PROJECT_ROOT / ".tools" / "bin"
# An image tag whose pods crash-loop on the cluster's kwok node (hubploy_dagster/local_cluster_stages.yaml).
CRASHING_TAG = "crashloop"
# A pod with this annotation becomes Ready that long (a Go duration, "20s") after it is scheduled.
SLOW_START_ANNOTATION = "pod-ready.stage.kwok.x-k8s.io/delay"
ROLLOUT_TIMEOUT_S = 60.0


def tool(name: str) -> str:
    """The project's pinned helm/kubectl (.tools/bin) first, then PATH; /usr/bin/kubectl may be another one."""
    pinned = TOOLS_BIN / name
    if pinned.exists():
        return str(pinned)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (scripts/setup.sh puts the pinned one in .tools/bin)", pytrace=False)
    return found


class KubernetesCluster(LocalCluster):
    """The session's cluster with what tests need besides: clients, namespaces, environments, crash-loops."""

    _names = 0

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster (the official Python client)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig), context=self.context)

    def new_namespace_name(self, prefix: str = "test") -> str:
        """A namespace name no test used before in this session (DNS-1123, at most 63 characters)."""
        KubernetesCluster._names += 1
        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        return f"{base}-{KubernetesCluster._names}-{os.getpid() % 10000}"

    def create_namespace(self, name: str) -> str:
        """Create a namespace through the API (the kubernetes client), as hubploy does; returns its name."""
        from kubernetes import client

        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def namespaces(self) -> list[str]:
        from kubernetes import client

        with self.api_client() as api:
            return [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]

    def nodes_names(self) -> list[str]:
        from kubernetes import client

        with self.api_client() as api:
            return [node.metadata.name for node in client.CoreV1Api(api).list_node().items]

    @property
    def helm_home(self) -> Path:
        return self.folder / "helm"

    def helm_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for helm against this cluster; helm's homes are private so no user's repositories leak in."""
        env = self.kubectl_env(base)
        env.update(
            {
                "HELM_KUBECONTEXT": self.context,
                "HELM_CACHE_HOME": str(self.helm_home / "cache"),
                "HELM_CONFIG_HOME": str(self.helm_home / "config"),
                "HELM_DATA_HOME": str(self.helm_home / "data"),
            }
        )
        return env

    def kubectl_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for kubectl against this cluster (KUBECONFIG, pinned tools first on PATH)."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    @property
    def running(self) -> bool:
        return "kube-apiserver" in self.components

    def start(self) -> None:
        """Start the whole control plane, or only kube-apiserver again after `stop_apiserver`."""
        if self.components:
            if not self.running:
                self.start_apiserver()
            return
        super().start()

    def wait_rolled_out(self, namespace: str, deployment: str, timeout: float = ROLLOUT_TIMEOUT_S) -> Any:
        """The Deployment once its controller reports every replica updated and available."""
        from kubernetes import client

        deadline = time.monotonic() + timeout
        with self.api_client() as api:
            apps = client.AppsV1Api(api)
            while True:
                found = apps.read_namespaced_deployment(deployment, namespace)
                status, wanted = found.status, found.spec.replicas
                if (
                    status.observed_generation == found.metadata.generation
                    and (status.updated_replicas or 0) == wanted
                    and (status.available_replicas or 0) == wanted
                    and (status.replicas or 0) == wanted
                ):
                    return found
                if time.monotonic() > deadline:
                    raise AssertionError(f"Deployment {namespace}/{deployment} not rolled out: {status}")
                time.sleep(0.2)

    def mark_crashloop(self, namespace: str, deployment: str) -> list[str]:
        """Make the running pods of a Deployment crash-loop now, as a kubelet would report it; returns their names.

        Their status is written through the API's status subresource (what a kubelet does): waiting
        CrashLoopBackOff, restartCount 5, Ready=False. The Deployment controller then counts them unavailable.
        A new pod template rolls out new pods, which kwok makes Ready as usual.
        """
        from kubernetes import client

        with self.api_client() as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            selector = apps.read_namespaced_deployment(deployment, namespace).spec.selector.match_labels
            labels = ",".join(f"{k}={v}" for k, v in selector.items())
            pods = core.list_namespaced_pod(namespace, label_selector=labels).items
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for pod in pods:
                status = {
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now},
                        {
                            "type": "ContainersReady",
                            "status": "False",
                            "reason": "ContainersNotReady",
                            "lastTransitionTime": now,
                        },
                    ],
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "ready": False,
                            "started": False,
                            "restartCount": 5,
                            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
                            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                        }
                        for container in pod.spec.containers
                    ],
                }
                core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})
        return [pod.metadata.name for pod in pods]


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[KubernetesCluster]:
    """The local control plane for the whole session (see the module docstring)."""
    cluster = KubernetesCluster(Path(tempfile.mkdtemp(prefix="hubploy-k8s-")))
    try:
        cluster.start()
    except LocalClusterError as error:
        cluster.remove()
        pytest.fail(f"the test cluster did not start: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def k8s_namespace(k8s_cluster: KubernetesCluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace, created through the API, named after the test."""
    k8s_cluster.start()  # a test that stopped the API server and failed before starting it again
    name = k8s_cluster.new_namespace_name(request.node.name.split("[")[0].removeprefix("test_").replace("_", "-"))
    return k8s_cluster.create_namespace(name)


__all__ = [
    "CRASHING_TAG",
    "SLOW_START_ANNOTATION",
    "KubernetesCluster",
    "free_port",
    "k8s_cluster",
    "k8s_namespace",
    "tool",
]
