"""Who may deploy: the front door of deploy/front-door in front of real Dagster webservers.

A code server on a two-hub repository, a read-write webserver and a `--read-only` one (no daemon: a launched
run stays queued, so nothing is deployed), and in front of them the shipped nginx template and oauth2-proxy
configuration with a real OpenID Connect sign-in (tests/services/front_door.py). Nobody without a session
reaches a webserver; a viewer reaches only the read-only one; an operator launches, and the access log names
who did what.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from services.dagster_dev import LOCATION
from services.dagster_split import SplitDagster, SplitLauncher
from services.front_door import FrontDoor, front_door
from services.repos import CHART_FILES, RepoBuilder, hub_files

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


def launch_plan(client: httpx.Client) -> httpx.Response:
    """The `plan` job's launch, as the UI's Launchpad sends it."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "plan"}
    variables = {"params": {"selector": selector, "runConfigData": {}}}
    return client.post("/graphql", json={"query": LAUNCH_RUN, "variables": variables})


def launched(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    return response.json()["data"]["launchRun"]


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[SplitDagster, FrontDoor]]:
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-front-door-"))
    repo = RepoBuilder(workdir / "deploy-repo")
    repo.commit("initial", {**CHART_FILES, **hub_files("alpha"), **hub_files("beta")})
    launcher = SplitLauncher(workdir)
    try:
        dagster = launcher.start(
            {"HUBPLOY_REPO": str(repo.path), "XDG_CACHE_HOME": str(workdir / "cache")}, daemon=False
        )
        read_only = dagster.start_webserver("--read-only")
        webservers = (f"127.0.0.1:{dagster.webserver.port}", f"127.0.0.1:{read_only.port}")
        with front_door(workdir / "front-door", *webservers) as door:
            yield dagster, door
    finally:
        for split in launcher.started:
            split.stop()


def test_without_a_session_nothing_reaches_the_webservers(guarded: tuple[SplitDagster, FrontDoor]):
    dagster, door = guarded
    with door.client() as anonymous:
        assert launch_plan(anonymous).status_code == 401
        page = anonymous.get("/", follow_redirects=False)
        assert page.status_code == 302 and httpx.URL(page.headers["location"]).path == "/oauth2/start", page.headers
    with door.client("outsider") as outsider:
        assert outsider.get("/").status_code == 403
    assert dagster.webserver.runs() == []


def test_a_viewer_sees_the_hubs_but_cannot_launch(guarded: tuple[SplitDagster, FrontDoor]):
    dagster, door = guarded
    with door.sign_in("viewer") as viewer:
        assets = viewer.post("/graphql", json={"query": "{ assetNodes { assetKey { path } } }"})
        assert {"/".join(node["assetKey"]["path"]) for node in assets.json()["data"]["assetNodes"]} >= {
            "alpha/staging",
            "beta/prod",
        }
        refused = launched(launch_plan(viewer))
        assert refused["__typename"] == "UnauthorizedError", refused
    assert dagster.webserver.runs() == []
    lines = [line for line in door.access_log_lines() if "user=viewer " in line and "POST /graphql" in line]
    assert lines and all("webserver=hubploy_viewers" in line for line in lines), door.access_log_lines()


def test_an_operator_launches_and_the_access_log_names_them(guarded: tuple[SplitDagster, FrontDoor]):
    dagster, door = guarded
    with door.sign_in("operator") as operator:
        result = launched(launch_plan(operator))
    assert result["__typename"] == "LaunchRunSuccess", result
    run_id = result["run"]["runId"]
    assert [run["runId"] for run in dagster.webserver.runs()] == [run_id]
    launches = [line for line in door.access_log_lines() if "user=operator " in line and "POST /graphql" in line]
    assert launches and all("webserver=hubploy_operators" in line and '" 200 ' in line for line in launches)
