"""Health of a release as the cluster sees it: helm's record of the release, and its workloads' rollout.

These are the checks 2i2c's deployer runs after a deploy (`kubectl rollout status` on every workload), done
through the kubernetes client and with answers an operator can act on: which pod, which reason.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import kubernetes

from hubploy_dagster.cloud import ClusterLogin
from hubploy_dagster.health_api import CheckOutcome
from hubploy_dagster.helm import Helm
from hubploy_dagster.kube import REQUEST_TIMEOUT, WORKLOAD_KINDS, api_client, call

RELEASE_ANNOTATION = "meta.helm.sh/release-name"
BAD_WAITING_REASONS = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"}


def check_release(helm: Helm, release: str, namespace: str, expected_revision: int | None) -> CheckOutcome:
    """helm says the release is deployed, at the revision this run installed (`helm` is bound to the hub's context)."""
    status = helm.status(release, namespace)
    if status is None:
        return CheckOutcome(False, f"release {release} does not exist in namespace {namespace}", {})
    state = status.get("info", {}).get("status", "unknown")
    revision = status.get("version")
    metadata = {"helm_status": state, "helm_revision": revision, "expected_revision": expected_revision}
    if state != "deployed":
        return CheckOutcome(False, f"release {release} is {state} at revision {revision}, not deployed", metadata)
    if expected_revision is not None and revision != expected_revision:
        reason = f"release {release} is at revision {revision}, not {expected_revision} which this run installed"
        return CheckOutcome(False, reason, metadata)
    return CheckOutcome(True, f"release {release} deployed at revision {revision}", metadata)


def _rollout_problem(kind: str, item: Any) -> str | None:
    """kubectl rollout status's rules, for one workload; None when it is rolled out."""
    spec, status, generation = item.spec, item.status, item.metadata.generation or 0
    if (status.observed_generation or 0) < generation:
        return f"{kind} {item.metadata.name}: the controller has not seen generation {generation} yet"
    if kind == "DaemonSet":
        desired = status.desired_number_scheduled or 0
        if (status.updated_number_scheduled or 0) < desired:
            return f"DaemonSet {item.metadata.name}: {status.updated_number_scheduled or 0} of {desired} pods updated"
        if (status.number_available or 0) < desired:
            return f"DaemonSet {item.metadata.name}: {status.number_available or 0} of {desired} pods available"
        return None
    wanted = spec.replicas if spec.replicas is not None else 1
    if (status.updated_replicas or 0) < wanted:
        return f"{kind} {item.metadata.name}: {status.updated_replicas or 0} of {wanted} replicas updated"
    ready = status.available_replicas if kind == "Deployment" else status.ready_replicas
    if (ready or 0) < wanted:
        return f"{kind} {item.metadata.name}: {ready or 0} of {wanted} replicas ready"
    return None


def check_workloads(
    login: ClusterLogin, release: str, namespace: str, timeout_seconds: float = REQUEST_TIMEOUT
) -> CheckOutcome:
    """Every Deployment, StatefulSet and DaemonSet of the release rolled out; no pod crash-looping or unpullable.

    One reading of the cluster: each request has `timeout_seconds`.
    """
    with api_client(login) as client:
        apps = kubernetes.client.AppsV1Api(client)
        workloads = []
        for kind, suffix in WORKLOAD_KINDS.items():
            list_items = getattr(apps, f"list_namespaced_{suffix}")
            request = partial(list_items, namespace, _request_timeout=timeout_seconds)
            for item in call(client, f"listing {kind}s in {namespace}", request).items:
                if (item.metadata.annotations or {}).get(RELEASE_ANNOTATION) == release:
                    workloads.append((kind, item))
        core = kubernetes.client.CoreV1Api(client)
        list_pods = partial(core.list_namespaced_pod, namespace, _request_timeout=timeout_seconds)
        pods = call(client, f"listing pods in {namespace}", list_pods).items
    problems = [p for kind, item in workloads if (p := _rollout_problem(kind, item))]
    for pod in pods:
        for container in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason in BAD_WAITING_REASONS:
                problems.append(f"pod {pod.metadata.name} container {container.name}: {waiting.reason}")
    metadata = {"workloads": len(workloads), "pods": len(pods)}
    if not workloads:
        return CheckOutcome(False, f"release {release} has no workloads in namespace {namespace}", metadata)
    if problems:
        return CheckOutcome(False, "; ".join(problems), {**metadata, "problems": problems})
    return CheckOutcome(True, f"{len(workloads)} workloads of {release} rolled out", metadata)
