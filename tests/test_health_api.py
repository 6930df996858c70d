"""The JupyterHub health checks against a real hub (tests/services/jupyterhub.py): API, outage, test user, token."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import jupyter_server
import jupyterhub
import pytest
from services.http_stub import serving
from services.jupyterhub import FAILING_SPAWN_PREFIX, JupyterHubServer

from hubploy_dagster.health_api import DEFAULT_TEST_USER, CheckOutcome, check_hub_api, check_test_user

pytestmark = pytest.mark.integration


@pytest.fixture
def hub(jupyterhub_server: JupyterHubServer, caplog: pytest.LogCaptureFixture) -> Iterator[JupyterHubServer]:
    """The session hub, running, with no test user; afterwards no log line of the test holds the token."""
    jupyterhub_server.start()  # a no-op unless an earlier test left it stopped
    caplog.set_level(logging.DEBUG)
    _api(jupyterhub_server, "DELETE", f"/users/{DEFAULT_TEST_USER}")  # 204 or 404: a clean start
    yield jupyterhub_server
    assert jupyterhub_server.token not in caplog.text


def _api(hub: JupyterHubServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{hub.url}/hub/api{path}", headers={"Authorization": f"token {hub.token}"}, timeout=60, **kwargs
    )


def assert_token_free(outcome: CheckOutcome, token: str) -> None:
    """The canary: the token is nowhere in what a check returns (description, metadata, reprs)."""
    assert token not in outcome.description
    assert token not in json.dumps(asdict(outcome), default=str)
    assert token not in repr(outcome)


def _wait_ready(hub: JupyterHubServer, username: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server = _api(hub, "GET", f"/users/{username}").json().get("servers", {}).get("")
        if server and server["ready"]:
            return server
        time.sleep(0.2)
    raise AssertionError(f"{username}'s server did not become ready in {seconds}s")


class UserWatcher:
    """Polls the hub's REST API for the test user while a check runs: independent evidence of a real server.

    An admin's view of a server includes the spawner state, here the local process id. Whenever the REST API
    names a pid, the watcher looks whether that process is a live `jupyterhub-singleuser`. (Watching for
    `ready` alone would race: a fast server is ready only for the few milliseconds the check's probe takes.)
    """

    def __init__(self, hub: JupyterHubServer, username: str):
        self.hub = hub
        self.username = username
        self.phases: set[str] = set()
        self.live_server_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            response = _api(self.hub, "GET", f"/users/{self.username}")
            server = response.json().get("servers", {}).get("") if response.status_code == 200 else None
            if server:
                self.phases.add("ready" if server.get("ready") else f"pending {server.get('pending')}")
                pid = (server.get("state") or {}).get("pid")
                if pid and _is_singleuser(pid):
                    self.live_server_pids.add(pid)
            self._stop.wait(0.05)

    def __enter__(self) -> UserWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _is_singleuser(pid: int) -> bool:
    try:
        return b"jupyterhub-singleuser" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_hub_api_passes_and_reports_the_version(hub: JupyterHubServer) -> None:
    outcome = check_hub_api(hub.url)

    assert outcome.passed, outcome.description
    assert outcome.metadata["version"] == jupyterhub.__version__
    assert outcome.metadata["attempts"] == 1
    assert outcome.metadata["url"] == hub.url
    assert jupyterhub.__version__ in outcome.description and hub.url in outcome.description
    assert_token_free(outcome, hub.token)


def test_checks_fail_clearly_while_the_hub_is_down_and_pass_again_after(hub: JupyterHubServer) -> None:
    hub.stop()
    try:
        assert hub.pids() == [], "stop() left processes of the hub behind"
        started = time.monotonic()
        api = check_hub_api(hub.url + "/", timeout_seconds=2, retries=1, backoff_seconds=0.1)
        user = check_test_user(hub.url, hub.token, timeout_seconds=5, retries=1, backoff_seconds=0.1)
        assert time.monotonic() - started < 10
    finally:
        hub.start()

    assert not api.passed
    assert api.metadata["attempts"] == 2 and len(api.metadata["errors"]) == 2
    assert f"{hub.url}/hub/api" in api.description
    assert "connection refused" in api.description
    assert not user.passed
    assert "connection refused" in user.description and hub.url in user.description
    assert user.metadata["attempts"] == 2
    for outcome in (api, user):
        assert_token_free(outcome, hub.token)

    again = check_hub_api(hub.url)
    assert again.passed, again.description


def test_test_user_server_really_starts_and_stops_and_the_user_is_deleted(hub: JupyterHubServer) -> None:
    with UserWatcher(hub, DEFAULT_TEST_USER) as watcher:
        outcome = check_test_user(hub.url, hub.token, timeout_seconds=120, retries=0)

    assert outcome.passed, outcome.description
    assert_token_free(outcome, hub.token)
    # While the check ran, the REST API named the process of a live single-user server; that server answered
    # the check with jupyter_server's version; and the process is gone now.
    assert watcher.live_server_pids, f"the REST API never named a live server process (saw {watcher.phases})"
    assert "pending spawn" in watcher.phases or "ready" in watcher.phases
    assert outcome.metadata["server_version"] == jupyter_server.__version__
    assert not any(_is_singleuser(pid) for pid in watcher.live_server_pids)
    assert outcome.metadata["hub_version"] == jupyterhub.__version__
    assert outcome.metadata["leftover_removed"] is False
    assert outcome.metadata["attempts"] == 1 and outcome.metadata["errors"] == []
    assert outcome.metadata["server_start_seconds"] > 0 and outcome.metadata["server_stop_seconds"] >= 0
    # Afterwards: no user, no single-user process.
    assert _api(hub, "GET", f"/users/{DEFAULT_TEST_USER}").status_code == 404
    assert hub.singleuser_pids() == []


def test_leftover_test_user_with_a_running_server_is_cleaned_up_first(hub: JupyterHubServer) -> None:
    # What an interrupted earlier check leaves: the user, with its server running.
    assert _api(hub, "POST", f"/users/{DEFAULT_TEST_USER}").status_code == 201
    assert _api(hub, "POST", f"/users/{DEFAULT_TEST_USER}/server").status_code in (201, 202)
    _wait_ready(hub, DEFAULT_TEST_USER)
    assert len(hub.singleuser_pids()) == 1

    outcome = check_test_user(hub.url, hub.token, timeout_seconds=120, retries=0)

    assert outcome.passed, outcome.description
    assert outcome.metadata["leftover_removed"] is True
    assert outcome.metadata["server_version"] == jupyter_server.__version__
    assert _api(hub, "GET", f"/users/{DEFAULT_TEST_USER}").status_code == 404
    assert hub.singleuser_pids() == []
    assert_token_free(outcome, hub.token)


def test_wrong_token_fails_at_once_with_a_clear_message_without_the_token(hub: JupyterHubServer) -> None:
    wrong = "hubploy-canary-wrong-" + hub.token[-12:][::-1]
    started = time.monotonic()
    outcome = check_test_user(hub.url, wrong, timeout_seconds=30, retries=2)

    assert time.monotonic() - started < 5, "a refused token must not be retried"
    assert not outcome.passed
    assert outcome.metadata["attempts"] == 1
    assert "HTTP 403" in outcome.description and "token was refused" in outcome.description
    assert f"{hub.url}/hub/api/users/{DEFAULT_TEST_USER}" in outcome.description
    assert_token_free(outcome, wrong)
    assert_token_free(outcome, hub.token)
    # Nothing was created with the wrong token.
    assert _api(hub, "GET", f"/users/{DEFAULT_TEST_USER}").status_code == 404


@pytest.mark.parametrize("when", ["early", "late"])
def test_failed_spawn_reports_the_hubs_reason_and_leaves_no_user(hub: JupyterHubServer, when: str) -> None:
    """Early: the start request itself fails (HTTP 500). Late: it answered 202 and the spawn fails afterwards."""
    username = f"{FAILING_SPAWN_PREFIX}-{when}"
    outcome = check_test_user(hub.url, hub.token, username=username, timeout_seconds=60, retries=1, backoff_seconds=0.1)

    assert not outcome.passed
    assert outcome.metadata["attempts"] == 2
    if when == "late":
        assert f"the server of {username} failed to start: Spawn failed:" in outcome.description
    assert "spawn refused by the test hub's pre_spawn_hook" in outcome.description
    assert "test user removed" in outcome.description  # the cleanup after the failure, reported
    assert _api(hub, "GET", f"/users/{username}").status_code == 404
    assert hub.singleuser_pids() == []
    assert_token_free(outcome, hub.token)


def test_a_hub_that_accepts_connections_but_never_answers_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        outcome = check_hub_api(url, timeout_seconds=0.5, retries=1, backoff_seconds=0.1)
        assert time.monotonic() - started < 5

    assert not outcome.passed
    assert outcome.description.endswith(f"GET {url}/hub/api: no answer within 0.5s")
    assert outcome.metadata["attempts"] == 2


# A broken "hub" that echoes the request's headers (the token among them) in its error pages: the check gets as
# far as creating the user, then starting the server, reading spawn progress and the cleanup all fail with the
# echo. The token must be masked everywhere even though the server itself put it there.
class _EchoHandler(BaseHTTPRequestHandler):
    user_created = False

    def log_message(self, format: str, *args: object) -> None:
        return

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _echo(self) -> None:
        self._answer(500, {"status": 500, "message": f"boom, you sent {dict(self.headers)}"})

    def do_GET(self) -> None:
        if self.path == "/hub/api":
            self._answer(200, {"version": "0.0.0-echo"})
        elif self.path == f"/hub/api/users/{DEFAULT_TEST_USER}" and not type(self).user_created:
            self._answer(404, {"status": 404, "message": "Not Found"})
        else:
            self._echo()

    def do_POST(self) -> None:
        if self.path == f"/hub/api/users/{DEFAULT_TEST_USER}":
            type(self).user_created = True
            self._answer(201, {"name": DEFAULT_TEST_USER})
        else:
            self._echo()

    do_DELETE = _echo


@pytest.fixture
def echo_url() -> Iterator[str]:
    with serving(type("EchoHandler", (_EchoHandler,), {})) as url:  # its own user_created flag
        yield url


def test_a_hub_that_echoes_the_token_has_it_masked(echo_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "hubploy-canary-echo-0123456789abcdef"

    outcome = check_test_user(echo_url, token, timeout_seconds=5, retries=0)

    assert not outcome.passed
    assert f"POST {echo_url}/hub/api/users/{DEFAULT_TEST_USER}/server answered HTTP 500" in outcome.description
    assert "spawn progress: GET" in outcome.description and "cleanup failed" in outcome.description
    assert "'Authorization': 'token [REDACTED]'" in outcome.description
    assert outcome.metadata["attempts"] == 1
    assert_token_free(outcome, token)
    assert "cleanup failed" in caplog.text
    assert token not in caplog.text
