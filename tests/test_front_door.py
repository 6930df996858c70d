"""Who may deploy: the front door of deploy/front-door in front of real Dagster webservers.

A code server on a two-hub repository, a read-write webserver and a `--read-only` one (no daemon: a launched
run stays queued, so nothing is deployed), and in front of them the shipped nginx template and oauth2-proxy
configuration with a real OpenID Connect sign-in (tests/services/front_door.py). Nobody without a session
reaches a webserver; a viewer reaches only the read-only one; an operator launches, and the access log names
who did what.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from services.cluster import tool
from services.dagster_dev import LOCATION
from services.dagster_split import SplitDagster, SplitLauncher
from services.front_door import FRONT_DOOR, TEMPLATE_VARIABLE, FrontDoor, front_door
from services.repos import CHART_FILES, PROJECT_ROOT, RepoBuilder, hub_files

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


# -- the shipped configurations: only the front door listens beyond loopback or the pod network ------------------

DEPLOY = PROJECT_ROOT / "deploy"


def template_variables() -> set[str]:
    return set(TEMPLATE_VARIABLE.findall((FRONT_DOOR / "hubploy.conf.template").read_text()))


def option(command: list[str], *names: str) -> str:
    """The value after the first of `names` in a command line (`--name value` or `--name=value`)."""
    for index, arg in enumerate(command):
        for name in names:
            if arg == name:
                return command[index + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {command}")


def test_docker_host_publishes_only_the_front_door():
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert all(s["network_mode"] == "host" and "ports" not in s for s in services.values()), "host network only"
    code, webserver, read_only = services["code"], services["webserver"], services["webserver-read-only"]
    assert option(code["command"], "--host") == "127.0.0.1"
    workspace = yaml.safe_load((DEPLOY / "docker" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert (workspace["host"], str(workspace["port"])) == ("127.0.0.1", option(code["command"], "--port"))
    listening = {
        name: f"{option(service['command'], '-h')}:{option(service['command'], '-p')}"
        for name, service in services.items()
        if service.get("command", [""])[0] == "dagster-webserver"
    }
    assert all(address.startswith("127.0.0.1:") for address in listening.values()), listening
    assert "--read-only" in read_only["command"] and "--read-only" not in webserver["command"]
    assert option(services["oauth2-proxy"]["command"], "--http-address").startswith("127.0.0.1:")

    door = services["front-door"]["environment"]
    assert set(door) == template_variables(), "the front door sets exactly the template's variables"
    assert door["HUBPLOY_WEBSERVER"] == listening["webserver"]
    assert door["HUBPLOY_WEBSERVER_READ_ONLY"] == listening["webserver-read-only"]
    assert door["HUBPLOY_OAUTH2_PROXY"] == option(services["oauth2-proxy"]["command"], "--http-address")
    mounts = services["front-door"]["volumes"]
    assert "/dev/null:/etc/nginx/conf.d/default.conf:ro" in mounts, "the image's default site stays off"


def test_kubernetes_reaches_the_webservers_only_through_the_front_door(k8s_cluster):
    values = yaml.safe_load((DEPLOY / "kubernetes" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"] is False
    env = k8s_cluster.kubectl_env()
    kubectl = tool("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(FRONT_DOOR)], env=env, check=True, capture_output=True, text=True
    ).stdout
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered)}

    assert all(o["spec"]["type"] == "ClusterIP" for (kind, _), o in objects.items() if kind == "Service")
    ingress = objects["Ingress", "hubploy"]
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"hubploy-front-door"} and [k for k, _ in objects].count("Ingress") == 1
    (nginx,) = objects["Deployment", "hubploy-front-door"]["spec"]["template"]["spec"]["containers"]
    door = {e["name"]: e["value"] for e in nginx["env"]}
    assert set(door) == template_variables()
    # the Services of Dagster's chart for release `dagster` (helm/dagster/templates/helpers/_helpers.tpl)
    port = values["dagsterWebserver"]["service"]["port"]
    assert (door["HUBPLOY_WEBSERVER"], door["HUBPLOY_WEBSERVER_READ_ONLY"]) == (
        f"dagster-webserver:{port}",
        f"dagster-webserver-read-only:{port}",
    )
    policy = objects["NetworkPolicy", "hubploy-webservers"]["spec"]
    selected = {tuple(e["values"]) for e in policy["podSelector"]["matchExpressions"] if e["key"] == "component"}
    assert selected == {("dagster-webserver", "dagster-webserver-read-only")}
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": nginx_labels(objects)}}]}]

    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: hubploy-front-door}\n"
    subprocess.run([kubectl, "apply", "-f", "-"], input=namespace, env=env, check=True, capture_output=True, text=True)
    applied = subprocess.run(
        [kubectl, "apply", "-n", "hubploy-front-door", "--server-side", "-f", "-"],
        input=rendered,
        env=env,
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr


def nginx_labels(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return objects["Deployment", "hubploy-front-door"]["spec"]["template"]["metadata"]["labels"]
