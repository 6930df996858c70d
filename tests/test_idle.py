"""wait_for_idle against a real JupyterHub (tests/services/jupyterhub.py) with a real user server.

The servers counted are real `jupyterhub-singleuser` processes, started and stopped through the hub's REST
API; only the clock is replaced, where a test is about hours of waiting (the hub still answers every poll).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from services.http_stub import serving
from services.jupyterhub import JupyterHubServer
from services.lab import Lab
from services.repos import CHART_FILES, RepoBuilder, hub_files

from hubploy_dagster.assets import wait_for_users
from hubploy_dagster.chain import default_chain
from hubploy_dagster.config import IdleWait
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.history import deploy_history
from hubploy_dagster.idle import HubApiError, NotIdleError, active_servers, duration_text, wait_for_idle
from hubploy_dagster.local_cluster import free_port
from hubploy_dagster.rollout import hub_rollout
from hubploy_dagster.secrets import Sops
from hubploy_dagster.session import HubSession

pytestmark = pytest.mark.integration

USER = "idle-wait-student"


def _api(hub: JupyterHubServer, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method, f"{hub.url}/hub/api{path}", headers={"Authorization": f"token {hub.token}"}, timeout=60
    )


def _server(hub: JupyterHubServer) -> dict[str, Any] | None:
    response = _api(hub, "GET", f"/users/{USER}")
    return response.json().get("servers", {}).get("") if response.status_code == 200 else None


def _stop_server(hub: JupyterHubServer) -> None:
    """Ask the hub to stop the user's server and wait until it no longer lists it."""
    _api(hub, "DELETE", f"/users/{USER}/server")
    deadline = time.monotonic() + 60
    while _server(hub) is not None:
        assert time.monotonic() < deadline, "the user's server did not stop in 60s"
        time.sleep(0.2)


@pytest.fixture
def hub(jupyterhub_server: JupyterHubServer, caplog: pytest.LogCaptureFixture) -> Iterator[JupyterHubServer]:
    """The session hub with no server running; afterwards no log line of the test holds the token."""
    jupyterhub_server.start()  # a no-op unless an earlier test left it stopped
    caplog.set_level(logging.DEBUG)
    assert active_servers(jupyterhub_server.url, jupyterhub_server.token) == 0, "a server of another test runs"
    yield jupyterhub_server
    if _server(jupyterhub_server) is not None:
        _stop_server(jupyterhub_server)
    _api(jupyterhub_server, "DELETE", f"/users/{USER}")
    assert jupyterhub_server.token not in caplog.text


@pytest.fixture
def running(hub: JupyterHubServer) -> JupyterHubServer:
    """The hub with one real user server running (a student still at work)."""
    assert _api(hub, "POST", f"/users/{USER}").status_code in (201, 409)
    assert _api(hub, "POST", f"/users/{USER}/server").status_code in (201, 202)
    deadline = time.monotonic() + 60
    while not (_server(hub) or {}).get("ready"):
        assert time.monotonic() < deadline, f"{USER}'s server did not become ready in 60s:\n{hub.log_tail()}"
        time.sleep(0.2)
    assert len(hub.singleuser_pids()) == 1
    return hub


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the wait slept {seconds}s where it should have ended at once")


class Lines(list[str]):
    """The `log` of a wait: every line it wrote."""

    def __call__(self, line: str) -> None:
        self.append(line)


def test_it_waits_until_the_running_server_stops(running: JupyterHubServer) -> None:
    log = Lines()
    stopper = threading.Timer(3.0, _stop_server, args=[running])
    started = time.monotonic()
    stopper.start()
    try:
        outcome = wait_for_idle(
            running.url, running.token, IdleWait(max_active_servers=0, max_wait="60s", poll="1s", then="give-up"), log
        )
    finally:
        stopper.join(60)
    seconds = time.monotonic() - started

    assert 3 <= seconds < 30
    assert running.singleuser_pids() == []  # really stopped, and only then idle
    assert not outcome.deployed_anyway
    assert outcome.first_count == 1 and outcome.last_count == 0 and outcome.highest_count == 1
    assert outcome.polls >= 3 and outcome.waited_seconds >= 3
    assert log[0] in {
        f"1 user server running on {running.url}, waiting until at most 0 ({left} left)" for left in ("1m", "59s")
    }
    # One line while the count stays 1, one when it changes to 0.
    assert sum("1 user server running" in line for line in log) == 1
    assert log[-1].startswith(f"0 user servers running on {running.url} (at most 0 wanted): deploying after waiting ")
    metadata = outcome.metadata()
    assert metadata["idle_servers_at_start"] == 1 and metadata["idle_servers_at_deploy"] == 0
    assert metadata["idle_wait_outcome"] == "idle" and metadata["idle_wait_seconds"] >= 3


def test_an_idle_hub_deploys_at_once(hub: JupyterHubServer) -> None:
    log = Lines()
    outcome = wait_for_idle(hub.url + "/", hub.token, IdleWait(), log, sleep=no_sleep)

    assert outcome.polls == 1 and outcome.last_count == 0 and not outcome.deployed_anyway
    assert log == [f"0 user servers running on {hub.url} (at most 0 wanted): deploying"]


def test_give_up_names_the_url_and_the_count(running: JupyterHubServer) -> None:
    log = Lines()
    started = time.monotonic()
    with pytest.raises(NotIdleError) as raised:
        wait_for_idle(running.url, running.token, IdleWait(max_wait="3s", poll="1s", then="give-up"), log)

    assert 3 <= time.monotonic() - started < 20
    assert str(raised.value) == (
        f"still 1 user server on {running.url} after 3s (at most 0 wanted): not deployed (wait_for_idle.then: give-up)"
    )
    assert log == [f"1 user server running on {running.url}, waiting until at most 0 (3s left)"]
    assert len(running.singleuser_pids()) == 1  # the wait never touches the users' servers


def test_then_deploy_deploys_anyway_after_max_wait_with_progress_every_ten_minutes(running: JupyterHubServer) -> None:
    """Two hours of waiting on a test clock that the sleeps advance: every poll still asks the real hub."""
    moment = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
    slept: list[float] = []

    def clock() -> datetime:
        return moment

    def sleep(seconds: float) -> None:
        nonlocal moment
        slept.append(seconds)
        moment += timedelta(seconds=seconds)

    log = Lines()
    wait = IdleWait(max_active_servers=0, max_wait="2h", poll="5m", then="deploy")
    outcome = wait_for_idle(running.url, running.token, wait, log, clock=clock, sleep=sleep)

    assert outcome.deployed_anyway
    assert outcome.polls == 25 and slept == [300.0] * 24  # 0, 5m, ..., 2h
    assert outcome.waited_seconds == 7200 and outcome.first_count == outcome.last_count == 1
    assert log[-1] == (
        f"1 user server running on {running.url}, still more than 0 after 2h: deploying anyway (wait_for_idle.then: deploy)"
    )
    progress = log[:-1]
    assert len(progress) == 12  # at 0, 10m, ..., 1h50m: the count never changed
    assert progress[0] == f"1 user server running on {running.url}, waiting until at most 0 (2h left)"
    assert progress[1].endswith("(1h50m left)") and progress[-1].endswith("(10m left)")
    assert outcome.metadata()["idle_wait_outcome"] == "deployed anyway"
    assert len(running.singleuser_pids()) == 1


def test_max_active_servers_above_the_count_is_idle(running: JupyterHubServer) -> None:
    outcome = wait_for_idle(running.url, running.token, IdleWait(max_active_servers=1), Lines(), sleep=no_sleep)

    assert outcome.last_count == 1 and not outcome.deployed_anyway


def test_a_wrong_token_fails_at_once_without_the_token(hub: JupyterHubServer) -> None:
    canary = "hubploy-canary-idle-" + hub.token[-12:][::-1]
    log = Lines()
    started = time.monotonic()
    with pytest.raises(HubApiError) as raised:
        wait_for_idle(hub.url, canary, IdleWait(max_wait="1h"), log, sleep=no_sleep)

    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert f"GET {hub.url}/hub/api/users?state=active" in message and "HTTP 403" in message
    assert "token was refused" in message
    assert canary not in message and hub.token not in message
    assert log == []


def test_the_token_is_in_no_log_line_nor_error(running: JupyterHubServer, caplog: pytest.LogCaptureFixture) -> None:
    """The fixture's token is canary-like: it must appear in nothing a wait writes or raises."""
    log = Lines()
    with pytest.raises(NotIdleError) as raised:
        wait_for_idle(running.url, running.token, IdleWait(max_wait="2s", poll="1s"), log)
    deploy = wait_for_idle(running.url, running.token, IdleWait(max_wait="1s", poll="1s", then="deploy"), log)

    assert log and all(running.token not in line for line in log)
    assert running.token not in str(raised.value) and running.token not in repr(raised.value)
    assert running.token not in repr(deploy) and running.token not in str(deploy.metadata())
    assert running.token not in caplog.text


class _EchoHandler(BaseHTTPRequestHandler):
    """A broken "hub" whose error page echoes the request's headers, the token among them."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        body = f'{{"status": 500, "message": "boom, you sent {dict(self.headers)}"}}'.encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo_url() -> Iterator[str]:
    with serving(_EchoHandler) as url:
        yield url


def test_a_hub_that_echoes_the_token_has_it_masked_and_is_asked_again(
    echo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "hubploy-canary-idle-echo-0123456789abcdef"
    log = Lines()
    with pytest.raises(NotIdleError) as raised:
        wait_for_idle(echo_url, canary, IdleWait(max_wait="2s", poll="1s"), log)

    message = str(raised.value)
    assert message.startswith(f"cannot ask {echo_url}: GET {echo_url}/hub/api/users?state=active")
    assert "answered HTTP 500" in message and "[REDACTED]" in message
    assert message.endswith("after 2s (at most 0 wanted): not deployed (wait_for_idle.then: give-up)")
    assert len(log) == 1 and "[REDACTED]" in log[0]  # the same error is said once
    assert all(canary not in line for line in log) and canary not in message and canary not in caplog.text


def test_an_unreachable_hub_deploys_anyway_when_configured() -> None:
    """A broken hub cannot keep its fix from deploying: with `then: deploy`, not being answered is not busy."""
    log = Lines()
    outcome = wait_for_idle(
        f"http://127.0.0.1:{free_port()}", "hubploy-canary-x", IdleWait(max_wait="1s", poll="1s", then="deploy"), log
    )

    assert outcome.deployed_anyway and outcome.first_count is None and outcome.last_count is None
    assert "connection refused" in log[-1] and log[-1].endswith("deploying anyway (wait_for_idle.then: deploy)")
    assert "idle_servers_at_deploy" not in outcome.metadata()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45, "45s"), (60, "1m"), (185, "3m05s"), (7200, "2h"), (6720, "1h52m")]
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


# The release asset's side (no cluster needed): without the hub's URL or its token, a configured wait fails the
# run before anything is deployed, naming the hub, the environment and the key.
WAITING = "  staging:\n    {url}rollout: {{wait_for_idle: {{max_wait: 1m}}}}\n"


def _session(repo_builder: RepoBuilder, url: str, secrets: dict[str, str]) -> HubSession:
    environments = "environments:\n" + WAITING.format(url=f"url: {url}\n    " if url else "")
    files = {**CHART_FILES, **hub_files("alpha", extra=f"secrets: {{encryption: external}}\n{environments}"), **secrets}
    sha = repo_builder.commit("alpha waits for idle", files)
    return HubSession.at(repo_builder.open(), sha, "alpha", "staging", Sops(), print)


def _context() -> Any:
    return SimpleNamespace(log=SimpleNamespace(info=print, warning=print))


def test_the_release_needs_the_hubs_url_to_wait(repo_builder: RepoBuilder) -> None:
    session = _session(repo_builder, "", {})
    wait = hub_rollout(default_chain(), session.hub, "staging").wait_for_idle
    assert wait is not None and wait.max_wait == "1m"

    with pytest.raises(ConfigError) as raised:
        wait_for_users(_context(), session, wait)

    message = str(raised.value)
    assert message.startswith("hubs/alpha/hubploy.yaml@") and ": environments.staging.url: " in message
    assert "wait_for_idle is set for hub alpha in staging" in message and message.endswith("needs its URL")


def test_the_release_needs_the_admin_token_to_wait(repo_builder: RepoBuilder) -> None:
    secrets = {"hubs/alpha/secrets/staging.yaml": "jupyterhub: {hub: {services: {}}}\n"}
    session = _session(repo_builder, "http://127.0.0.1:1", secrets)
    wait = hub_rollout(default_chain(), session.hub, "staging").wait_for_idle
    assert wait is not None

    with pytest.raises(ConfigError) as raised:
        wait_for_users(_context(), session, wait)

    message = str(raised.value)
    assert message.startswith("hubs/alpha/secrets/staging.yaml@")
    assert ": jupyterhub.hub.services.hubploy-health.apiToken: " in message
    assert "wait_for_idle is set for hub alpha in staging" in message and "admin service token" in message


def test_the_release_waits_for_the_last_user_to_leave_before_its_upgrade(lab: Lab, running: JupyterHubServer) -> None:
    """On the cluster: the first install has nobody to wait for; the upgrade waits until the student's server
    (a real one on the real hub named as the environment's URL) is stopped part-way, then deploys."""
    idle = "rollout: {wait_for_idle: {max_active_servers: 0, max_wait: 2m, poll: 1s}}"
    environments = lab.environments(staging_url=running.url).replace("staging: {", f"staging: {{{idle}, ")
    lab.configure(environments, token=running.token)
    lab.push_current_image()
    first = lab.materialize("staging")
    assert first.success and first.metadata("staging")["idle_wait"] == "skipped: first install", first.log_text()

    leaving = threading.Timer(3, _stop_server, args=(running,))
    leaving.start()
    upgrade = lab.materialize("staging")
    leaving.join()
    metadata = upgrade.metadata("staging")
    assert upgrade.success and metadata["helm_revision"] == 2
    assert (metadata["idle_servers_at_start"], metadata["idle_servers_at_deploy"]) == (1, 0), metadata
    assert metadata["idle_wait_seconds"] >= 2 and "1 user server running" in upgrade.log_text()
    assert running.token not in upgrade.recorded()
    [latest, _] = deploy_history(lab.instance, "lab", "staging", 2)
    assert "waited" in latest.detail and "for users to leave (idle)" in latest.detail, "history says the release waited"
