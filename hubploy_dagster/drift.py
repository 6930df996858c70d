"""Drift: does the live release still hold what the deployed commit says?

A hand-run `helm upgrade`, `helm rollback`, `--set` or `kubectl set image` from outside changes a hub silently.
The live release is compared with the commit its last deploy recorded: who made the live revision (hubploy, or
someone else), the chart and its version, the values helm holds (what the commit's values files and image tags
give, merged in helm's order), the rendered manifest of the live revision against that of the revision hubploy
deployed (by object), and the images the live workloads run against those the manifest gives them (an edit in
the cluster that helm never saw). Differences are named by their keys and objects only: values and manifests
can hold secrets. Drift is reported, never corrected: hubs hold state, and an operator decides.

Manifests are compared between two revisions helm recorded, never against a fresh `helm template` of the
commit: charts that generate values at install (Zero to JupyterHub's tokens and their checksum annotations)
render differently each time without any drift, but keep them from one revision to the next.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import kubernetes
import yaml

from hubploy_dagster.cloud import ClusterLogin
from hubploy_dagster.health_api import CheckOutcome
from hubploy_dagster.helm import Helm
from hubploy_dagster.kube import REQUEST_TIMEOUT, WORKLOAD_KINDS, ClusterError, api_client, call
from hubploy_dagster.release import DeployOptions, hub_images, prepared_release
from hubploy_dagster.session import Cluster, HubSession


def merged_values(documents: list[Any], images: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The user-supplied values helm holds for these files (later files win, maps merge) and image tags."""
    merged: dict[str, Any] = {}
    for document in documents:
        _merge(merged, document if isinstance(document, dict) else {})
    for path, name, tag in images:
        node = merged
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.update({"name": name, "tag": tag})
    return merged


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def differing_keys(live: Any, expected: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (never the values)."""
    if isinstance(live, dict) and isinstance(expected, dict):
        keys = sorted(set(live) | set(expected), key=str)
        return [k for key in keys for k in differing_keys(live.get(key), expected.get(key), f"{prefix}{key}.")]
    return [] if live == expected else [prefix.rstrip(".") or "(all values)"]


def drift_outcome(session: HubSession, cluster: Cluster, deployed_revision: int | None, ours: set[int]) -> CheckOutcome:
    """The live release of the session's hub against its commit; `cluster`: the check step's login to the hub's
    cluster; `ours`: the revisions hubploy made."""
    helm = cluster.helm
    images = hub_images(session)
    with prepared_release(session, DeployOptions(), images, with_cluster=False) as prepared:
        request = prepared.request
        release, namespace = request.release, request.namespace
        history = helm.history(release, namespace)
        live_values = json.loads(helm.get("values", release, namespace, "-o", "json") or "null")
        documents = [yaml.safe_load(path.read_text()) for path in request.values_files]
        chart = yaml.safe_load((request.chart / "Chart.yaml").read_text()) or {}
    expected = merged_values(documents, [(i.helm_path, i.name, i.tag) for i in images])
    live = history[-1]
    live_revision = int(live["revision"])
    live_objects, objects = object_drift(helm, release, namespace, live_revision, deployed_revision)
    findings = []
    if live_revision not in ours:
        findings.append(
            f"revision {live_revision} ({live.get('description', '')}) was not made by hubploy, which last "
            f"deployed revision {deployed_revision}"
        )
    expected_chart = f"{chart.get('name')}-{chart.get('version')}"
    if live.get("chart") != expected_chart:
        findings.append(f"chart {live.get('chart')} is live where {session.sha[:7]} has {expected_chart}")
    changed = differing_keys(live_values or {}, expected)
    if changed:
        findings.append(f"values differ from {session.sha[:7]} at {', '.join(changed[:10])}")
    if objects:
        findings.append(
            f"revision {live_revision} renders differently from {deployed_revision}: {', '.join(objects[:10])}"
        )
    edited = edited_images(cluster.login, namespace, live_objects)
    findings += edited
    metadata = {
        "live_revision": live_revision,
        "deployed_revision": deployed_revision,
        "live_chart": live.get("chart"),
        "changed_values": changed,
        "changed_objects": objects,
        "edited_images": edited,
    }
    if not findings:
        return CheckOutcome(True, f"{release} is as {session.sha[:7]} deployed it", metadata)
    return CheckOutcome(False, f"{release} drifted: " + "; ".join(findings), metadata)


def object_drift(
    helm: Helm, release: str, namespace: str, live_revision: int, deployed_revision: int | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The live revision's objects, and the names of those that differ in the revision hubploy deployed."""
    live = manifest_objects(helm.get("manifest", release, namespace))
    if deployed_revision is None or deployed_revision == live_revision:
        return live, []
    deployed = manifest_objects(helm.get("manifest", release, namespace, "--revision", str(deployed_revision)))
    return live, differing_objects(live, deployed)


def manifest_objects(text: str) -> dict[str, dict[str, Any]]:
    """A rendered manifest's objects by `Kind/name`."""
    documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]
    return {f"{d['kind']}/{(d.get('metadata') or {}).get('name', '')}": d for d in documents}


def differing_objects(live: dict[str, dict[str, Any]], deployed: dict[str, dict[str, Any]]) -> list[str]:
    """The objects added, removed or changed from `deployed` to `live` (names only)."""
    return sorted(name for name in set(live) | set(deployed) if live.get(name) != deployed.get(name))


def container_images(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c.get("image", "") for key in ("initContainers", "containers") for c in pod_spec.get(key) or []}


def edited_images(login: ClusterLogin, namespace: str, objects: dict[str, dict[str, Any]]) -> list[str]:
    """The containers of the release's workloads whose live image is not the one its manifest gives them."""
    found = []
    with api_client(login) as client:
        apps = kubernetes.client.AppsV1Api(client)
        for name, manifest in sorted(objects.items()):
            kind, _, object_name = name.partition("/")
            if kind not in WORKLOAD_KINDS:
                continue
            reader = getattr(apps, f"read_namespaced_{WORKLOAD_KINDS[kind]}")
            read = partial(reader, object_name, namespace, _request_timeout=REQUEST_TIMEOUT)
            try:
                workload = call(client, f"reading {name} in {namespace}", read)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise ClusterError(
                        f"cluster {client.configuration.host} refused reading {name}: {exc.reason}"
                    ) from None
                found.append(f"{name} is gone from the cluster")
                continue
            live = container_images(client.sanitize_for_serialization(workload.spec.template.spec))
            wanted = container_images(((manifest.get("spec") or {}).get("template") or {}).get("spec") or {})
            found += [
                f"{name} container {container} runs {live.get(container) or 'nothing'} where the release has {image}"
                for container, image in sorted(wanted.items())
                if live.get(container) != image
            ]
    return found
