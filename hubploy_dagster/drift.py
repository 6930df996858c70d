"""Drift: does the live release still hold what the deployed commit says?

A hand-run `helm upgrade`, `helm rollback` or `--set` from outside changes a hub silently. The live release is
compared with the commit its last deploy recorded: who made the live revision (hubploy, or someone else), the
chart and its version, and the values helm holds (what the commit's values files and image tags give, merged
in helm's order). Differences are named by their keys only: values can be secrets. Drift is reported, never
corrected: hubs hold state, and an operator decides.

Rendered manifests are not compared: charts that generate values at install (Zero to JupyterHub's tokens and
their checksum annotations) render differently each time without any drift.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from hubploy_dagster.health_api import CheckOutcome
from hubploy_dagster.helm import Helm
from hubploy_dagster.release import DeployOptions, hub_images, prepared_release
from hubploy_dagster.session import HubSession


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


def drift_outcome(session: HubSession, helm: Helm, deployed_revision: int | None, ours: set[int]) -> CheckOutcome:
    """The live release of the session's hub against its commit; `helm`: bound to the hub's cluster (the check
    step's login); `ours`: the revisions hubploy made."""
    images = hub_images(session)
    with prepared_release(session, DeployOptions(), images, with_cluster=False) as prepared:
        request = prepared.request
        history = helm.history(request.release, request.namespace)
        live_values = json.loads(
            helm.run(
                ["get", "values", request.release, "--namespace", request.namespace, "-o", "json"],
                "helm get values",
                quiet=True,
            )
            or "null"
        )
        documents = [yaml.safe_load(path.read_text()) for path in request.values_files]
        chart = yaml.safe_load((request.chart / "Chart.yaml").read_text()) or {}
    expected = merged_values(documents, [(i.helm_path, i.name, i.tag) for i in images])
    live = history[-1]
    findings = []
    if int(live["revision"]) not in ours:
        findings.append(
            f"revision {live['revision']} ({live.get('description', '')}) was not made by hubploy, which last "
            f"deployed revision {deployed_revision}"
        )
    expected_chart = f"{chart.get('name')}-{chart.get('version')}"
    if live.get("chart") != expected_chart:
        findings.append(f"chart {live.get('chart')} is live where {session.sha[:7]} has {expected_chart}")
    changed = differing_keys(live_values or {}, expected)
    if changed:
        findings.append(f"values differ from {session.sha[:7]} at {', '.join(changed[:10])}")
    metadata = {
        "live_revision": int(live["revision"]),
        "deployed_revision": deployed_revision,
        "live_chart": live.get("chart"),
        "changed_values": changed,
    }
    if not findings:
        return CheckOutcome(True, f"{request.release} is as {session.sha[:7]} deployed it", metadata)
    return CheckOutcome(False, f"{request.release} drifted: " + "; ".join(findings), metadata)
