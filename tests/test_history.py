"""`hubploy history`: the deploy audit read back from a real Dagster instance (a temporary DAGSTER_HOME).

The deploys are real: helm and the jupyterhub chart on the local control plane (tests/services/lab.py),
recorded by Dagster in a SQLite instance that `hubploy history` opens the way an operator's shell would.
Sensor runs carry the tags the git sensor's run request and the daemon give them.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from services.lab import Lab
from test_health_checks import dead_url

from hubploy_dagster.chain import default_chain
from hubploy_dagster.cli import main
from sensors.git_sensor import build_git_sensor, deploy_request

pytestmark = pytest.mark.integration

AUTHOR = "Test Operator"  # conftest.RepoBuilder commits as this author


@pytest.fixture
def audited(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The lab recording into the persistent instance at a temporary DAGSTER_HOME, as `dagster dev` would."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HUBPLOY_REPO", str(lab.builder.path))
    lab.instance = dg.DagsterInstance.get()
    return lab


def by_sensor(lab: Lab, env: str = "staging") -> dict[str, str]:
    """The tags of a run the git sensor requests and the daemon launches."""
    sha = lab.builder.repo.head.commit.hexsha
    sensor = build_git_sensor(str(lab.builder.path), default_chain())
    return {
        **deploy_request("lab", env, env, sha, env == "staging", "current-context").tags,
        **dg.DagsterRun.tags_for_sensor(sensor),
    }


def history(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["history", *args])
    return result.exit_code, result.stdout, result.stderr


def history_json(*args: str) -> list[dict]:
    code, out, err = history(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_history_lists_releases_promotions_refusals_and_rollbacks(audited: Lab):
    lab = audited
    tag = lab.push_current_image()
    first_sha = lab.builder.repo.head.commit.hexsha
    first = lab.materialize(checks=True, tags=by_sensor(lab))
    second_sha = lab.builder.commit(
        "bigger servers", {"hubs/lab/config/staging.yaml": "jupyterhub:\n  singleuser:\n    memory: {limit: 4G}\n"}
    )
    second = lab.materialize(checks=True, tags=by_sensor(lab))
    prod = lab.materialize("prod", tags={"dagster/from_ui": "true"})  # an operator promotes in the UI
    lab.builder.commit("untested prod change", {"hubs/lab/config/prod.yaml": "jupyterhub: {cull: {timeout: 1}}\n"})
    refused = lab.materialize("prod", tags=by_sensor(lab, "prod"))
    lab.configure(lab.environments(staging_url=dead_url()) + "rollback: on-failure\n")
    broken_sha = lab.builder.repo.head.commit.hexsha
    broken = lab.materialize(checks=True, tags=by_sensor(lab))
    for run in (first, second, prod, refused):
        assert run.success, run.error()
    assert prod.materialized() == ["lab/prod"] and refused.materialized() == []
    assert [h["revision"] for h in lab.history()] == [1, 2, 3, 4], "the broken release was rolled back"

    rows = history_json()
    assert [(r["event"], r["env"]) for r in rows] == [
        ("rollback", "staging"),
        ("release", "staging"),
        ("refused", "prod"),
        ("release", "prod"),
        ("release", "staging"),
        ("release", "staging"),
    ]
    rollback, bad, refusal, promoted, upgrade, install = rows
    assert install == {
        **install,
        "hub": "lab",
        "git_sha": first_sha,
        "author": AUTHOR,
        "image_tag": tag,
        "helm_revision": 1,
        "checks_passed": ["release_deployed", "workloads_ready"],
        "checks_failed": [],
        "rollbacks": [],
        "run_id": first.result.run_id,
        "launched_by": "sensor",
    }
    assert (upgrade["git_sha"], upgrade["helm_revision"], upgrade["run_id"]) == (second_sha, 2, second.result.run_id)
    assert promoted["launched_by"] == "ui" and promoted["helm_revision"] == 1 and promoted["git_sha"] == second_sha
    assert promoted["detail"] == f"promoted from run {second.result.run_id}" and promoted["image_tag"] == tag
    assert refusal["launched_by"] == "sensor" and "never passed its staging checks" in refusal["detail"]
    assert refusal["run_id"] == refused.result.run_id and refusal["author"] == AUTHOR
    assert bad["git_sha"] == broken_sha and bad["helm_revision"] == 3 and bad["checks_failed"] == ["hub_api"]
    assert bad["rollbacks"] == ["revision 3 -> 2 (now revision 4)"]
    assert rollback["run_id"] == broken.result.run_id == bad["run_id"] and rollback["helm_revision"] == 4
    assert rollback["git_sha"] == broken_sha and rollback["detail"] == "failed checks: hub_api"

    assert [r["run_id"] for r in history_json("lab", "--env", "prod")] == [refused.result.run_id, prod.result.run_id]
    assert [r["event"] for r in history_json("--env", "prod", "--limit", "1")] == ["refused"]
    assert history_json("other-hub") == []
    assert len(history_json("lab", "--limit", "2")) == 2

    code, out, _ = history("lab")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:5] == ["TIME", "HUB", "ENV", "EVENT", "SHA"] and len(lines) == 7
    assert "revision 3 -> 2 (now revision 4)" in lines[1] and "sensor" in lines[1]
    assert f"{first_sha[:7]}  {AUTHOR}  {tag}" in lines[-1] and "2 passed" in lines[-1]

    # deploy insights (issue 19): per hub and environment, from the same records
    code, out, _ = history("lab", "--stats", "--json")
    stats = {(s["hub"], s["env"]): s for s in json.loads(out)}
    staging, production = stats[("lab", "staging")], stats[("lab", "prod")]
    assert (staging["deploys"], staging["rollbacks"], staging["failed_runs"]) == (3, 1, 0 if broken.success else 1)
    assert staging["median_deploy_seconds"] > 0 and staging["median_promotion_seconds"] is None
    assert production["deploys"] == 1 and production["median_promotion_seconds"] >= 0
    assert prod.metadata("prod")["promotion_seconds"] >= 0, "a number the UI plots per release"
    code, out, _ = history("--stats")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["HUB", "ENV", "DEPLOYS", "FAILED"]


def test_cli_deploy_is_recorded_as_launched_by_the_cli(audited: Lab):
    lab = audited
    lab.push_current_image()
    args = ["deploy", "lab", "chart", "staging", "--repo", str(lab.builder.path)]
    env = {"SOPS_AGE_KEY_FILE": str(lab.age_key), "HUBPLOY_ACTOR": "ci-bot (alice)"}
    result = CliRunner(env=env).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"lab-staging\t{lab.namespace}\trevision 1\tdeployed\n"
    [row] = history_json("lab")
    sha = lab.builder.repo.head.commit.hexsha
    assert row["launched_by"] == "cli" and row["run_id"] == "" and row["event"] == "release"
    assert row["deployed_by"] == "ci-bot (alice)", "who ran the deploy is recorded"
    assert "cli (ci-bot (alice))" in history("lab")[1].splitlines()[1]
    assert (row["git_sha"], row["author"], row["helm_revision"]) == (sha, AUTHOR, 1)
    assert row["checks_passed"] == [] and row["checks_failed"] == []
    [event] = lab.instance.fetch_materializations(dg.AssetKey(["lab", "staging"]), limit=1).records
    metadata = event.asset_materialization.metadata
    assert metadata["launched_by"].value == "cli" and metadata["commit"].value == sha
    assert "fingerprint" in metadata, "a deploy of exactly the commit tells the sensor what is deployed"


def test_empty_instance_says_so_and_a_missing_dagster_home_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    code, out, _ = history()
    assert code == 0 and out == f"no deploys recorded in the Dagster instance at {tmp_path}\n"
    code, out, _ = history("lab", "--env", "prod")
    assert out == f"no deploys recorded of hub lab in prod in the Dagster instance at {tmp_path}\n"
    assert history_json() == []
    monkeypatch.delenv("DAGSTER_HOME")
    code, _, err = history()
    assert code == 1 and err.startswith("error: DAGSTER_HOME is not set")
