"""hubploy.yaml: hubploy's classic schema, our additions, and errors that name file, key and reason."""

from __future__ import annotations

import json

import jsonschema
import pytest

from hubploy_dagster.config import json_schema, load_hubploy_config
from hubploy_dagster.errors import ConfigError

FILE = "hubs/h/hubploy.yaml"


def problems_of(text: str) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_hubploy_config(text, FILE)
    return [(p.file, p.key, p.reason) for p in caught.value.problems]


def test_legacy_image_name_resolves_to_hubploy_defaults():
    config = load_hubploy_config("images:\n  image_name: gcr.io/p/user-image\n", FILE)
    [image] = config.image_specs()
    assert (image.name, image.path, image.helm_substitution_path) == (
        "gcr.io/p/user-image",
        "image",
        "jupyterhub.singleuser.image",
    )


def test_legacy_image_config_path_sets_the_helm_path():
    config = load_hubploy_config("images:\n  image_name: a/b\n  image_config_path: custom.image\n", FILE)
    assert config.image_specs()[0].helm_substitution_path == "custom.image"


def test_images_list_with_repo2docker_and_registry_inside_images():
    config = load_hubploy_config(
        """
images:
  images:
    - name: gcr.io/p/one
      path: images/one
      helm_substitution_path: jupyterhub.singleuser.profileList.0.image
    - name: gcr.io/p/two
      repo2docker:
        base_image: buildpack-deps:jammy
  registry:
    provider: gcloud
    gcloud:
      project: p
      service_key: gcr-key.json
""",
        FILE,
    )
    one, two = config.image_specs()
    assert one.path == "images/one" and one.helm_substitution_path.endswith("profileList.0.image")
    assert two.path == "image" and two.repo2docker is not None and two.repo2docker.base_image == "buildpack-deps:jammy"
    assert two.repo2docker.user_id == 1000 and two.repo2docker.user_name == "jovyan"
    assert config.images is not None and config.images.registry is not None
    assert config.images.registry.gcloud is not None and config.images.registry.gcloud.service_key == "gcr-key.json"


@pytest.mark.parametrize(
    "cluster",
    [
        "provider: gcloud\n  gcloud: {project: p, cluster: c, zone: us-central1-b, service_key: k.json}",
        "provider: aws\n  aws: {account_id: '123', region: us-west-2, cluster: c, service_key: a.cfg}",
        "provider: aws\n  aws: {account_id: '123', region: us-west-2, cluster: c, role_arn: 'arn:aws:iam::1:role/r'}",
        "provider: azure\n  azure: {resource_group: rg, cluster: c, auth_file: azure.json}",
        "provider: kubeconfig\n  kubeconfig: {filename: kubeconfig.yaml, context: 'ctx-{namespace}'}",
    ],
)
def test_every_cluster_provider(cluster: str):
    config = load_hubploy_config(f"cluster:\n  {cluster}\n", FILE)
    assert config.cluster is not None
    assert getattr(config.cluster, config.cluster.provider) is not None


@pytest.mark.parametrize("provider", ["gcloud", "aws", "azure", "dockerconfig"])
def test_every_registry_provider(provider: str):
    blocks = {
        "gcloud": "{project: p, service_key: k.json}",
        "aws": "{account_id: '1', region: r, service_key: s.cfg}",
        "azure": "{resource_group: rg, registry: acr, auth_file: a.json}",
        "dockerconfig": "{filename: docker-config.json}",
    }
    text = f"images:\n  image_name: x/y\n  registry:\n    provider: {provider}\n    {provider}: {blocks[provider]}\n"
    config = load_hubploy_config(text, FILE)
    assert config.images is not None and config.images.registry is not None
    assert config.images.registry.provider == provider


def test_aws_legacy_aliases_project_and_zone():
    config = load_hubploy_config(
        "cluster:\n  provider: aws\n  aws: {project: '123', zone: us-east-1, cluster: c, service_key: a.cfg}\n", FILE
    )
    assert config.cluster is not None and config.cluster.aws is not None
    assert (config.cluster.aws.account_id, config.cluster.aws.region) == ("123", "us-east-1")


def test_our_optional_keys_and_their_defaults():
    config = load_hubploy_config(
        """
chart: charts/hub
watch_paths: [shared/templates]
helm: {timeout: 30m, atomic: true, extra_args: [--disable-openapi-validation]}
environments:
  staging: {url: https://staging.example.org, namespace: custom-ns}
rollback: on-failure
secrets: {encryption: external}
health:
  test_user: {enabled: true, retries: 3}
""",
        FILE,
    )
    assert config.chart == "charts/hub" and config.watch_paths == ["shared/templates"]
    assert config.helm.timeout == "30m" and config.helm.atomic and not config.helm.force
    assert config.environments["staging"].namespace == "custom-ns"
    assert config.rollback == "on-failure" and config.secrets.encryption == "external"
    assert config.health.test_user.enabled and config.health.test_user.retries == 3
    assert config.health.hub_api.enabled and config.health.hub_api.blocking
    defaults = load_hubploy_config("", FILE)
    assert defaults.images is None and defaults.cluster is None and defaults.chart == "hub"
    assert defaults.rollback == "never" and not defaults.health.test_user.enabled


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("imagez: {}\n", "imagez", "unknown key"),
        ("images:\n  image_name: a/b\n  registy: {}\n", "images.registy", "unknown key"),
        ("images: {}\n", "images", "needs image_name or a non-empty images list"),
        ("images:\n  image_name: a\n  images: [{name: b}]\n", "images", "use either image_name (legacy) or images"),
        ("images:\n  images: [{name: a}, {name: a}]\n", "images", "image names must be unique"),
        ("images:\n  images: [{path: image}]\n", "images.images.0.name", "required key is missing"),
        ("images:\n  images: [{name: a, path: /abs}]\n", "images.images.0.path", "must be a relative path"),
        ("images:\n  images: [{name: a, path: ../up}]\n", "images.images.0.path", "must be a relative path"),
        ("images:\n  images: [{name: a}]\n  image_config_path: x\n", "images", "goes with the legacy image_name"),
        ("images:\n  image_name: a\n  registry: {provider: quay}\n", "images.registry.provider", "Input should be"),
        ("images:\n  image_name: a\n  registry: {provider: gcloud}\n", "images.registry", "no 'gcloud' block"),
        ("cluster: {provider: aws, aws: {account_id: '1', region: r, cluster: c}}\n", "cluster.aws", "exactly one"),
        (
            "cluster: {provider: aws, aws: {account_id: '1', region: r, cluster: c, service_key: a, role_arn: b}}\n",
            "cluster.aws",
            "exactly one",
        ),
        ("cluster: {provider: kubeconfig, kubeconfig: {filename: k, user: x}}\n", "cluster.kubeconfig.user", "unknown"),
        ("chart: ../elsewhere\n", "chart", "must be a relative path"),
        ("helm: {timeout: 5m, wait: false}\n", "helm.wait", "unknown key"),
        ("helm: {atomic: maybe}\n", "helm.atomic", "valid boolean"),
        ("environments: {Staging: {}}\n", "", "environment name 'Staging'"),
        ("environments: {staging: {hostname: x}}\n", "environments.staging.hostname", "unknown key"),
        ("rollback: always\n", "rollback", "Input should be"),
        ("health: {hub_api: {timeout_seconds: 0}}\n", "health.hub_api.timeout_seconds", "greater than 0"),
        ("secrets: {encryption: git-crypt}\n", "secrets.encryption", "Input should be"),
        ("- a list\n", "", "must be a mapping"),
    ],
)
def test_every_schema_error_names_file_key_and_reason(text: str, key: str, reason: str):
    found = problems_of(text)
    assert any(f == FILE and k == key and reason in r for f, k, r in found), found


def test_invalid_yaml_names_the_line():
    [(file, key, reason)] = problems_of("images:\n  image_name: a\n bad: [\n")
    assert file == FILE and key == ""
    assert reason.startswith("invalid YAML") and "line 3" in reason


def test_every_problem_is_reported_not_just_the_first():
    found = problems_of("imagez: 1\nrollback: always\nhelm: {force: perhaps}\n")
    assert {k for _, k, _ in found} == {"imagez", "rollback", "helm.force"}


def test_json_schema_is_valid_and_strict():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert {"images", "cluster", "chart", "helm", "environments", "health", "rollback"} <= set(schema["properties"])
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"images": {"image_name": "a/b"}, "chart": "hub"}))
    assert list(validator.iter_errors({"imagez": {}}))
    json.dumps(schema)
