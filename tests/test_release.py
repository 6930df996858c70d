"""Release assets and `hubploy deploy`: real helm and the real jupyterhub chart on the local control plane.

The cluster is the project's local control plane (tests/services/cluster.py); images are in a real registry.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from services.lab import CANARY, CRASHING_HUB, Lab
from services.repos import new_age_key, sops_encrypt

from hubploy_dagster.cli import main
from hubploy_dagster.helm import Helm

pytestmark = pytest.mark.integration


def test_install_then_upgrade_records_helm_revisions(lab: Lab):
    lab.push_current_image()
    first = lab.materialize()
    assert first.success, first.error()
    meta = first.metadata()
    assert meta["helm_revision"] == 1 and meta["helm_status"] == "deployed"
    assert meta["chart"] == "hub-0.1.0" and meta["namespace"] == lab.namespace and meta["release"] == "lab-staging"
    assert meta["git_sha"] == lab.builder.repo.head.commit.hexsha and meta["values_digest"].startswith("sha256:")
    lab.builder.commit(
        "bigger servers", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  singleuser:\n    memory: {limit: 4G}\n"}
    )
    second = lab.materialize()
    assert second.success, second.error()
    assert second.metadata()["helm_revision"] == 2
    assert second.metadata()["values_digest"] != meta["values_digest"]
    history = lab.history()
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    assert history[-1]["revision"] == second.metadata()["helm_revision"]


def test_failing_atomic_upgrade_rolls_back_and_no_secret_leaks(lab: Lab, capfd):
    lab.push_current_image()
    assert lab.materialize().success
    lab.builder.commit("a hub image that crashes", {"hubs/lab/config/staging.yaml": CRASHING_HUB})
    failed = lab.materialize()
    assert not failed.success
    message = failed.error()
    assert "helm upgrade of lab-staging" in message and "failed" in message
    history = lab.history()
    assert [h["status"] for h in history] == ["superseded", "failed", "deployed"]
    assert "Rollback to 1" in history[-1]["description"]
    captured = capfd.readouterr()
    for text in (failed.recorded(), message, captured.out, captured.err):
        assert CANARY not in text


def test_successful_deploy_leaks_no_secret(lab: Lab, capfd):
    lab.push_current_image()
    run = lab.materialize()
    assert run.success, run.error()
    captured = capfd.readouterr()
    recorded = run.recorded()
    assert "helm upgrade --install lab-staging" in recorded, "the run log is what we search"
    for text in (recorded, json.dumps(run.metadata(), default=str), captured.out, captured.err):
        assert CANARY not in text


def test_prod_never_builds_and_names_the_missing_image(lab: Lab):
    run = lab.materialize("prod", tags={"promotion_override": "operator: testing the image requirement"})
    assert not run.success
    message = run.error()
    assert f"{lab.image}:" in message and "not in the registry" in message and "never build" in message
    assert Helm().status("lab-prod", f"{lab.namespace}-prod") is None


def no_release(lab: Lab) -> bool:
    return Helm().status("lab-staging", lab.namespace) is None


def test_wrong_age_key_runs_no_helm_upgrade(lab: Lab, tmp_path: Path):
    lab.push_current_image()
    lab.age_key, _ = new_age_key(tmp_path, "wrong")
    run = lab.materialize()
    assert not run.success and "cannot decrypt hubs/lab/secrets/staging.yaml@" in run.error()
    assert no_release(lab)


def test_plaintext_secret_runs_no_helm_upgrade(lab: Lab):
    lab.builder.commit(
        "leaked", {"hubs/lab/secrets/staging.yaml": f"jupyterhub:\n  proxy:\n    secretToken: {CANARY}\n"}
    )
    lab.push_current_image()
    run = lab.materialize()
    assert not run.success and "hubs/lab/secrets/staging.yaml@" in run.error() and "not sops-encrypted" in run.error()
    assert CANARY not in run.error() and CANARY not in run.recorded()
    assert no_release(lab)


def test_missing_chart_runs_no_helm_upgrade(lab: Lab):
    lab.builder.repo.git.rm("-r", "-q", "chart")
    sha = lab.builder.commit("chart gone")
    lab.push_current_image()
    run = lab.materialize()
    assert not run.success
    assert f"hubs/lab/hubploy.yaml@{sha[:7]}: chart: chart folder chart does not exist" in run.error()
    assert no_release(lab)


def test_values_error_is_reported_before_any_upgrade(lab: Lab):
    lab.builder.commit("bad values", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  hub:\n    db: {type: bogus}\n"})
    lab.push_current_image()
    run = lab.materialize()
    assert not run.success and "helm template of lab (staging)" in run.error()
    assert no_release(lab)
    assert lab.namespace not in lab.cluster.namespaces()


def test_unreachable_cluster_names_the_server(lab: Lab):
    lab.push_current_image()
    lab.cluster.stop_apiserver()
    try:
        run = lab.materialize()
    finally:
        lab.cluster.start()
    assert not run.success
    assert f"cluster {lab.cluster.server} is unreachable" in run.error()
    assert no_release(lab)


def test_cli_deploy_matches_the_asset(lab: Lab):
    lab.push_current_image()
    args = [
        "deploy",
        "lab",
        "chart",
        "staging",
        "--repo",
        str(lab.builder.path),
        "--set",
        "jupyterhub.cull.enabled=false",
    ]
    result = CliRunner(env={"SOPS_AGE_KEY_FILE": str(lab.age_key)}).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lab-staging\t{lab.namespace}\trevision 1\tdeployed\n"
    assert CANARY not in result.output


def test_kubeconfig_provider_uses_the_hubs_encrypted_kubeconfig_and_leaves_no_trace(
    lab: Lab, tmp_path: Path, monkeypatch
):
    """hubploy's `kubeconfig` provider: secrets/<filename> decrypted for the deploy only, context templated."""
    config = yaml.safe_load(lab.cluster.kubeconfig.read_text())
    for context in config["contexts"]:
        context["name"] = f"lab-{lab.namespace}"
    config["current-context"] = "nowhere"  # only the hub's templated context can work
    kubeconfig = yaml.safe_dump(config)
    lab.builder.commit(
        "cluster credentials", {"hubs/lab/secrets/kubeconfig.yaml": sops_encrypt(tmp_path, lab.recipient, kubeconfig)}
    )
    lab.configure(
        lab.environments()
        + "cluster:\n  provider: kubeconfig\n  kubeconfig: {filename: kubeconfig.yaml, context: 'lab-{namespace}'}\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))  # the ambient one must not be used
    monkeypatch.delenv("HELM_KUBECONTEXT")
    lab.push_current_image()
    run = lab.materialize()
    assert run.success, run.error()
    assert run.metadata()["helm_revision"] == 1
    assert os.environ["KUBECONFIG"] == str(tmp_path / "no-such-kubeconfig"), "the process environment is untouched"


@pytest.mark.parametrize(
    ("provider", "block", "command"),
    [
        ("gcloud", "{project: p, cluster: c, zone: z}", "gcloud"),
        ("aws", "{account_id: '1', region: r, cluster: c, role_arn: 'arn:aws:iam::1:role/deployer'}", "aws"),
        ("azure", "{resource_group: rg, cluster: c, auth_file: azure.json}", "az"),
    ],
)
def test_cloud_cluster_provider_without_its_cli_names_the_command(lab: Lab, provider, block, command, monkeypatch):
    monkeypatch.setenv(f"HUBPLOY_{command.upper()}", f"{command}-missing")
    if provider == "azure":
        lab.builder.commit(
            "azure auth",
            {
                "hubs/lab/secrets/azure.json": sops_encrypt(
                    lab.workdir, lab.recipient, '{"appId": "a", "password": "p", "tenant": "t"}', kind="json"
                )
            },
        )
    lab.configure(lab.environments() + f"cluster:\n  provider: {provider}\n  {provider}: {block}\n")
    lab.push_current_image()
    run = lab.materialize()
    assert not run.success and f"needs the `{command}-missing` command" in run.error()
    assert no_release(lab)


def test_no_cluster_configured_says_how_to_point_at_one(lab: Lab, tmp_path: Path, monkeypatch):
    """`make run` without a cluster: the release step fails naming the kubeconfig and what to do."""
    missing = tmp_path / "no-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.delenv("HELM_KUBECONTEXT")
    lab.push_current_image()
    run = lab.materialize()
    assert not run.success
    assert f"no usable cluster in {missing}" in run.error() and "Point KUBECONFIG" in run.error()


def kill_helm_upgrade_once_pending(lab: Lab, killed: threading.Event, timeout: float = 60) -> None:
    """SIGKILL the `helm upgrade` of the lab's staging release once it recorded its pending revision and waits:
    what a lost machine or an OOM kill does to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        helm = next(
            (pid for pid, args in processes() if args[:2] == [b"helm", b"upgrade"] and b"lab-staging" in args), None
        )
        if helm is not None and lab.history()[-1]["status"] == "pending-upgrade":
            os.kill(helm, signal.SIGKILL)
            killed.set()
            return
        time.sleep(0.2)


def processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv with the program's base name) of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            found.append((int(entry.name), [args[0].rsplit(b"/", 1)[-1], *args[1:]]))
    return found


def test_a_release_left_pending_by_a_killed_helm_is_recovered_by_the_next_deploy(lab: Lab):
    lab.push_current_image()
    assert lab.materialize().success
    # A hub image whose pods crash-loop: the rollout never completes, so helm --wait waits.
    lab.builder.commit("a hub pod that never becomes ready", {"hubs/lab/config/staging.yaml": CRASHING_HUB})
    killed = threading.Event()
    killer = threading.Thread(target=kill_helm_upgrade_once_pending, args=(lab, killed), daemon=True)
    killer.start()
    interrupted = lab.materialize()  # not ready: helm --wait is still waiting when it is killed
    killer.join()
    assert killed.is_set() and not interrupted.success
    assert lab.history()[-1]["status"] == "pending-upgrade"
    lab.builder.commit(
        "a hub pod that works", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  hub:\n    extraEnv: {X: '1'}\n"}
    )
    recovered = lab.materialize()
    assert recovered.success, recovered.error()
    assert (
        "lab-staging was left pending-upgrade by an interrupted helm: rolling back to revision 1"
        in recovered.log_text()
    )
    history = lab.history()
    assert history[-1]["status"] == "deployed" and recovered.metadata()["helm_revision"] == history[-1]["revision"]
    assert any(h["description"] == "Rollback to 1" for h in history), history
