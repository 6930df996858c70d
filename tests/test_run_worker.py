"""A run worker (`dagster api execute_run ARGS`, as the Docker and Kubernetes run launchers start it) builds the
definitions of its run's hubs only, and the run's asset job is still there to execute."""

from __future__ import annotations

import base64
import json
import sys
import uuid
import zlib
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from services.repos import RepoBuilder

from hubploy_dagster.definitions import build_definitions
from hubploy_dagster.keys import release_key
from hubploy_dagster.run_worker import hubs_of_this_run

ASSET_JOB = "__ASSET_JOB"


def worker_args(instance: dg.DagsterInstance, run_id: str) -> str:
    """What the run launchers serialize for `dagster api execute_run` (dagster's own classes, as they do)."""
    pointer = ModuleCodePointer("hubploy_dagster.definitions", "defs", working_directory=None)
    origin = JobPythonOrigin(ASSET_JOB, RepositoryPythonOrigin(sys.executable, pointer))
    return dg.serialize_value(ExecuteRunArgs(job_origin=origin, run_id=run_id, instance_ref=instance.get_ref()))


@pytest.fixture
def instance(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def add_run(instance: dg.DagsterInstance, *keys: dg.AssetKey) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name=ASSET_JOB, run_id=run_id, asset_selection=frozenset(keys)))
    return run_id


def test_a_run_worker_names_the_hubs_of_its_run(instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch):
    run_id = add_run(instance, dg.AssetKey(["alpha", "image"]), release_key("alpha", "staging"))
    args = worker_args(instance, run_id)
    assert hubs_of_this_run(["dagster", "api", "execute_run", args]) == {"alpha"}
    compressed = base64.b64encode(zlib.compress(args.encode())).decode()
    assert hubs_of_this_run(["dagster", "api", "execute_run", "--compressed-input-json", compressed]) == {"alpha"}
    monkeypatch.setenv("DAGSTER_EXECUTE_RUN_ARGS", args)
    assert hubs_of_this_run(["dagster", "api", "execute_run"]) == {"alpha"}, "the launchers' variable"
    two = add_run(instance, release_key("alpha", "prod"), release_key("beta", "prod"))
    assert hubs_of_this_run(["dagster", "api", "execute_run", worker_args(instance, two)]) == {"alpha", "beta"}


def test_anything_else_loads_every_hub(instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]):
    assert hubs_of_this_run(["dagster", "code-server", "start"]) is None
    assert hubs_of_this_run(["dagster", "api", "execute_run", worker_args(instance, add_run(instance))]) is None
    assert hubs_of_this_run(["dagster", "api", "execute_run", "not json"]) is None
    assert "loading every hub (the run's hubs could not be read: JSONDecodeError)" in capsys.readouterr().err
    canary = "postgresql://deployer:CANARY-s3cret@db/dagster"
    args = json.dumps({"__class__": "ExecuteRunArgs", "pipeline_run_id": "x", "instance_ref": {"__class__": canary}})
    assert hubs_of_this_run(["dagster", "api", "execute_run", args]) is None
    assert "CANARY" not in capsys.readouterr().err, "an error's text never reaches the worker's output"


def test_the_narrow_definitions_execute_the_runs_selection(two_hub_repo: RepoBuilder):
    defs = build_definitions(str(two_hub_repo.path), only_hubs={"alpha"})
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"alpha/image", "alpha/staging", "alpha/prod"}
    job = defs.resolve_implicit_global_asset_job_def()
    subset = job.get_subset(asset_selection={dg.AssetKey(["alpha", "image"]), release_key("alpha", "staging")})
    assert {node.name for node in subset.nodes_in_topological_order} == {"alpha__image", "alpha__releases"}
