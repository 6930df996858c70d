"""`lab`: a deployment repository with one hub on the real umbrella chart, and the cluster to deploy to.

Used by the release, health-check and promotion tests. The cluster is the local control plane
(tests/services/cluster.py); images live in a real registry.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from hubploy_dagster.assets import hub_assets
from hubploy_dagster.chain import Chain, default_chain
from hubploy_dagster.deployment import Hub, load_deployment
from hubploy_dagster.helm import Helm
from hubploy_dagster.keys import release_key
from hubploy_dagster.resources import DeploymentRepoResource, DockerEngineResource, SopsResource
from hubploy_dagster.tags import ImageTagIndex
from jobs.deploy import rollback
from services.cluster import CRASHING_TAG
from services.registry import push_image
from services.repos import PROJECT_ROOT, RepoBuilder, new_age_key, sops_encrypt

CANARY = f"canary-{uuid.uuid4().hex}"
# Staging values whose hub pod crash-loops on the test cluster: an upgrade to them never becomes ready.
CRASHING_HUB = f"jupyterhub:\n  hub:\n    image: {{tag: {CRASHING_TAG}-build}}\n"


@dataclass
class Run:
    """A finished in-process run and the instance that recorded it."""

    result: dg.ExecuteInProcessResult
    instance: dg.DagsterInstance

    @property
    def success(self) -> bool:
        return self.result.success

    def materialized(self) -> list[str]:
        return [e.asset_key.to_user_string() for e in self.result.get_asset_materialization_events() if e.asset_key]

    def metadata(self, asset: str = "staging") -> dict:
        """The metadata of the run's materialization of `<hub>/<asset>` (image, staging or prod)."""
        for event in self.result.get_asset_materialization_events():
            materialization = event.materialization
            if materialization.asset_key.path[-1] == asset:
                return {k: v.value for k, v in materialization.metadata.items()}
        raise AssertionError(f"no {asset} materialization in the run")

    def checks(self) -> dict[str, dg.AssetCheckEvaluation]:
        return {e.check_name: e for e in self.result.get_asset_check_evaluations()}

    def observations(self) -> list[dict]:
        return [
            {k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()}
            for e in self.result.all_events
            if e.event_type_value == "ASSET_OBSERVATION"
        ]

    def _root_error(self) -> dg.SerializableErrorInfo:
        """The error that failed the first failed step (Dagster wraps it: unwrap to the cause)."""
        error = self.result.get_step_failure_events()[0].step_failure_data.error
        assert error is not None
        while error.cause is not None:
            error = error.cause
        return error

    def error(self) -> str:
        return self._root_error().message

    def error_class(self) -> str:
        return self._root_error().cls_name or ""

    def log_text(self) -> str:
        return "\n".join(record.user_message for record in self.instance.all_logs(self.result.run_id))

    def recorded(self) -> str:
        return "\n".join(dg.serialize_value(record) for record in self.instance.all_logs(self.result.run_id))


@dataclass
class Lab:
    builder: RepoBuilder
    namespace: str
    image: str
    registry: object
    cluster: object
    age_key: Path
    recipient: str
    workdir: Path
    instance: dg.DagsterInstance = field(default_factory=dg.DagsterInstance.ephemeral)

    def configure(self, extra: str = "", token: str | None = None, hub_api_retries: int = 0) -> str:
        """Commit the hub's hubploy.yaml (our keys in `extra`) and its encrypted staging/prod secrets."""
        secret = f"jupyterhub:\n  proxy:\n    secretToken: {CANARY}\n"
        if token:
            secret += f"  hub:\n    services:\n      hubploy-health:\n        apiToken: {token}\n"
        config = (
            f"images:\n  image_name: {self.image}\nchart: chart\n"
            "helm: {timeout: 20s, atomic: true}\n"
            "health: {workloads: {retries: 0}, release: {retries: 0}, "
            f"hub_api: {{retries: {hub_api_retries}, timeout_seconds: 5}}}}\n" + extra
        )
        files = {"hubs/lab/hubploy.yaml": config}
        for env in ("staging", "prod"):
            files[f"hubs/lab/secrets/{env}.yaml"] = sops_encrypt(self.workdir, self.recipient, secret)
        return self.builder.commit("configure lab", files)

    def environments(self, staging_url: str | None = None, prod_url: str | None = None) -> str:
        lines = ["environments:"]
        for env, url in (("staging", staging_url), ("prod", prod_url)):
            namespace = self.namespace if env == "staging" else f"{self.namespace}-prod"
            lines.append(f"  {env}: {{namespace: {namespace}" + (f", url: '{url}'" if url else "") + "}")
        return "\n".join(lines) + "\n"

    def push_current_image(self) -> str:
        repo = self.builder.open()
        tag = ImageTagIndex(repo).tags("HEAD", ["hubs/lab/image"])["hubs/lab/image"]
        assert tag is not None
        push_image(self.registry, self.image.split("/", 1)[1], tag)
        return tag

    def fingerprint(self, rev: str = "HEAD") -> str:
        """The configuration fingerprint of the hub at `rev`."""
        deployment = load_deployment(self.builder.open().snapshot(rev))
        return deployment.fingerprint(deployment.hub("lab"))

    def hub(self) -> Hub:
        """The hub as the code location defined it when it last loaded it (before a commit that broke it)."""
        hub = load_deployment(self.builder.open().snapshot("HEAD")).hubs.get("lab")
        return hub or load_deployment(self.builder.open().snapshot("HEAD~1")).hub("lab")

    def materialize(
        self,
        *envs: str,
        checks: bool = False,
        tags: dict[str, str] | None = None,
        checks_only: bool = False,
        chain: Chain | None = None,
    ) -> Run:
        envs = envs or ("staging",)
        assets = hub_assets(self.hub(), chain or default_chain())
        keys = [release_key("lab", env) for env in envs]
        if checks_only:
            selection = dg.AssetSelection.checks_for_assets(*keys)
        else:
            selection = dg.AssetSelection.assets(*keys)
            selection = selection if checks else selection.without_checks()
        result = dg.materialize(
            assets,
            selection=selection,
            resources={
                "deployment_repo": DeploymentRepoResource(source=str(self.builder.path)),
                "docker_engine": DockerEngineResource(),
                "sops": SopsResource(age_key_file=str(self.age_key)),
            },
            tags={"git_sha": self.builder.repo.head.commit.hexsha, **(tags or {})},
            instance=self.instance,
            raise_on_error=False,
        )
        return Run(result, self.instance)

    def upgrade_then_roll_back(self, checks: bool = False) -> tuple[Run, dg.ExecuteInProcessResult]:
        """Deploy staging (with its checks if asked), deploy a change (revision 2), then run the operator's
        rollback job to revision 1; returns the first deploy and the rollback job's result."""
        first = self.materialize(checks=checks)
        assert first.materialized() == ["lab/staging"], first.error() if not first.success else ""
        self.builder.commit(
            "bigger", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  singleuser:\n    memory: {limit: 3G}\n"}
        )
        assert self.materialize().success
        defs = dg.Definitions(
            jobs=[rollback],
            resources={
                "deployment_repo": DeploymentRepoResource(source=str(self.builder.path)),
                "sops": SopsResource(age_key_file=str(self.age_key)),
            },
        )
        return first, defs.resolve_job_def("rollback").execute_in_process(
            run_config={"ops": {"rollback_hub": {"config": {"hub": "lab", "env": "staging", "revision": 1}}}},
            instance=self.instance,
        )

    def history(self, env: str = "staging") -> list[dict]:
        namespace = self.namespace if env == "staging" else f"{self.namespace}-prod"
        return Helm().history(f"lab-{env}", namespace)

    def release_exists(self, env: str = "staging") -> bool:
        namespace = self.namespace if env == "staging" else f"{self.namespace}-prod"
        return Helm().status(f"lab-{env}", namespace) is not None


@pytest.fixture
def lab(repo_builder: RepoBuilder, registry, k8s_cluster, chart_cache, monkeypatch, tmp_path: Path) -> Lab:
    for name, value in k8s_cluster.helm_env().items():
        monkeypatch.setenv(name, value)
    key, recipient = new_age_key(tmp_path)
    shutil.copytree(PROJECT_ROOT / "chart", repo_builder.path / "chart", ignore=shutil.ignore_patterns("charts"))
    shutil.copytree(PROJECT_ROOT / "hubs/datahub/config", repo_builder.path / "hubs/lab/config")
    repo_builder.write({"hubs/lab/image/Dockerfile": "FROM scratch\n"})
    lab = Lab(
        builder=repo_builder,
        namespace=k8s_cluster.new_namespace_name("lab"),
        image=f"{registry.host}/tests/lab-{uuid.uuid4().hex[:8]}",
        registry=registry,
        cluster=k8s_cluster,
        age_key=key,
        recipient=recipient,
        workdir=tmp_path,
    )
    lab.configure(lab.environments())
    return lab
