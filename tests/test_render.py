"""The real jupyterhub chart renders with each example hub's values, and rejects bad values before a deploy."""

from __future__ import annotations

import pytest
import yaml
from services.repos import PROJECT_ROOT, RepoBuilder

from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.helm import HelmError
from hubploy_dagster.release import render_hub
from hubploy_dagster.secrets import MASK, Masker, Sops
from hubploy_dagster.session import HubSession
from hubploy_dagster.tags import tag_from_sha

DEMO_KEY = PROJECT_ROOT / "hubs" / "DEMO-ONLY-age-key.txt"


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize("hub_name", ["datahub", "research"])
def test_example_hubs_render_with_the_real_chart(example_repo: RepoBuilder, chart_cache, hub_name: str, env: str):
    repo = example_repo.open()
    deployment = load_deployment(repo.snapshot("HEAD"))
    masker = Masker()
    manifests = render_hub(
        HubSession(deployment, deployment.hub(hub_name), env, Sops(age_key_file=str(DEMO_KEY)), print, masker)
    )
    documents = [d for d in yaml.safe_load_all(manifests) if d]
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "Secret", "ConfigMap"} <= kinds
    tag = tag_from_sha(example_repo.repo.head.commit.hexsha)
    puller = next(
        d for d in documents if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "continuous-image-puller"
    )
    images = [c["image"] for c in puller["spec"]["template"]["spec"]["initContainers"]]
    assert f"localhost:5000/hubploy-dagster/{hub_name}-user-image:{tag}" in images, "the image was injected last"
    host = f"{hub_name}-staging.example.org" if env == "staging" else f"{hub_name}.example.org"
    assert host in manifests
    assert masker.values, "the decrypted secrets were registered for masking"
    assert any(value in manifests for value in masker.values), "the rendered Secrets carry the decrypted values"
    masked = masker(manifests)
    assert MASK in masked and not any(value in masked for value in masker.values)


def test_values_schema_error_is_reported_by_template(example_repo: RepoBuilder, chart_cache):
    example_repo.commit(
        "bad value", {"hubs/datahub/config/staging.yaml": "jupyterhub:\n  hub:\n    db:\n      type: bogus\n"}
    )
    repo = example_repo.open()
    deployment = load_deployment(repo.snapshot("HEAD"))
    masker = Masker()
    with pytest.raises(HelmError) as caught:
        render_hub(
            HubSession(
                deployment, deployment.hub("datahub"), "staging", Sops(age_key_file=str(DEMO_KEY)), print, masker
            )
        )
    message = str(caught.value)
    assert message.startswith(f"helm template of datahub (staging) at {deployment.sha[:7]} with chart chart failed")
    assert "bogus" in message or "db" in message
    assert not any(value in message for value in masker.values)
