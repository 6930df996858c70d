"""The test cluster (the project's local control plane), proven with the real clients the product uses.

These tests run real helm 3.18 and kubectl 1.33 (.tools/bin) and the kubernetes Python client against real
etcd, kube-apiserver, kube-controller-manager and kube-scheduler with a kwok node (services/cluster.py).
They show what the product's deploy tests stand on: install/upgrade/history/rollback of a small chart and of
the real jupyterhub 3.3.8 chart with the example hub's values, rollouts done by the real controllers, pods
that crash-loop, and an unreachable API server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from services.cluster import CRASHING_TAG, KubernetesCluster, tool

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AGE_KEY = PROJECT_ROOT / "hubs" / "DEMO-ONLY-age-key.txt"
SOPS = PROJECT_ROOT / ".venv" / "bin" / "sops"
COMMAND_TIMEOUT_S = 120


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on an unexpected exit code fail with its output (helm and kubectl explain themselves)."""
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def helm(cluster: KubernetesCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), *args], cluster.helm_env(), check=check)


def kubectl(cluster: KubernetesCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args], cluster.kubectl_env(), check=check)


def helm_upgrade(
    cluster: KubernetesCluster, release: str, chart: Path, namespace: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`helm upgrade --install --wait` as hubploy runs it."""
    return helm(
        cluster,
        "upgrade",
        "--install",
        "--wait",
        release,
        str(chart),
        "--namespace",
        namespace,
        *args,
        check=check,
    )


def history(cluster: KubernetesCluster, release: str, namespace: str) -> list[dict[str, Any]]:
    return json.loads(helm(cluster, "history", release, "-n", namespace, "-o", "json").stdout)


@pytest.fixture
def tiny_chart(tmp_path: Path) -> Path:
    """A chart with one of each basic kind: Deployment (+ Service selecting it), ConfigMap, Secret."""
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("message: hello\nimage: registry.example.org/web:1\nreplicas: 2\n")
    (chart / "templates" / "all.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{ .Release.Name }}-config
            data:
              message: {{ .Values.message | quote }}
            ---
            apiVersion: v1
            kind: Secret
            metadata:
              name: {{ .Release.Name }}-secret
            type: Opaque
            stringData:
              token: "token-{{ .Values.message }}"
            ---
            apiVersion: v1
            kind: Service
            metadata:
              name: {{ .Release.Name }}-web
            spec:
              selector:
                app: {{ .Release.Name }}-web
              ports:
                - name: http
                  port: 80
                  targetPort: http
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: {{ .Release.Name }}-web
            spec:
              replicas: {{ .Values.replicas }}
              selector:
                matchLabels:
                  app: {{ .Release.Name }}-web
              template:
                metadata:
                  labels:
                    app: {{ .Release.Name }}-web
                  annotations:
                    checksum/config: {{ .Values.message | sha256sum }}
                spec:
                  containers:
                    - name: web
                      image: {{ .Values.image }}
                      ports:
                        - name: http
                          containerPort: 8080
                      env:
                        - name: MESSAGE
                          valueFrom:
                            configMapKeyRef:
                              name: {{ .Release.Name }}-config
                              key: message
            """
        )
    )
    return chart


def test_helm_install_upgrade_history(k8s_cluster: KubernetesCluster, k8s_namespace: str, tiny_chart: Path) -> None:
    """helm upgrade --install --wait, an upgrade, history and manifest; helm keeps releases in Secrets."""
    helm_upgrade(k8s_cluster, "tiny", tiny_chart, k8s_namespace, "--timeout", "30s")
    status = json.loads(helm(k8s_cluster, "status", "tiny", "-n", k8s_namespace, "-o", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)

    helm_upgrade(k8s_cluster, "tiny", tiny_chart, k8s_namespace, "--timeout", "30s", "--set", "message=changed")
    assert [(r["revision"], r["status"]) for r in history(k8s_cluster, "tiny", k8s_namespace)] == [
        (1, "superseded"),
        (2, "deployed"),
    ]
    manifest = helm(k8s_cluster, "get", "manifest", "tiny", "-n", k8s_namespace).stdout
    for kind, name in [("ConfigMap", "tiny-config"), ("Secret", "tiny-secret"), ("Deployment", "tiny-web")]:
        assert f"kind: {kind}\nmetadata:\n  name: {name}" in manifest
    assert 'message: "changed"' in manifest
    with k8s_cluster.api_client() as api:
        stored = client.CoreV1Api(api).list_namespaced_secret(k8s_namespace, label_selector="owner=helm,name=tiny")
    assert sorted(s.metadata.labels["version"] for s in stored.items) == ["1", "2"]

    # The objects are upgraded in place (strategic merge patch keeps the container whole), rolled out by the
    # real Deployment controller, with Endpoints made by the real EndpointSlice/Endpoints controllers.
    table = kubectl(k8s_cluster, "get", "deploy", "-n", k8s_namespace).stdout
    assert "tiny-web" in table and "2/2" in table
    kubectl(k8s_cluster, "rollout", "status", "deploy/tiny-web", "-n", k8s_namespace, "--timeout=10s")
    with k8s_cluster.api_client() as api:
        config_map = client.CoreV1Api(api).read_namespaced_config_map("tiny-config", k8s_namespace)
        deployment = client.AppsV1Api(api).read_namespaced_deployment("tiny-web", k8s_namespace)
        endpoints = client.CoreV1Api(api).read_namespaced_endpoints("tiny-web", k8s_namespace)
    assert config_map.data == {"message": "changed"}
    container = deployment.spec.template.spec.containers[0]
    assert (container.name, container.image, container.env[0].name) == ("web", "registry.example.org/web:1", "MESSAGE")
    assert deployment.metadata.generation == deployment.status.observed_generation == 2
    assert len(endpoints.subsets[0].addresses) == 2 and endpoints.subsets[0].ports[0].port == 8080


def test_helm_namespace_must_exist_or_be_created(k8s_cluster: KubernetesCluster, tiny_chart: Path) -> None:
    """As on a real cluster, nothing is created in a missing namespace; helm --create-namespace creates it."""
    missing = k8s_cluster.new_namespace_name("missing")
    result = helm_upgrade(k8s_cluster, "tiny", tiny_chart, missing, "--timeout", "10s", check=False)
    assert result.returncode != 0
    assert f'namespaces "{missing}" not found' in result.stderr

    other = k8s_cluster.new_namespace_name("created-by-helm")
    helm_upgrade(k8s_cluster, "tiny", tiny_chart, other, "--create-namespace", "--timeout", "10s")
    assert "Active" in kubectl(k8s_cluster, "get", "namespace", other).stdout


@pytest.fixture
def umbrella_chart(tmp_path: Path, jupyterhub_chart: Path) -> Path:
    """A copy of the project's umbrella chart with the real jupyterhub 3.3.8 chart in its charts/."""
    chart = tmp_path / "chart"
    shutil.copytree(PROJECT_ROOT / "chart", chart, ignore=shutil.ignore_patterns("charts"))
    (chart / "charts").mkdir()
    shutil.copy(jupyterhub_chart, chart / "charts")
    return chart


@pytest.fixture
def datahub_values(tmp_path: Path) -> Iterator[list[str]]:
    """helm -f arguments of the example datahub hub for staging, its sops secrets decrypted to a private file."""
    config = PROJECT_ROOT / "hubs" / "datahub" / "config"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    decrypted = secrets_dir / "staging.yaml"
    result = subprocess.run(
        [str(SOPS), "--decrypt", str(PROJECT_ROOT / "hubs" / "datahub" / "secrets" / "staging.yaml")],
        env={**os.environ, "SOPS_AGE_KEY_FILE": str(AGE_KEY)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"sops could not decrypt the datahub staging secrets: {result.stderr}")
    decrypted.touch(mode=0o600)
    decrypted.write_text(result.stdout)
    try:
        yield ["-f", str(config / "common.yaml"), "-f", str(config / "staging.yaml"), "-f", str(decrypted)]
    finally:
        decrypted.unlink(missing_ok=True)


def test_jupyterhub_chart_installs_and_atomic_upgrade_rolls_back(
    k8s_cluster: KubernetesCluster,
    k8s_namespace: str,
    umbrella_chart: Path,
    datahub_values: list[str],
) -> None:
    """The real jupyterhub chart with the example hub's values: install --wait (the hub database's claim bound
    by kube-controller-manager's hostPath provisioner), then a broken upgrade (a hub image whose pods
    crash-loop) that --atomic rolls back to revision 1's configuration."""
    release = "datahub-staging"
    image = ["--set-string", "jupyterhub.singleuser.image.name=localhost:5000/hubploy-dagster/datahub-user-image"]
    image += ["--set-string", "jupyterhub.singleuser.image.tag=0123abc"]
    helm_upgrade(k8s_cluster, release, umbrella_chart, k8s_namespace, *datahub_values, *image, "--timeout", "60s")
    status = json.loads(helm(k8s_cluster, "status", release, "-n", k8s_namespace, "-o", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)
    for workload in ("deploy/hub", "deploy/proxy", "daemonset/continuous-image-puller"):
        kubectl(k8s_cluster, "rollout", "status", workload, "-n", k8s_namespace, "--timeout=10s")
    with k8s_cluster.api_client() as api:
        claim = client.CoreV1Api(api).read_namespaced_persistent_volume_claim("hub-db-dir", k8s_namespace)
        hub = client.AppsV1Api(api).read_namespaced_deployment("hub", k8s_namespace)
    assert claim.status.phase == "Bound"
    good_image = hub.spec.template.spec.containers[0].image
    assert good_image == "quay.io/jupyterhub/k8s-hub:3.3.8"

    broken_tag = f"{CRASHING_TAG}-{k8s_namespace}"  # the kwok node makes pods of such an image crash-loop
    failed = helm_upgrade(
        k8s_cluster,
        release,
        umbrella_chart,
        k8s_namespace,
        *datahub_values,
        *image,
        "--set",
        f"jupyterhub.hub.image.tag={broken_tag}",
        "--atomic",
        "--timeout",
        "5s",
        check=False,
    )
    assert failed.returncode != 0
    assert "has been rolled back due to atomic being set" in failed.stderr
    revisions = history(k8s_cluster, release, k8s_namespace)
    assert [(r["revision"], r["status"]) for r in revisions] == [(1, "superseded"), (2, "failed"), (3, "deployed")]
    assert revisions[-1]["description"] == "Rollback to 1"
    with k8s_cluster.api_client() as api:
        hub = client.AppsV1Api(api).read_namespaced_deployment("hub", k8s_namespace)
    assert hub.spec.template.spec.containers[0].image == good_image
    assert hub.status.ready_replicas == 1 and hub.status.observed_generation == hub.metadata.generation
    kubectl(k8s_cluster, "rollout", "status", "deploy/hub", "-n", k8s_namespace, "--timeout=10s")


def test_crashloop_pod_is_visible_with_its_reason(k8s_cluster: KubernetesCluster, k8s_namespace: str) -> None:
    """mark_crashloop: the Deployment's pods show CrashLoopBackOff through the API, until the template changes."""
    labels = {"app": "web"}
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="registry.example.org/web:1")]),
            ),
        ),
    )
    with k8s_cluster.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        apps.create_namespaced_deployment(k8s_namespace, body)
        assert k8s_cluster.wait_rolled_out(k8s_namespace, "web").status.available_replicas == 1

        crashing = k8s_cluster.mark_crashloop(k8s_namespace, "web")
        pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=web").items
        assert [pod.metadata.name for pod in pods] == crashing
        status = pods[0].status
        waiting = status.container_statuses[0].state.waiting
        assert (waiting.reason, status.container_statuses[0].restart_count) == ("CrashLoopBackOff", 5)
        assert {c.type: c.status for c in status.conditions}["Ready"] == "False"
        # (No log: nothing runs on a kwok node.) The Deployment controller counts the pod unavailable.
        deployment = wait_for(lambda: unavailable(apps.read_namespaced_deployment("web", k8s_namespace)))
        assert {c.type: c.status for c in deployment.status.conditions}["Available"] == "False"
        assert "CrashLoopBackOff" in kubectl(k8s_cluster, "get", "pods", "-n", k8s_namespace).stdout
        stuck = kubectl(
            k8s_cluster, "rollout", "status", "deploy/web", "-n", k8s_namespace, "--timeout=1s", check=False
        )
        assert stuck.returncode != 0

        # Still crashing: the same pod template.
        apps.patch_namespaced_deployment("web", k8s_namespace, {"metadata": {"labels": {"touched": "yes"}}})
        assert not apps.read_namespaced_deployment("web", k8s_namespace).status.available_replicas
        # A new template (a fix) rolls out, and the crashing pods go away.
        fix = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.example.org/web:2"}]}}}}
        apps.patch_namespaced_deployment("web", k8s_namespace, fix)
        assert k8s_cluster.wait_rolled_out(k8s_namespace, "web").status.available_replicas == 1
        pods = wait_for(lambda: only_new_pods(core.list_namespaced_pod(k8s_namespace, label_selector="app=web").items))
        assert [pod.status.container_statuses[0].ready for pod in pods] == [True]


def unavailable(deployment: Any) -> Any:
    return deployment if not deployment.status.available_replicas else None


def only_new_pods(pods: list[Any]) -> list[Any] | None:
    """The pods once the crashing ones are gone (deleted by the ReplicaSet controller, removed by kwok)."""
    return pods if all(pod.spec.containers[0].image.endswith(":2") for pod in pods) else None


def wait_for(found: Any, timeout: float = 30.0) -> Any:
    """The first truthy value of `found()`, polled; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout:.0f} s")
        time.sleep(0.2)
    return value


def test_stopped_api_server_refuses_connections(k8s_cluster: KubernetesCluster, k8s_namespace: str) -> None:
    """With kube-apiserver stopped, kubectl and helm fail with "connection refused" naming the server; started
    again, it serves what etcd kept."""
    address = k8s_cluster.server.removeprefix("https://")
    k8s_cluster.stop_apiserver()
    try:
        refused = kubectl(k8s_cluster, "get", "pods", "-n", k8s_namespace, check=False)
        assert refused.returncode != 0
        assert f"The connection to the server {address} was refused" in refused.stderr
        listed = helm(k8s_cluster, "list", "-n", k8s_namespace, check=False)
        assert listed.returncode != 0
        assert "Kubernetes cluster unreachable" in listed.stderr and address in listed.stderr
        assert "connection refused" in listed.stderr
    finally:
        k8s_cluster.start()
    assert k8s_namespace in kubectl(k8s_cluster, "get", "namespace", k8s_namespace).stdout
