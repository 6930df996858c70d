"""Health checks that talk to a deployed JupyterHub over HTTP, for the asset checks after each release.

Two checks, as plain functions over httpx so they can be tested against a real hub and wrapped into Dagster
asset checks elsewhere:

- `check_hub_api`: the hub answers `/hub/api` (with its version) and `/hub/health`. Retried with a short backoff,
  because right after a `helm upgrade` the new hub pod may still be starting.
- `check_test_user`: 2i2c's functional check. Through JupyterHub's REST API and an admin service token, a
  dedicated test user gets a real single-user server, the server is asked to answer, then it is stopped and the
  user deleted. Leftovers of an earlier, interrupted attempt are removed first, and cleanup is always tried.

Neither raises for an unhealthy hub: each returns a `CheckOutcome` whose description is the one line an operator
reads in the UI (what was checked, what failed and why). The admin token is a credential: it is only ever sent
in the `Authorization` header, and every description, metadata value and log line is scrubbed of it as a last
line of defence (a hub or proxy could echo a request back in an error page).
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
# A single request never waits longer than this, even when the attempt has more time left: a hub that has
# not answered in two minutes is not going to, and the attempt loop can still retry.
MAX_REQUEST_SECONDS = 120.0
# Cleanup after a failed attempt gets its own time budget (the attempt's may be spent) within these bounds.
MIN_CLEANUP_SECONDS = 10.0
MAX_CLEANUP_SECONDS = 120.0
# Reading the spawn progress stream only to learn why a spawn failed: the answer is immediate on a real hub.
PROGRESS_READ_SECONDS = 10.0
# Right after a server reports ready, the proxy may need a moment before its route answers.
PROBE_GRACE_SECONDS = 10.0
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one health check, ready to become a Dagster AssetCheckResult.

    `description` is one line for an operator; `metadata` holds the facts (version, attempts, URL, seconds,
    errors). Neither ever contains a token.
    """

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


class _StepFailed(Exception):
    """One step of a check failed; `message` names the request and the reason.

    `retry` is False when another attempt cannot help (the hub refused the credentials).
    """

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.cleanup: str | None = None


class _Redactor:
    """Replaces a secret in every string of a value, however deeply nested."""

    def __init__(self, secret: str | None):
        self.secret = secret or None

    def text(self, value: str) -> str:
        return value.replace(self.secret, REDACTED) if self.secret else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def outcome(self, passed: bool, description: str, metadata: dict[str, Any]) -> CheckOutcome:
        return CheckOutcome(passed=passed, description=self.text(description), metadata=self.value(metadata))


def _base_url(url: str) -> str:
    return url.strip().rstrip("/")


def _error_detail(response: httpx.Response) -> str:
    """JupyterHub's error `message` when the body has one, else the start of the body on one line."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip():
        return f": {body['message'].strip()}"
    text = " ".join(response.text.split())[:200]
    location = response.headers.get("location")
    if response.is_redirect and location:
        return f" (redirect to {location})"
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
    client: httpx.Client,
    method: str,
    url: str,
    *,
    deadline: float,
    expect: tuple[int, ...],
    **kwargs: Any,
) -> httpx.Response:
    """One request within the attempt's deadline; any other status than `expect` is a `_StepFailed`.

    401 and 403 are not worth retrying: the token is wrong or lacks scopes, and will be on the next attempt.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _StepFailed(f"{method} {url}: the attempt ran out of time before this request")
    seconds = min(remaining, MAX_REQUEST_SECONDS)
    try:
        response = client.request(method, url, timeout=seconds, **kwargs)
    except httpx.HTTPError as exc:
        raise _StepFailed(f"{method} {url}: {_transport_reason(exc, seconds)}") from None
    if response.status_code not in expect:
        refused = response.status_code in (401, 403)
        hint = (
            " (the token was refused: is it the hub's admin service token, with scopes admin:users,"
            " admin:servers and access:servers?)"
            if refused
            else ""
        )
        raise _StepFailed(
            f"{method} {url} answered HTTP {response.status_code}{_error_detail(response)}{hint}",
            retry=not refused,
        )
    return response


def sleep_backoff(attempt: int, backoff_seconds: float) -> None:
    """Before attempt 2, 3, ...: backoff_seconds, then doubling (capped at a minute).

    Every health check retries this way, so `timeout_seconds` and `retries` mean one thing for all of them:
    each attempt has `timeout_seconds`; after a failed attempt, up to `retries` more follow.
    """
    if attempt > 1 and backoff_seconds > 0:
        time.sleep(min(backoff_seconds * 2 ** (attempt - 2), 60.0))


# ---------------------------------------------------------------------------------------------------------------
# Hub API check


def _hub_api_attempt(client: httpx.Client, base: str, deadline: float) -> str:
    """Both endpoints once; returns the hub's version."""
    response = _request(client, "GET", f"{base}/hub/api", deadline=deadline, expect=(200,))
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        snippet = " ".join(response.text.split())[:120]
        raise _StepFailed(f"GET {base}/hub/api answered 200 but not JupyterHub's JSON with a version: {snippet!r}")
    _request(client, "GET", f"{base}/hub/health", deadline=deadline, expect=(200,))
    return body["version"]


def check_hub_api(
    url: str,
    timeout_seconds: float = 30,
    retries: int = 2,
    *,
    backoff_seconds: float = 2.0,
) -> CheckOutcome:
    """GET `<url>/hub/api` must answer JSON with a "version", GET `<url>/hub/health` must answer 200.

    `url` is the hub's public URL (what users open). Each attempt has `timeout_seconds`; up to `retries` more
    attempts follow a failed one after `backoff_seconds`, doubling, since new pods may still be starting.
    The failure names the URL and the reason of the last attempt (connection refused, HTTP status, timeout);
    metadata lists every attempt's error.
    """
    base = _base_url(url)
    allowed = max(0, retries) + 1
    errors: list[str] = []
    started = time.monotonic()
    with httpx.Client(follow_redirects=False) as client:
        for attempt in range(1, allowed + 1):
            sleep_backoff(attempt, backoff_seconds)
            try:
                version = _hub_api_attempt(client, base, time.monotonic() + timeout_seconds)
            except _StepFailed as failure:
                errors.append(failure.message)
                log.warning("hub API check of %s, attempt %d of %d failed: %s", base, attempt, allowed, failure)
                continue
            seconds = round(time.monotonic() - started, 3)
            after = f" (attempt {attempt} of {allowed})" if attempt > 1 else ""
            log.info("hub API check of %s passed: JupyterHub %s%s", base, version, after)
            return CheckOutcome(
                passed=True,
                description=f"JupyterHub {version} at {base} answers /hub/api and /hub/health{after}",
                metadata={"url": base, "version": version, "attempts": attempt, "seconds": seconds, "errors": errors},
            )
    seconds = round(time.monotonic() - started, 3)
    return CheckOutcome(
        passed=False,
        description=f"JupyterHub API check failed for {base} after {allowed} attempt(s): {errors[-1]}",
        metadata={"url": base, "version": None, "attempts": allowed, "seconds": seconds, "errors": errors},
    )


# ---------------------------------------------------------------------------------------------------------------
# Test-user check


def _server_state(user_model: dict[str, Any]) -> dict[str, Any] | None:
    """The default server's model, or None when it is neither running nor pending.

    Hubs list only active servers in `servers`; without the read:servers scope there is no `servers` key and
    the top-level `server` / `pending` fields tell the same.
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

    def __init__(self, client: httpx.Client, base: str, username: str, poll_seconds: float, redact: _Redactor):
        self.client = client
        self.redact = redact
        self.base = base
        self.username = username
        self.poll_seconds = poll_seconds
        self.user_url = f"{base}/hub/api/users/{quote(username, safe='')}"

    def _user_model(self, deadline: float) -> dict[str, Any] | None:
        response = _request(self.client, "GET", self.user_url, deadline=deadline, expect=(200, 404))
        if response.status_code == 404:
            return None
        try:
            model = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            model = None
        if not isinstance(model, dict):
            raise _StepFailed(f"GET {self.user_url} answered 200 without a user model")
        return model

    def hub_version(self, deadline: float) -> str | None:
        response = _request(self.client, "GET", f"{self.base}/hub/api", deadline=deadline, expect=(200,))
        try:
            version = response.json().get("version")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

    def remove_if_present(self, deadline: float) -> bool:
        """Stop the user's server if it runs or is pending, then delete the user; True if the user existed."""
        model = self._user_model(deadline)
        if model is None:
            return False
        if _server_state(model) is not None:
            self.stop_server(deadline)
        _request(self.client, "DELETE", self.user_url, deadline=deadline, expect=(204, 404))
        return True

    def create(self, deadline: float) -> None:
        _request(self.client, "POST", self.user_url, deadline=deadline, expect=(201,))

    def delete(self, deadline: float) -> None:
        _request(self.client, "DELETE", self.user_url, deadline=deadline, expect=(204,))

    def start_server(self, deadline: float) -> dict[str, Any]:
        """Request the default server and wait until the hub reports it ready; returns its server model."""
        try:
            response = _request(self.client, "POST", f"{self.user_url}/server", deadline=deadline, expect=(201, 202))
        except _StepFailed as failure:
            # A spawn that fails quickly fails the request itself, often as a bare "500 Internal Server
            # Error": the reason is in the progress API.
            if not failure.retry:
                raise
            reason = self._spawn_failure(deadline)
            raise _StepFailed(f"{failure.message} (spawn progress: {reason})") from None
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
                        if isinstance(event, dict) and event.get("message"):
                            message = str(event["message"])
                        if isinstance(event, dict) and (event.get("failed") or event.get("ready")):
                            break
                    if time.monotonic() > ends:
                        break
        except httpx.HTTPError as exc:
            return f"{message} (progress API: {_transport_reason(exc, seconds)})"
        return message

    def probe_server(self, state: dict[str, Any], deadline: float) -> str | None:
        """The server answers its API (version) and an authenticated request; returns jupyter_server's version.

        `<server>/api` answers without credentials on jupyter_server, so `<server>/api/status` is asked too:
        it needs the token, which the server checks with the hub (the access:servers scope).
        """
        path = state.get("full_url") or state.get("url") or f"/user/{quote(self.username, safe='')}/"
        server = urljoin(f"{self.base}/", path).rstrip("/")
        grace_ends = min(deadline, time.monotonic() + PROBE_GRACE_SECONDS)
        while True:
            try:
                response = _request(self.client, "GET", f"{server}/api", deadline=deadline, expect=(200,))
                _request(self.client, "GET", f"{server}/api/status", deadline=deadline, expect=(200,))
            except _StepFailed as failure:
                # 502/503/404 or a refused connection just after "ready": the proxy route may lag a moment.
                if not failure.retry or time.monotonic() + 0.5 > grace_ends:
                    raise _StepFailed(f"the server of {self.username} does not answer: {failure.message}") from None
                time.sleep(0.5)
                continue
            try:
                version = response.json().get("version")
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError):
                version = None
            return version if isinstance(version, str) else None

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
            log.warning("test user %s: cleanup failed: %s", self.username, self.redact.text(failure.message))
            return f"cleanup failed: {failure.message}"
        return "test user removed" if existed else "no test user left"

    def attempt(self, deadline: float, cleanup_seconds: float, facts: dict[str, Any]) -> None:
        """The whole functional check once, filling `facts`; raises `_StepFailed` after cleaning up."""
        facts["hub_version"] = self.hub_version(deadline)
        facts["leftover_removed"] = self.remove_if_present(deadline)
        if facts["leftover_removed"]:
            log.info("test user %s: removed a leftover of an earlier attempt", self.username)
        try:
            self.create(deadline)
            began = time.monotonic()
            state = self.start_server(deadline)
            facts["server_start_seconds"] = round(time.monotonic() - began, 3)
            log.info("test user %s: server ready after %.1fs", self.username, facts["server_start_seconds"])
            facts["server_version"] = self.probe_server(state, deadline)
            began = time.monotonic()
            self.stop_server(deadline)
            facts["server_stop_seconds"] = round(time.monotonic() - began, 3)
            self.delete(deadline)
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

    Through JupyterHub's REST API with an admin service token (`Authorization: token ...`), each attempt:
    removes leftovers of an earlier failed attempt (stops the user's server, deletes the user), creates the user,
    starts its default server and waits until the hub reports it ready, checks the server answers
    (`<server>/api` and the authenticated `<server>/api/status`), stops it, waits until stopped, and deletes the
    user. After a failure it always tries to stop the server and delete the user. Each attempt has
    `timeout_seconds` (2i2c gives 600s: a new node may have to come up); a refused token is not retried.

    The token never appears in the outcome, in exceptions or in logs.
    """
    base = _base_url(url)
    redact = _Redactor(token)
    allowed = max(0, retries) + 1
    metadata: dict[str, Any] = {"url": base, "username": username, "attempts": 0, "errors": []}
    if not token:
        return CheckOutcome(False, f"test-user check of {base} not run: no admin service token given", metadata)
    cleanup_seconds = max(MIN_CLEANUP_SECONDS, min(timeout_seconds, MAX_CLEANUP_SECONDS))
    started = time.monotonic()
    last: _StepFailed | None = None
    headers = {"Authorization": f"token {token}", "Accept": "application/json"}
    with httpx.Client(headers=headers, follow_redirects=False) as client:
        steps = _TestUser(client, base, username, poll_seconds, redact)
        for attempt in range(1, allowed + 1):
            sleep_backoff(attempt, backoff_seconds)
            metadata["attempts"] = attempt
            facts: dict[str, Any] = {}
            try:
                steps.attempt(time.monotonic() + timeout_seconds, cleanup_seconds, facts)
            except _StepFailed as failure:
                last = failure
                error = failure.message + (f" [{failure.cleanup}]" if failure.cleanup else "")
                metadata["errors"].append(redact.text(error))
                metadata.update(facts)
                log.warning(
                    "test-user check of %s, attempt %d of %d failed: %s", base, attempt, allowed, redact.text(error)
                )
                if not failure.retry:
                    break
                continue
            metadata.update(facts)
            metadata["seconds"] = round(time.monotonic() - started, 3)
            after = f" (attempt {attempt} of {allowed})" if attempt > 1 else ""
            description = (
                f"test user {username} on {base}: server started in {facts['server_start_seconds']:.1f}s, "
                f"answered, stopped and the user was deleted{after}"
            )
            log.info("test-user check of %s passed%s", base, after)
            return redact.outcome(True, description, metadata)
    metadata["seconds"] = round(time.monotonic() - started, 3)
    assert last is not None
    cleanup = f"; {last.cleanup}" if last.cleanup else ""
    description = f"test-user check failed for {base} after {metadata['attempts']} attempt(s): {last.message}{cleanup}"
    return redact.outcome(False, description, metadata)
