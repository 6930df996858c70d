"""Who the product talks to the cluster as, and which cluster: on the real API server, authorization on.

- The control plane is the pinned, version-stamped build (the jupyterhub chart checks `kubeVersion`).
- The deployer's ServiceAccount (deploy/kubernetes/rbac) deploys a hub with its own token, and the API
  server refuses it what its ClusterRole does not grant.
- A hub whose `cluster.kubeconfig` names a context (hubploy's `{namespace}` template) in a kubeconfig whose
  current context is unreachable: deploy, every cluster-side check, rollback and plan use the hub's context.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client
from services.cluster import KubernetesCluster, free_port, tool
from services.lab import Lab
from services.repos import PROJECT_ROOT, sops_encrypt

from hubploy_dagster.cli import main

pytestmark = pytest.mark.integration

VERSIONS = dict(
    line.split("=", 1)
    for line in (PROJECT_ROOT / "scripts/control-plane/versions").read_text().splitlines()
    if line and not line.startswith("#")
)
DEPLOYER = ("dagster", "hubploy-deployer")


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tool("kubectl"), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def test_the_control_plane_is_the_pinned_build(k8s_cluster: KubernetesCluster):
    wanted = VERSIONS["KUBERNETES_VERSION"]
    for program in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert subprocess.run([tool(program), "--version"], capture_output=True, text=True).stdout.strip() == (
            f"Kubernetes {wanted}"
        )
    etcd = subprocess.run([tool("etcd"), "--version"], capture_output=True, text=True).stdout
    assert f"etcd Version: {VERSIONS['ETCD_VERSION'].removeprefix('v')}" in etcd
    server = json.loads(kubectl(k8s_cluster.kubeconfig, "version", "-o", "json").stdout)["serverVersion"]
    assert (server["gitVersion"], server["major"], server["minor"]) == (wanted, "1", wanted.split(".")[1])
    nodes = json.loads(kubectl(k8s_cluster.kubeconfig, "get", "nodes", "-o", "json").stdout)["items"]
    assert [n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes] == [
        f"kwok-{VERSIONS['KWOK_VERSION'].removeprefix('v')}"
    ]


def deployer_kubeconfig(cluster: KubernetesCluster, folder: Path) -> Path:
    """The RBAC of deploy/kubernetes/rbac applied, and a kubeconfig holding a token of its ServiceAccount."""
    rendered = kubectl(cluster.kubeconfig, "kustomize", str(PROJECT_ROOT / "deploy/kubernetes/rbac")).stdout
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: dagster}\n---\n"
    subprocess.run(
        [tool("kubectl"), "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
        input=namespace + rendered,
        capture_output=True,
        text=True,
        check=True,
    )
    with cluster.api_client() as api:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        token = client.CoreV1Api(api).create_namespaced_service_account_token(DEPLOYER[1], DEPLOYER[0], request)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki.ca_cert)}}
        ],
        "users": [{"name": "deployer", "user": {"token": token.status.token}}],
        "contexts": [{"name": "deployer", "context": {"cluster": "c", "user": "deployer"}}],
        "current-context": "deployer",
    }
    path = folder / "deployer-kubeconfig.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_the_deployers_service_account_deploys_and_is_refused_the_rest(lab: Lab, tmp_path: Path, monkeypatch):
    kubeconfig = deployer_kubeconfig(lab.cluster, tmp_path)
    whoami = json.loads(kubectl(kubeconfig, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == "system:serviceaccount:dagster:hubploy-deployer"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("HELM_KUBECONTEXT")
    lab.push_current_image()
    run = lab.materialize(checks=True)  # creates the hub's namespace, then helm --wait, then the checks
    assert run.materialized() == ["lab/staging"], run.error() if not run.success else ""
    checks = run.checks()
    assert checks["release_deployed"].passed and checks["workloads_ready"].passed, checks
    assert lab.history()[-1]["status"] == "deployed"

    node = lab.cluster.nodes_names()[0]
    for args, refusal in (
        (("delete", "node", node), 'cannot delete resource "nodes"'),
        (("get", "nodes"), 'cannot list resource "nodes"'),
        (("get", "persistentvolumes"), 'cannot list resource "persistentvolumes"'),
    ):
        result = kubectl(kubeconfig, *args, check=False)
        assert result.returncode != 0 and "Forbidden" in result.stderr and refusal in result.stderr, result
    for verb, resource in (
        ("create", "persistentvolumes"),
        ("delete", "nodes"),
        ("create", "certificatesigningrequests"),
    ):
        assert kubectl(kubeconfig, "auth", "can-i", verb, resource, check=False).stdout.strip() == "no"
    assert lab.cluster.nodes_names() == [node], "the node is still there"


def two_context_kubeconfig(lab: Lab, tmp_path: Path) -> str:
    """The cluster's kubeconfig with a current context at an address where nothing listens, and the hub's
    context `lab-<staging namespace>` beside it (what `context: 'lab-{namespace}'` becomes)."""
    config = yaml.safe_load(lab.cluster.kubeconfig.read_text())
    [real] = config["contexts"]
    config["clusters"].append({"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}})
    config["contexts"] = [
        {"name": "gone", "context": {**real["context"], "cluster": "gone"}},
        {"name": f"lab-{lab.namespace}", "context": real["context"]},
    ]
    config["current-context"] = "gone"
    return sops_encrypt(tmp_path, lab.recipient, yaml.safe_dump(config))


def test_every_cluster_action_uses_the_hubs_context_not_the_current_one(lab: Lab, tmp_path: Path, monkeypatch):
    lab.builder.commit(
        "cluster credentials", {"hubs/lab/secrets/kubeconfig.yaml": two_context_kubeconfig(lab, tmp_path)}
    )
    cluster = (
        "cluster:\n  provider: kubeconfig\n  kubeconfig: {filename: kubeconfig.yaml, context: 'lab-{namespace}'}\n"
    )
    lab.configure(lab.environments() + cluster)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))  # the ambient one must not be used
    monkeypatch.delenv("HELM_KUBECONTEXT")
    lab.push_current_image()

    first, rolled = lab.upgrade_then_roll_back(checks=True)
    checks = first.checks()
    for name in ("release_deployed", "workloads_ready"):
        assert checks[name].passed, (name, checks[name].description)
    assert rolled.success
    monkeypatch.setenv("KUBECONFIG", str(lab.cluster.kubeconfig))  # only to read the result here
    assert [h["revision"] for h in lab.history()] == [1, 2, 3] and lab.history()[-1]["description"] == "Rollback to 1"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))

    planned = CliRunner(env={"SOPS_AGE_KEY_FILE": str(lab.age_key)}).invoke(
        main, ["plan", "--repo", str(lab.builder.path), "--json"]
    )
    assert planned.exit_code == 0, planned.output
    [hub] = json.loads(planned.stdout)["hubs"]
    assert hub["hub"] == "lab" and hub["action"] == "upgrade", "the live release (rolled back) differs from HEAD"
    # The singleuser memory limit lives in the hub's Secret (its values.yaml): listed, its value masked.
    assert any(change.startswith("Secret/hub ") for change in hub["secret_changes"]), hub["secret_changes"]
