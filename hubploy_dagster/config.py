"""The typed model of a hub's `hubploy.yaml`: hubploy's classic schema exactly, plus our optional keys.

The model is strict (an unknown key is an error, as a typo in a deploy config should be) and is the single
source of the JSON Schema that editors use (`hubploy schema`). Loading turns every YAML or schema mistake
into `ConfigProblem`s naming the file and the dotted key.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from hubploy_dagster.errors import ConfigError, ConfigProblem

DEFAULT_HELM_SUBSTITUTION_PATH = "jupyterhub.singleuser.image"
DEFAULT_IMAGE_PATH = "image"
DEFAULT_CHART = "hub"
ENVIRONMENT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
PYDANTIC_REASONS = {"extra_forbidden": "unknown key", "missing": "required key is missing"}


def _relative_path(value: str) -> str:
    """Paths in hubploy.yaml are inside the repository: reject absolute paths and `..` escapes."""
    cleaned = value.rstrip("/")
    if value.startswith("/") or not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError(f"must be a relative path inside the repository, got {value!r}")
    return cleaned


RelativePath = Annotated[str, AfterValidator(_relative_path)]
NonEmpty = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderChoice(Strict):
    """A `provider` key naming which of the model's blocks is used: that block must be there."""

    @model_validator(mode="after")
    def _block(self) -> ProviderChoice:
        provider = self.provider  # type: ignore[attr-defined]
        if getattr(self, provider) is None:
            raise ValueError(f"provider is {provider!r} but there is no {provider!r} block")
        return self


# --- images (classic hubploy) -------------------------------------------------------------------------------


class Repo2DockerSettings(Strict):
    """repo2docker options hubploy passed when an image directory has no Dockerfile."""

    base_image: str | None = None
    user_id: int = 1000
    user_name: str = "jovyan"


class ImageSpec(Strict):
    name: NonEmpty = Field(description="Full image name without tag, e.g. gcr.io/project/user-image")
    path: RelativePath = Field(DEFAULT_IMAGE_PATH, description="Image directory, relative to the hub folder")
    helm_substitution_path: NonEmpty = Field(
        DEFAULT_HELM_SUBSTITUTION_PATH,
        description="Helm values path whose .name and .tag receive the image (always via --set-string)",
    )
    repo2docker: Repo2DockerSettings | None = None


class GcloudRegistry(Strict):
    project: NonEmpty
    service_key: NonEmpty


class AwsCredentials(Strict):
    account_id: NonEmpty
    region: NonEmpty
    service_key: NonEmpty | None = None
    role_arn: NonEmpty | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """hubploy renamed aws `project` to `account_id` and `zone` to `region`; old names keep working."""
        if isinstance(data, dict):
            data = dict(data)
            for old, new in (("project", "account_id"), ("zone", "region")):
                if old in data and new not in data:
                    data[new] = data.pop(old)
        return data

    @model_validator(mode="after")
    def _one_credential(self) -> AwsCredentials:
        if (self.service_key is None) == (self.role_arn is None):
            raise ValueError("exactly one of service_key or role_arn must be set")
        return self


class AzureRegistry(Strict):
    resource_group: NonEmpty
    registry: NonEmpty
    auth_file: NonEmpty


class DockerConfigRegistry(Strict):
    filename: NonEmpty = Field(description="sops-encrypted docker config.json, relative to the hub's secrets/")


class RegistryConfig(ProviderChoice):
    provider: Literal["gcloud", "aws", "azure", "dockerconfig"]
    gcloud: GcloudRegistry | None = None
    aws: AwsCredentials | None = None
    azure: AzureRegistry | None = None
    dockerconfig: DockerConfigRegistry | None = None


class ImagesConfig(Strict):
    """Either the legacy single `image_name` or the `images` list, plus the registry to push to."""

    image_name: NonEmpty | None = None
    image_config_path: NonEmpty | None = Field(
        None, description="Legacy form only: helm values path for the image (default jupyterhub.singleuser.image)"
    )
    images: list[ImageSpec] | None = None
    registry: RegistryConfig | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ImagesConfig:
        if self.image_name and self.images is not None:
            raise ValueError("use either image_name (legacy) or images, not both")
        if not self.image_name and not self.images:
            raise ValueError("needs image_name or a non-empty images list")
        if self.image_config_path and not self.image_name:
            raise ValueError("image_config_path goes with the legacy image_name form only")
        names = [image.name for image in self.images or []]
        if len(set(names)) != len(names):
            raise ValueError("image names must be unique")
        return self

    def resolved(self) -> list[ImageSpec]:
        if self.images:
            return list(self.images)
        path = self.image_config_path or DEFAULT_HELM_SUBSTITUTION_PATH
        return [ImageSpec(name=self.image_name or "", helm_substitution_path=path)]


# --- cluster (classic hubploy) ------------------------------------------------------------------------------


class GcloudCluster(Strict):
    project: NonEmpty
    cluster: NonEmpty
    zone: NonEmpty
    service_key: NonEmpty | None = Field(None, description="sops-encrypted key in secrets/; omit for keyless ADC")


class AwsCluster(AwsCredentials):
    cluster: NonEmpty


class AzureCluster(Strict):
    resource_group: NonEmpty
    cluster: NonEmpty
    auth_file: NonEmpty


class KubeconfigCluster(Strict):
    filename: NonEmpty = Field(description="sops-encrypted kubeconfig, relative to the hub's secrets/")
    context: NonEmpty | None = Field(None, description="Context to use; {namespace} is replaced")


class ClusterConfig(ProviderChoice):
    provider: Literal["gcloud", "aws", "azure", "kubeconfig"]
    gcloud: GcloudCluster | None = None
    aws: AwsCluster | None = None
    azure: AzureCluster | None = None
    kubeconfig: KubeconfigCluster | None = None

    def identity(self) -> str:
        """The cluster this block names, for per-cluster deploy limits (hubs naming the same share them)."""
        block = getattr(self, self.provider)
        parts = {
            "gcloud": ("project", "zone", "cluster"),
            "aws": ("account_id", "region", "cluster"),
            "azure": ("resource_group", "cluster"),
            "kubeconfig": ("context",) if self.kubeconfig and self.kubeconfig.context else ("filename",),
        }[self.provider]
        return f"{self.provider}:" + "/".join(str(getattr(block, part)) for part in parts)


# --- our optional additions ---------------------------------------------------------------------------------


class HelmSettings(Strict):
    timeout: NonEmpty | None = Field(None, description="helm --timeout, passed verbatim (e.g. 10m)")
    force: bool = False
    atomic: bool = False
    cleanup_on_fail: bool = False
    extra_args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to helm upgrade (e.g. --disable-openapi-validation)"
    )


class EnvironmentSettings(Strict):
    namespace: NonEmpty | None = Field(None, description="Default: <hub>-<env>")
    release: NonEmpty | None = Field(None, description="Default: <hub>-<env>")
    url: NonEmpty | None = Field(None, description="The hub's public URL, used by the API health checks")
    rollout: RolloutSettings | None = Field(None, description="Over the repository's (hubploy-environments.yaml)")


def parse_duration(value: str) -> timedelta:
    """`2h`, `30m`, `1d12h`, `90s`: the durations of rollout settings."""
    match = DURATION.match(value.strip())
    if not value.strip() or not match:
        raise ValueError(f"{value!r} is not a duration like 30m, 2h, 1d12h or 90s")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _cron(value: str) -> str:
    if not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday, e.g. `0 8 * * 1-5`)")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a time zone name (e.g. Europe/Berlin, America/Los_Angeles)") from None
    return value


Duration = Annotated[str, AfterValidator(_duration)]


class DeployWindow(Strict):
    """A recurring window: it opens at every time `cron` names, in `timezone`, and stays open `duration`."""

    cron: Annotated[str, AfterValidator(_cron)] = Field(description="When it opens, e.g. `0 8 * * 1-5`")
    duration: Duration = Field(description="How long it stays open, e.g. `10h`")
    timezone: Annotated[str, AfterValidator(_time_zone)] = "UTC"


class IdleWait(Strict):
    """Before the upgrade, wait until at most `max_active_servers` user servers run (the hub's REST API)."""

    max_active_servers: int = Field(0, ge=0)
    max_wait: Duration = Field("2h", description="How long to wait at most")
    then: Literal["deploy", "give-up"] = Field("give-up", description="After max_wait: deploy anyway, or fail")
    poll: Duration = Field("30s", description="How often to ask the hub")


class RolloutSettings(Strict):
    """When an environment's release may change (every key optional; a hub's keys override the repository's)."""

    allow: list[DeployWindow] | None = Field(None, description="Deploy only inside one of these windows")
    deny: list[DeployWindow] | None = Field(None, description="Never deploy inside these windows (they win)")
    wait_for_idle: IdleWait | None = None
    soak: Duration | None = Field(
        None, description="Promote here only after this long healthy in the environment before, checked again"
    )
    wave: int | None = Field(None, ge=0, description="Canary wave: hubs of wave n deploy after every hub of n-1")

    def over(self, defaults: RolloutSettings | None) -> RolloutSettings:
        """These settings, with the keys not set here taken from `defaults`."""
        if defaults is None:
            return self
        return defaults.model_copy(update={key: getattr(self, key) for key in self.model_fields_set})


class CheckSettings(Strict):
    enabled: bool = True
    blocking: bool = True
    timeout_seconds: int = Field(300, gt=0, description="The time one attempt may take")
    retries: int = Field(2, ge=0, description="More attempts after a failed one, 2 s apart, doubling")


class UserServerCheckSettings(CheckSettings):
    enabled: bool = False
    timeout_seconds: int = Field(600, gt=0, description="The time one attempt may take")
    username: NonEmpty = "hubploy-health-check"
    token_values_path: NonEmpty = Field(
        "jupyterhub.hub.services.hubploy-health.apiToken",
        description="Where in the hub's decrypted secrets/<env>.yaml the admin service token is",
    )


class HealthSettings(Strict):
    """The checks run after each release; hub_api and test_user need the environment's `url`."""

    release: CheckSettings = CheckSettings()
    workloads: CheckSettings = CheckSettings()
    hub_api: CheckSettings = CheckSettings()
    test_user: UserServerCheckSettings = UserServerCheckSettings()
    drift: CheckSettings = Field(
        CheckSettings(blocking=False, retries=0),
        description="The live release against its commit (revision, chart, values); a warning, never blocking",
    )


class Owners(Strict):
    names: list[NonEmpty] = Field(default_factory=list, description="Who owns the hub: named in its notifications")
    webhook: NonEmpty | None = Field(
        None,
        description="Slack-style incoming webhook for this hub's failed deploys, rollbacks, refused promotions, "
        "holds and drift (besides HUBPLOY_WEBHOOK_URL)",
    )


class SecretsSettings(Strict):
    encryption: Literal["sops", "external"] = Field(
        "sops",
        description="external: secrets/ files are decrypted before deploys by other means (e.g. git-crypt in CI)",
    )


class HubployConfig(Strict):
    """A hub's hubploy.yaml."""

    model_config = ConfigDict(  # merged with Strict's
        title="hubploy.yaml", json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )

    images: ImagesConfig | None = None
    cluster: ClusterConfig | None = Field(None, description="Omit to deploy to the current kubeconfig context")
    chart: RelativePath = Field(DEFAULT_CHART, description="Path of the helm chart from the repository root")
    watch_paths: list[RelativePath] = Field(
        default_factory=list, description="Other repository paths whose change redeploys this hub"
    )
    helm: HelmSettings = HelmSettings()
    environments: dict[str, EnvironmentSettings] = Field(default_factory=dict)
    health: HealthSettings = HealthSettings()
    rollback: Literal["never", "on-failure"] = "never"
    secrets: SecretsSettings = SecretsSettings()
    owners: Owners = Owners()

    @model_validator(mode="after")
    def _environment_names(self) -> HubployConfig:
        for name in self.environments:
            if not ENVIRONMENT_NAME.match(name):
                raise ValueError(f"environment name {name!r} must be lowercase letters, digits and dashes")
        return self

    def image_specs(self) -> list[ImageSpec]:
        return self.images.resolved() if self.images else []


def json_schema() -> dict[str, Any]:
    return HubployConfig.model_json_schema()


def problem_from_pydantic(file: str, error: Any) -> ConfigProblem:
    key = ".".join(str(part) for part in error["loc"])
    reason = PYDANTIC_REASONS.get(error["type"]) or error["msg"].removeprefix("Value error, ")
    return ConfigProblem(file, key, reason)


def parse_yaml(text: str | bytes, file: str) -> Any:
    """YAML parsing whose errors name the file, line and column instead of a traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError.single(file, "", f"invalid YAML: {problem} {where}".strip()) from None


def load_hubploy_config(text: str | bytes, file: str) -> HubployConfig:
    data = parse_yaml(text, file)
    if not isinstance(data, dict | None):
        raise ConfigError.single(file, "", f"must be a mapping, got {type(data).__name__}")
    try:
        return HubployConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError([problem_from_pydantic(file, err) for err in exc.errors()]) from None
