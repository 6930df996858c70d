"""Health checks that talk to a deployed JupyterHub over HTTP, for the asset checks after each release.

`check_hub_api` (`/hub/api` and `/hub/health`, retried while a new hub pod starts) and `check_test_user` (2i2c's
functional check: a test user's real server starts, answers and stops) never raise for an unhealthy hub: each
returns a `CheckOutcome` whose description is the one line an operator reads. The admin token is only sent in
the `Authorization` header, and is scrubbed from every description, metadata value and log line as a last line
of defence (a hub or proxy could echo a request in an error page).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin

import httpx

log = logging.getLogger(__name__)

DEFAULT_TEST_USER = "hubploy-health-check"
# A single request never waits longer, whatever the attempt has left: a hub silent for two minutes stays so.
MAX_REQUEST_SECONDS = 120.0
# Cleanup after a failed attempt gets its own time budget (the attempt's may be spent) within these bounds.
MIN_CLEANUP_SECONDS = 10.0
MAX_CLEANUP_SECONDS = 120.0
# Reading the spawn progress stream only to learn why a spawn failed: the answer is immediate on a real hub.
PROGRESS_READ_SECONDS = 10.0
# Right after a server reports ready, the proxy may need a moment before its route answers.
PROBE_GRACE_SECONDS = 10.0
REDACTED = "[REDACTED]"
REFUSED_HINT = (
    " (the token was refused: is it the hub's admin service token, with scopes admin:users,"
    " admin:servers and access:servers?)"
)


@dataclass(frozen=True)
class CheckOutcome:
    """One line for an operator and the facts (version, attempts, URL, seconds, errors); never a token."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


class _StepFailed(Exception):
    """One step failed; `message` names the request and the reason, `retry` is False if retrying cannot help."""

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.cleanup: str | None = None


def _redact(value: Any, secret: str) -> Any:
    """`value` with `secret` replaced in every string, however deeply nested (`secret` is never empty)."""
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {_redact(str(k), secret): _redact(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secret) for v in value]
    return value


def _json(response: httpx.Response) -> Any:
    """The parsed body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:  # also JSONDecodeError and UnicodeDecodeError
        return None


def _version(response: httpx.Response) -> str | None:
    """The `version` of a JSON body (JupyterHub's and jupyter_server's `/api`), or None."""
    body = _json(response)
    version = body.get("version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


def _error_detail(response: httpx.Response) -> str:
    """JupyterHub's error `message` when the body has one, else the start of the body on one line."""
    body = _json(response)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip():
        return f": {body['message'].strip()}"
    if response.is_redirect and response.headers.get("location"):
        return f" (redirect to {response.headers['location']})"
    text = " ".join(response.text.split())[:200]
    return f": {text}" if text else ""


def _transport_reason(exc: httpx.HTTPError, seconds: float) -> str:
    """A short, operator-readable reason for a request that got no HTTP answer."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out connecting after {seconds:.3g}s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {seconds:.3g}s"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        if "refused" in text.lower():
            return "connection refused"
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return f"host name does not resolve ({text})"
        return f"cannot connect ({text})"
    return f"{type(exc).__name__}: {exc}"


def _request(
    client: httpx.Client, method: str, url: str, *, deadline: float, expect: tuple[int, ...]
) -> httpx.Response:
    """One request within the attempt's deadline; any other status than `expect` is a `_StepFailed`.

    401 and 403 are not worth retrying: the token is wrong or lacks scopes, and will be on the next attempt.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _StepFailed(f"{method} {url}: the attempt ran out of time before this request")
    seconds = min(remaining, MAX_REQUEST_SECONDS)
    try:
        response = client.request(method, url, timeout=seconds)
    except httpx.HTTPError as exc:
        raise _StepFailed(f"{method} {url}: {_transport_reason(exc, seconds)}") from None
    if response.status_code not in expect:
        refused = response.status_code in (401, 403)
        hint = REFUSED_HINT if refused else ""
        raise _StepFailed(
            f"{method} {url} answered HTTP {response.status_code}{_error_detail(response)}{hint}", retry=not refused
        )
    return response


def sleep_backoff(attempt: int, backoff_seconds: float) -> None:
    """Before attempt 2, 3, ...: backoff_seconds, then doubling (capped at a minute).

    Every health check retries this way: each attempt has `timeout_seconds`, up to `retries` more follow a failure.
    """
    if attempt > 1 and backoff_seconds > 0:
        time.sleep(min(backoff_seconds * 2 ** (attempt - 2), 60.0))


def _hub_api_attempt(client: httpx.Client, base: str, deadline: float) -> str:
    """Both endpoints once; returns the hub's version."""
    response = _request(client, "GET", f"{base}/hub/api", deadline=deadline, expect=(200,))
    version = _version(response)
    if version is None:
        snippet = " ".join(response.text.split())[:120]
        raise _StepFailed(f"GET {base}/hub/api answered 200 but not JupyterHub's JSON with a version: {snippet!r}")
    _request(client, "GET", f"{base}/hub/health", deadline=deadline, expect=(200,))
    return version


def check_hub_api(
    url: str, timeout_seconds: float = 30, retries: int = 2, *, backoff_seconds: float = 2.0
) -> CheckOutcome:
    """GET `<url>/hub/api` must answer JSON with a "version", GET `<url>/hub/health` must answer 200.

    `url` is the hub's public URL. Each attempt has `timeout_seconds`; up to `retries` more follow a failed one
    after `backoff_seconds`, doubling. The failure names the URL and the last reason; metadata lists every error.
    """
    base = url.strip().rstrip("/")
    allowed = max(0, retries) + 1
    errors: list[str] = []
    version: str | None = None
    started = time.monotonic()
    with httpx.Client(follow_redirects=False) as client:
        for attempt in range(1, allowed + 1):
            sleep_backoff(attempt, backoff_seconds)
            try:
                version = _hub_api_attempt(client, base, time.monotonic() + timeout_seconds)
                break
            except _StepFailed as failure:
                errors.append(failure.message)
                log.warning("hub API check of %s, attempt %d of %d failed: %s", base, attempt, allowed, failure)
    seconds = round(time.monotonic() - started, 3)
    metadata = {"url": base, "version": version, "attempts": attempt, "seconds": seconds, "errors": errors}
    if version is None:
        description = f"JupyterHub API check failed for {base} after {allowed} attempt(s): {errors[-1]}"
        return CheckOutcome(passed=False, description=description, metadata=metadata)
    after = f" (attempt {attempt} of {allowed})" if attempt > 1 else ""
    log.info("hub API check of %s passed: JupyterHub %s%s", base, version, after)
    description = f"JupyterHub {version} at {base} answers /hub/api and /hub/health{after}"
    return CheckOutcome(passed=True, description=description, metadata=metadata)


def _server_state(user_model: dict[str, Any]) -> dict[str, Any] | None:
    """The default server's model, or None when it is neither running nor pending.

    Hubs list only active servers in `servers`; without the read:servers scope, `server` and `pending` tell.
    """
    servers = user_model.get("servers")
    if isinstance(servers, dict):
        state = servers.get("")
        return state if isinstance(state, dict) else None
    if user_model.get("server") or user_model.get("pending"):
        return {"ready": bool(user_model.get("server")), "pending": user_model.get("pending"), "url": None}
    return None


class _TestUser:
    """The REST API steps of the test-user check, each bounded by a deadline."""

    def __init__(self, client: httpx.Client, base: str, username: str, poll_seconds: float, token: str):
        self.client = client
        self.token = token
        self.base = base
        self.username = username
        self.poll_seconds = poll_seconds
        self.user_url = f"{base}/hub/api/users/{quote(username, safe='')}"

    def _user_model(self, deadline: float) -> dict[str, Any] | None:
        response = _request(self.client, "GET", self.user_url, deadline=deadline, expect=(200, 404))
        if response.status_code == 404:
            return None
        model = _json(response)
        if not isinstance(model, dict):
            raise _StepFailed(f"GET {self.user_url} answered 200 without a user model")
        return model

    def remove_if_present(self, deadline: float) -> bool:
        """Stop the user's server if it runs or is pending, then delete the user; True if the user existed."""
        model = self._user_model(deadline)
        if model is None:
            return False
        if _server_state(model) is not None:
            self.stop_server(deadline)
        _request(self.client, "DELETE", self.user_url, deadline=deadline, expect=(204, 404))
        return True

    def start_server(self, deadline: float) -> dict[str, Any]:
        """Request the default server and wait until the hub reports it ready; returns its server model."""
        try:
            response = _request(self.client, "POST", f"{self.user_url}/server", deadline=deadline, expect=(201, 202))
        except _StepFailed as failure:
            # A spawn that fails quickly fails the request itself, often as a bare "500 Internal Server
            # Error": the reason is in the progress API.
            if not failure.retry:
                raise
            raise _StepFailed(f"{failure.message} (spawn progress: {self._spawn_failure(deadline)})") from None
        log.info("test user %s: server requested (HTTP %d)", self.username, response.status_code)
        while True:
            model = self._user_model(deadline)
            if model is None:
                raise _StepFailed(f"the test user {self.username} disappeared while its server was starting")
            state = _server_state(model)
            if state is not None and state.get("ready"):
                return state
            if state is None or not state.get("pending"):
                raise _StepFailed(f"the server of {self.username} failed to start: {self._spawn_failure(deadline)}")
            if time.monotonic() + self.poll_seconds > deadline:
                raise _StepFailed(
                    f"the server of {self.username} was not ready in time (still pending {state.get('pending')})"
                )
            time.sleep(self.poll_seconds)

    def _spawn_failure(self, deadline: float) -> str:
        """Why the spawn failed, from the hub's progress API (its last event's message)."""
        url = f"{self.user_url}/server/progress"
        seconds = max(0.5, min(PROGRESS_READ_SECONDS, deadline - time.monotonic()))
        message = "the hub gave no reason"
        try:
            with self.client.stream("GET", url, timeout=seconds) as response:
                if response.status_code != 200:
                    response.read()
                    return f"GET {url} answered HTTP {response.status_code}{_error_detail(response)}"
                ends = time.monotonic() + seconds
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        try:
                            event = json.loads(line[5:])
                        except json.JSONDecodeError:
                            continue
                        if isinstance(event, dict):
                            message = str(event.get("message") or message)
                            if event.get("failed") or event.get("ready"):
                                break
                    if time.monotonic() > ends:
                        break
        except httpx.HTTPError as exc:
            return f"{message} (progress API: {_transport_reason(exc, seconds)})"
        return message

    def probe_server(self, state: dict[str, Any], deadline: float) -> str | None:
        """The server answers its API and an authenticated request; returns jupyter_server's version.

        `<server>/api` needs no credentials; `<server>/api/status` needs the token (the access:servers scope).
        """
        path = state.get("full_url") or state.get("url") or f"/user/{quote(self.username, safe='')}/"
        server = urljoin(f"{self.base}/", path).rstrip("/")
        grace_ends = min(deadline, time.monotonic() + PROBE_GRACE_SECONDS)
        while True:
            try:
                response = _request(self.client, "GET", f"{server}/api", deadline=deadline, expect=(200,))
                _request(self.client, "GET", f"{server}/api/status", deadline=deadline, expect=(200,))
                return _version(response)
            except _StepFailed as failure:
                # 502/503/404 or a refused connection just after "ready": the proxy route may lag a moment.
                if not failure.retry or time.monotonic() + 0.5 > grace_ends:
                    raise _StepFailed(f"the server of {self.username} does not answer: {failure.message}") from None
            time.sleep(0.5)

    def stop_server(self, deadline: float) -> None:
        """Ask the hub to stop the default server and wait until it no longer lists it as running or pending."""
        _request(self.client, "DELETE", f"{self.user_url}/server", deadline=deadline, expect=(202, 204))
        while True:
            model = self._user_model(deadline)
            state = None if model is None else _server_state(model)
            if state is None or (not state.get("ready") and not state.get("pending")):
                return
            if time.monotonic() + self.poll_seconds > deadline:
                raise _StepFailed(
                    f"the server of {self.username} did not stop in time (pending {state.get('pending')!r})"
                )
            time.sleep(self.poll_seconds)

    def cleanup(self, seconds: float) -> str:
        """Best effort after a failure: stop the server and delete the user. Says what happened."""
        try:
            existed = self.remove_if_present(time.monotonic() + seconds)
        except _StepFailed as failure:
            log.warning("test user %s: cleanup failed: %s", self.username, _redact(failure.message, self.token))
            return f"cleanup failed: {failure.message}"
        return "test user removed" if existed else "no test user left"

    def attempt(self, deadline: float, cleanup_seconds: float, facts: dict[str, Any]) -> None:
        """The whole functional check once, filling `facts`; raises `_StepFailed` after cleaning up."""
        hub_api = _request(self.client, "GET", f"{self.base}/hub/api", deadline=deadline, expect=(200,))
        facts["hub_version"] = _version(hub_api)
        facts["leftover_removed"] = self.remove_if_present(deadline)
        if facts["leftover_removed"]:
            log.info("test user %s: removed a leftover of an earlier attempt", self.username)
        try:
            _request(self.client, "POST", self.user_url, deadline=deadline, expect=(201,))
            began = time.monotonic()
            state = self.start_server(deadline)
            facts["server_start_seconds"] = round(time.monotonic() - began, 3)
            log.info("test user %s: server ready after %.1fs", self.username, facts["server_start_seconds"])
            facts["server_version"] = self.probe_server(state, deadline)
            began = time.monotonic()
            self.stop_server(deadline)
            facts["server_stop_seconds"] = round(time.monotonic() - began, 3)
            _request(self.client, "DELETE", self.user_url, deadline=deadline, expect=(204,))
        except _StepFailed as failure:
            failure.cleanup = self.cleanup(cleanup_seconds)
            raise
        except BaseException:
            self.cleanup(cleanup_seconds)
            raise


def check_test_user(
    url: str,
    token: str,
    username: str = DEFAULT_TEST_USER,
    timeout_seconds: float = 600,
    retries: int = 2,
    *,
    backoff_seconds: float = 5.0,
    poll_seconds: float = 0.5,
) -> CheckOutcome:
    """A test user's single-user server starts, answers and stops: the hub can really serve users.

    With an admin service token, each attempt removes leftovers of an earlier one, creates the user, starts its
    server, checks it answers, stops it and deletes the user; after a failure, cleanup is always tried. Each
    attempt has `timeout_seconds` (2i2c gives 600s: a new node may have to come up); a refused token is not retried.
    """
    base = url.strip().rstrip("/")
    allowed = max(0, retries) + 1
    metadata: dict[str, Any] = {"url": base, "username": username, "attempts": 0, "errors": []}
    if not token:
        return CheckOutcome(False, f"test-user check of {base} not run: no admin service token given", metadata)
    cleanup_seconds = max(MIN_CLEANUP_SECONDS, min(timeout_seconds, MAX_CLEANUP_SECONDS))
    started = time.monotonic()
    last: _StepFailed | None = None
    headers = {"Authorization": f"token {token}", "Accept": "application/json"}
    with httpx.Client(headers=headers, follow_redirects=False) as client:
        steps = _TestUser(client, base, username, poll_seconds, token)
        for attempt in range(1, allowed + 1):
            sleep_backoff(attempt, backoff_seconds)
            metadata["attempts"] = attempt
            try:
                steps.attempt(time.monotonic() + timeout_seconds, cleanup_seconds, metadata)
                last = None
                break
            except _StepFailed as failure:
                last = failure
                error = _redact(failure.message + (f" [{failure.cleanup}]" if failure.cleanup else ""), token)
                metadata["errors"].append(error)
                log.warning("test-user check of %s, attempt %d of %d failed: %s", base, attempt, allowed, error)
                if not failure.retry:
                    break
    metadata["seconds"] = round(time.monotonic() - started, 3)
    if last is None:
        after = f" (attempt {attempt} of {allowed})" if attempt > 1 else ""
        description = (
            f"test user {username} on {base}: server started in {metadata['server_start_seconds']:.1f}s, "
            f"answered, stopped and the user was deleted{after}"
        )
        log.info("test-user check of %s passed%s", base, after)
        return CheckOutcome(True, _redact(description, token), _redact(metadata, token))
    cleanup = f"; {last.cleanup}" if last.cleanup else ""
    description = f"test-user check failed for {base} after {metadata['attempts']} attempt(s): {last.message}{cleanup}"
    return CheckOutcome(False, _redact(description, token), _redact(metadata, token))
