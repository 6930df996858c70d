"""A repository's chain of environments through the Dagster path, on the real cluster: the code location's
assets and jobs, its git sensor and the promotion gate follow the chain, for three environments and for one.

Each test builds the code location as the daemon does (`build_definitions`), evaluates its git sensor tick
after tick, and executes every run it requests in-process (assets and their checks) against the local
control plane, so nothing between the push and the release is stubbed.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest
from services.repos import PROJECT_ROOT, RepoBuilder

from hubploy_dagster.chain import CHAIN_FILE
from hubploy_dagster.definitions import build_definitions
from hubploy_dagster.helm import Helm

pytestmark = pytest.mark.integration

THREE = "environments:\n- name: develop\n- name: staging\n- name: prod\n"
PINNED = "jupyterhub:\n  singleuser:\n    image:\n      name: quay.io/jupyter/base-notebook\n      tag: '2024-07-01'\n"
HEALTH = "health: {workloads: {retries: 0}, release: {retries: 0}}\n"


class Deployer:
    """The code location of a repository, its sensor ticks, and the runs they request, executed in-process."""

    def __init__(self, source: Path):
        self.defs = build_definitions(str(source))
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None
        self.runs: dict[tuple[str, str], dg.ExecuteInProcessResult] = {}

    def keys(self) -> set[str]:
        return {key.to_user_string() for key in self.defs.resolve_asset_graph().get_all_asset_keys()}

    def deps(self, key: str) -> set[str]:
        node = self.defs.resolve_asset_graph().get(dg.AssetKey.from_user_string(key))
        return {parent.to_user_string() for parent in node.parent_keys}

    def tick(self) -> list[dg.RunRequest]:
        sensor = self.defs.resolve_sensor_def("git_branches")
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            asset_selection=list(request.asset_selection or []),
            tags=request.tags,
            instance=self.instance,
            raise_on_error=False,
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        self.runs[request.tags["hub"], request.tags["env"]] = result
        return result

    def released(self, hub: str, env: str) -> dict:
        [event] = [
            e.materialization
            for e in self.runs[hub, env].all_events
            if e.is_step_materialization and e.materialization.asset_key == dg.AssetKey([hub, env])
        ]
        return {k: v.value for k, v in event.metadata.items()}


@pytest.fixture
def cluster_env(k8s_cluster, chart_cache, monkeypatch) -> None:
    for name, value in k8s_cluster.helm_env().items():
        monkeypatch.setenv(name, value)


def hub_name() -> str:
    """A hub name of its own per test: its releases' namespaces (`<hub>-<env>`) are new on the shared cluster."""
    return f"h{uuid.uuid4().hex[:8]}"


def with_chart(builder: RepoBuilder) -> RepoBuilder:
    shutil.copytree(PROJECT_ROOT / "chart", builder.path / "chart", ignore=shutil.ignore_patterns("charts"))
    return builder


def test_a_hubploy_12_hub_goes_develop_staging_prod_through_sensor_gate_and_checks(
    repo_builder: RepoBuilder, cluster_env
):
    """A hubploy 1.2 repository: no `images` block (the image pinned in config/common.yaml), three environments.

    The hub has no image asset; each environment is requested by the sensor only once the one before it was
    healthy (its checks ran in the run before), and each release deploys the pinned image.
    """
    hub = hub_name()
    with_chart(repo_builder).commit(
        "a hubploy 1.2 repository",
        {
            CHAIN_FILE: THREE,
            f"hubs/{hub}/hubploy.yaml": f"# hubploy 1.2: no images block\nchart: chart\n{HEALTH}",
            f"hubs/{hub}/config/common.yaml": PINNED,
        },
    )
    for branch in ("develop", "prod"):
        repo_builder.branch(branch)
    deployer = Deployer(repo_builder.path)
    assert deployer.keys() == {f"{hub}/develop", f"{hub}/staging", f"{hub}/prod"}, "no image asset"
    assert deployer.deps(f"{hub}/develop") == set()
    assert deployer.deps(f"{hub}/staging") == {f"{hub}/develop"}
    assert deployer.deps(f"{hub}/prod") == {f"{hub}/staging"}

    sha = repo_builder.repo.head.commit.hexsha
    for env in ("develop", "staging", "prod"):
        [request] = deployer.tick()
        assert (request.tags["hub"], request.tags["env"], request.tags["git_sha"]) == (hub, env, sha)
        assert request.tags["branch"] == env and request.asset_selection == [dg.AssetKey([hub, env])]
        deployer.run(request)
        released = deployer.released(hub, env)
        assert released["namespace"] == f"{hub}-{env}"
        assert released["image"] == "quay.io/jupyter/base-notebook:2024-07-01", "the image its values pin"
        assert Helm().status(f"{hub}-{env}", f"{hub}-{env}")["info"]["status"] == "deployed"
        if env != "develop":
            before = {"staging": "develop", "prod": "staging"}[env]
            assert released["promoted_from_run"] == deployer.runs[hub, before].run_id
    assert deployer.tick() == []


def test_a_chain_of_one_environment_builds_and_deploys_without_a_gate(repo_builder: RepoBuilder, cluster_env, registry):
    """One environment, `live` on branch `main`, and a hub with an image: the first push builds and deploys."""
    hub = hub_name()
    image = f"{registry.host}/tests/{hub}"
    with_chart(repo_builder).commit(
        "one environment",
        {
            CHAIN_FILE: "environments:\n- name: live\n  branch: main\n",
            f"hubs/{hub}/hubploy.yaml": f"images:\n  image_name: {image}\nchart: chart\n{HEALTH}",
            f"hubs/{hub}/image/Dockerfile": "FROM scratch\nLABEL hub=one-environment\n",
            f"hubs/{hub}/config/common.yaml": "jupyterhub: {}\n",
        },
    )
    repo_builder.branch("main")
    deployer = Deployer(repo_builder.path)
    assert deployer.keys() == {f"{hub}/image", f"{hub}/live"}
    assert deployer.deps(f"{hub}/live") == {f"{hub}/image"}
    [request] = deployer.tick()
    assert request.tags["env"] == "live" and request.tags["branch"] == "main"
    assert request.asset_selection == [dg.AssetKey([hub, "image"]), dg.AssetKey([hub, "live"])]
    deployer.run(request)
    released = deployer.released(hub, "live")
    assert released["image"].startswith(f"{image}:") and "promoted_from_run" not in released
    assert Helm().status(f"{hub}-live", f"{hub}-live")["info"]["status"] == "deployed"
    assert deployer.tick() == []
