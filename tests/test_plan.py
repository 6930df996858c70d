"""`hubploy plan` and the plan job: live releases against what a commit renders, secrets masked.

Real helm, the real jupyterhub chart, a real registry and sops, on the local control plane
(tests/services/cluster.py).
"""

from __future__ import annotations

import base64
import json
import uuid

import dagster as dg
import pytest
from click.testing import CliRunner
from services.lab import CANARY, Lab
from services.registry import push_image
from services.repos import sops_encrypt

from hubploy_dagster.cli import main
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.release import DeployOptions, deploy_hub
from hubploy_dagster.resources import DeploymentRepoResource, SopsResource
from hubploy_dagster.secrets import Sops
from hubploy_dagster.session import HubSession
from hubploy_dagster.tags import ImageTagIndex
from jobs.plan import plan

pytestmark = pytest.mark.integration

NEW_CANARY = f"canary-{uuid.uuid4().hex}"
PROBE = f"probe-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def two_deployed_hubs(lab: Lab) -> tuple[Lab, str]:
    """`lab` and `quiet` (a copy of lab in its own namespace) deployed to staging; returns the deployed commit.

    Each is deployed twice: on a first install, Zero to JupyterHub's `checksum/secret` annotation hashes a
    rendering of its Secret with other random tokens than the ones it stores, so the first upgrade changes
    it (a plan says so, rightly). From then on, as with any hub in service, the chart renders identically.
    """
    quiet_namespace = lab.cluster.new_namespace_name("quiet")
    repo = lab.builder.open()
    files = {}
    for path in ("hubploy.yaml", "config/common.yaml", "config/staging.yaml", "secrets/staging.yaml"):
        text = (lab.builder.path / "hubs/lab" / path).read_text()
        files[f"hubs/quiet/{path}"] = text.replace(lab.namespace, quiet_namespace)
    files["hubs/quiet/image/Dockerfile"] = "FROM scratch\n"
    sha = lab.builder.commit("second hub", files)
    lab.push_current_image()
    quiet_tag = ImageTagIndex(repo).tags(sha, ["hubs/quiet/image"])["hubs/quiet/image"]
    push_image(lab.registry, lab.image.split("/", 1)[1], quiet_tag)
    deployment = load_deployment(repo.snapshot(sha))
    for name in ("lab", "quiet"):
        hub = deployment.hub(name)
        for _ in range(2):
            deploy_hub(
                HubSession(deployment, hub, "staging", Sops(age_key_file=str(lab.age_key)), print), DeployOptions()
            )
    return lab, sha


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def hubploy_plan(lab: Lab, *args: str):
    runner = CliRunner(env={"SOPS_AGE_KEY_FILE": str(lab.age_key)})
    return runner.invoke(main, ["plan", "--repo", str(lab.builder.path), *args])


def test_plan_lists_changed_hubs_with_masked_diffs_and_images_to_build(two_deployed_hubs):
    lab, deployed = two_deployed_hubs
    result = hubploy_plan(lab, "--json")
    assert result.exit_code == 0, result.output
    untouched = json.loads(result.stdout)
    assert untouched["to"] == deployed and untouched["hubs"] == [], "what is deployed renders identically"
    assert untouched["unchanged"] == ["lab", "quiet"] and untouched["images_to_build"] == []

    secret = f"jupyterhub:\n  proxy:\n    secretToken: {NEW_CANARY}\n"
    changed = lab.builder.commit(
        "probe env, new proxy token, new image",
        {
            "hubs/lab/config/staging.yaml": f"jupyterhub:\n  hub:\n    extraEnv:\n      PLAN_PROBE: {PROBE}\n",
            "hubs/lab/secrets/staging.yaml": sops_encrypt(lab.workdir, lab.recipient, secret),
            "hubs/lab/image/Dockerfile": "FROM scratch\nLABEL plan=1\n",
        },
    )
    new_tag = ImageTagIndex(lab.builder.open()).tags(changed, ["hubs/lab/image"])["hubs/lab/image"]
    result = hubploy_plan(lab, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["to"] == changed and [h["hub"] for h in data["hubs"]] == ["lab"] and data["unchanged"] == ["quiet"]
    lab_plan = data["hubs"][0]
    assert lab_plan["action"] == "upgrade" and lab_plan["release"] == "lab-staging"
    assert f"+          value: {PROBE}" in lab_plan["diff"] and f"{changed[:7]}/Deployment/hub" in lab_plan["diff"]
    assert "Secret/hub data.hub.config.ConfigurableHTTPProxy.auth_token: changed" in lab_plan["secret_changes"]
    assert data["images_to_build"] == [f"{lab.image}:{new_tag}"]

    text = hubploy_plan(lab, "--from", deployed)
    assert text.exit_code == 0, text.output
    assert "deploy\tlab\tupgrade lab-staging" in text.stdout and "quiet" not in text.stdout
    assert f"image\t{lab.image}:{new_tag}\tto build" in text.stdout
    assert "+  hub.config.ConfigurableHTTPProxy.auth_token: '********" in text.stdout
    markdown = hubploy_plan(lab, "--from", deployed, "--format", "markdown")
    assert markdown.exit_code == 0 and markdown.stdout.startswith(f"## Plan for staging at `{changed[:7]}`")
    assert "<details><summary>lab: upgrade lab-staging" in markdown.stdout and "```diff" in markdown.stdout
    secret_forms = [form for value in (CANARY, NEW_CANARY) for form in (value, b64(value))]
    for output in (result.output, text.output, markdown.output):
        assert not any(form in output for form in secret_forms)

    quiet = f"jupyterhub:\n  hub:\n    extraEnv: {{Q: {PROBE}}}\n"
    lab.builder.commit("quiet too", {"hubs/quiet/config/staging.yaml": quiet})
    two = hubploy_plan(lab, "--from", deployed, "--format", "markdown")
    assert two.exit_code == 0, two.output
    assert "<details><summary>lab: upgrade" in two.stdout and "<details><summary>quiet: upgrade" in two.stdout
    assert "2 hub(s) to deploy" in two.stdout and not any(form in two.output for form in secret_forms)

    freeze = (
        "environments:\n  - name: staging\n    rollout: {deny: [{cron: '0 0 * * *', duration: 1d}]}\n  - name: prod\n"
    )
    lab.builder.commit("a freeze", {"hubploy-environments.yaml": freeze})
    frozen = hubploy_plan(lab, "--from", deployed)
    assert frozen.exit_code == 0, frozen.output
    assert "held\tlab\tinside the deny window `0 0 * * *` (UTC, 1d) until" in frozen.stdout, "plan names the hold"


def test_plan_job_attaches_the_plan_as_markdown(two_deployed_hubs):
    lab, _ = two_deployed_hubs
    changed = lab.builder.commit(
        "probe env",
        {"hubs/lab/config/staging.yaml": f"jupyterhub:\n  hub:\n    extraEnv:\n      PLAN_PROBE: {PROBE}\n"},
    )
    result = plan.execute_in_process(
        run_config={"ops": {"plan_hubs": {"config": {"env": "staging"}}}},
        resources={
            "deployment_repo": DeploymentRepoResource(source=str(lab.builder.path)),
            "sops": SopsResource(age_key_file=str(lab.age_key)),
        },
    )
    assert result.success
    outputs = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = outputs[0].step_output_data.metadata
    markdown = metadata["plan"].value
    assert isinstance(metadata["plan"], dg.MarkdownMetadataValue)
    assert markdown.startswith(f"## Plan for staging at `{changed[:7]}`")
    assert "<details><summary>lab: upgrade lab-staging in" in markdown and "quiet" not in markdown
    assert f"+          value: {PROBE}" in markdown
    assert "1 hub(s) to deploy, 1 unchanged" in markdown
    assert metadata["hubs"].value == "lab" and CANARY not in markdown
    assert result.output_for_node("plan_hubs")["to"] == changed
