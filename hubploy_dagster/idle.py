"""Waiting for users to leave: before a release changes, the hub's REST API is asked how many servers run.

A helm upgrade that restarts the hub in the middle of a class interrupts every student on it. With
`wait_for_idle` in an environment's rollout settings, the release first polls the hub (`GET /hub/api/users
?state=active` with the admin service token, every page) until at most `max_active_servers` user servers run
(running, starting or stopping), for at most `max_wait`; then it deploys anyway or gives up, as `then` says.

Progress goes to the run log when the count changes and every ten minutes. A hub that cannot be asked (down,
an HTTP 5xx) is asked again at the next poll, as a busy one is: a broken hub must not keep its fix from
deploying when `then: deploy`. A refused token or an answer that is not JupyterHub's fails at once. The admin
token is only sent in the `Authorization` header and is scrubbed from every message (`health_api._redact`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from hubploy_dagster import rollout
from hubploy_dagster.config import IdleWait, parse_duration
from hubploy_dagster.errors import HubployError
from hubploy_dagster.health_api import _json, _redact, _request, _StepFailed

# JupyterHub's largest page (api_page_max_limit) by default; a hub configured lower answers with less.
PAGE_LIMIT = 200
MAX_PAGES = 1000
REQUEST_SECONDS = 30.0
# A progress line at least this often while nothing changes, so a long wait is visibly alive.
PROGRESS_EVERY = timedelta(minutes=10)
# A `poll` of 0s would ask the hub in a busy loop.
MIN_POLL_SECONDS = 1.0
PAGINATION = "application/jupyterhub-pagination+json"


class HubApiError(HubployError):
    """The hub's REST API did not tell how many servers run; `retry` is False when asking again cannot help."""

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class NotIdleError(HubployError):
    """The hub did not become idle within `max_wait`, and `then: give-up`: the release was not changed."""


@dataclass(frozen=True)
class IdleOutcome:
    """How a wait ended: idle, or deploying anyway after `max_wait`; how long it took and the counts it saw."""

    url: str
    max_active_servers: int
    deployed_anyway: bool
    waited_seconds: float
    first_count: int | None  # None: the hub could not be asked
    last_count: int | None
    highest_count: int | None
    polls: int
    description: str

    def metadata(self) -> dict[str, Any]:
        """What the release records of the wait (None values left out)."""
        values = {
            "idle_wait_seconds": self.waited_seconds,
            "idle_wait_outcome": "deployed anyway" if self.deployed_anyway else "idle",
            "idle_max_active_servers": self.max_active_servers,
            "idle_servers_at_start": self.first_count,
            "idle_servers_at_deploy": self.last_count,
            "idle_servers_highest": self.highest_count,
            "idle_polls": self.polls,
        }
        return {key: value for key, value in values.items() if value is not None}


def duration_text(seconds: float) -> str:
    """`1h52m`, `2h`, `3m05s`, `45s`: a wait's length as an operator reads it."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _servers_text(count: int) -> str:
    return f"{count} user server{'' if count == 1 else 's'}"


def _user_servers(user: dict[str, Any]) -> int:
    """A user model's servers that run, start or stop (hubs list only active ones in `servers`)."""
    servers = user.get("servers")
    if isinstance(servers, dict):
        return sum(1 for server in servers.values() if isinstance(server, dict) and not server.get("stopped"))
    # Without the read:servers scope: the default server's `server` (its URL) and `pending`.
    return 1 if user.get("server") or user.get("pending") else 0


def active_servers(url: str, token: str, *, timeout_seconds: float = REQUEST_SECONDS) -> int:
    """How many user servers run or are pending on the hub at `url` (its public URL), every page counted.

    Raises `HubApiError` naming the request and the reason; the token is never in its message.
    """
    base = url.strip().rstrip("/")
    if not token:
        raise HubApiError(f"cannot count the user servers on {base}: no admin token given", retry=False)
    headers = {"Authorization": f"token {token}", "Accept": PAGINATION}
    count, offset = 0, 0
    with httpx.Client(headers=headers, follow_redirects=False) as client:
        for _ in range(MAX_PAGES):
            request_url = f"{base}/hub/api/users?state=active&offset={offset}&limit={PAGE_LIMIT}"
            try:
                response = _request(
                    client, "GET", request_url, deadline=time.monotonic() + timeout_seconds, expect=(200,)
                )
            except _StepFailed as failure:
                raise HubApiError(_redact(failure.message, token), retry=failure.retry) from None
            body = _json(response)
            following = None
            if isinstance(body, list):  # a hub older than 2.0: no pages
                users = body
            elif isinstance(body, dict) and isinstance(body.get("items"), list):
                users = body["items"]
                following = (body.get("_pagination") or {}).get("next")
            else:
                snippet = _redact(" ".join(response.text.split())[:120], token)
                raise HubApiError(
                    f"GET {request_url} answered 200 but not JupyterHub's list of users: {snippet!r}", retry=False
                )
            count += sum(_user_servers(user) for user in users if isinstance(user, dict))
            if not isinstance(following, dict) or not users or not isinstance(following.get("offset"), int):
                return count
            offset = following["offset"]
    raise HubApiError(f"GET {base}/hub/api/users?state=active: more than {MAX_PAGES} pages of users", retry=False)


def wait_for_idle(
    url: str,
    token: str,
    wait: IdleWait,
    log: Callable[[str], None],
    clock: Callable[[], datetime] = rollout.now,
    sleep: Callable[[float], None] = time.sleep,
) -> IdleOutcome:
    """Poll the hub every `wait.poll` until at most `wait.max_active_servers` user servers run.

    After `wait.max_wait`: returns an outcome that deploys anyway (`then: deploy`), or raises `NotIdleError`
    (`then: give-up`). A refused token raises `HubApiError` at once; a hub that does not answer is asked again.
    """
    base = url.strip().rstrip("/")
    limit = wait.max_active_servers
    poll_seconds = max(MIN_POLL_SECONDS, parse_duration(wait.poll).total_seconds())
    started = clock()
    deadline = started + parse_duration(wait.max_wait)
    counts: list[int] = []
    said: str | None = None
    said_at = started
    polls = 0
    while True:
        polls += 1
        count: int | None = None
        try:
            count = active_servers(base, token)
            counts.append(count)
            now_text = f"{_servers_text(count)} running on {base}"
        except HubApiError as exc:
            if not exc.retry:
                raise
            now_text = f"cannot ask {base}: {exc}"
        moment = clock()
        waited = (moment - started).total_seconds()
        if count is not None and count <= limit:
            after = f" after waiting {duration_text(waited)}" if polls > 1 else ""
            description = f"{now_text} (at most {limit} wanted): deploying{after}"
            log(description)
            return _outcome(base, limit, False, waited, counts, count, polls, description)
        if moment >= deadline:
            if wait.then == "deploy":
                description = (
                    f"{now_text}, still more than {limit} after {wait.max_wait}: "
                    "deploying anyway (wait_for_idle.then: deploy)"
                )
                log(description)
                return _outcome(base, limit, True, waited, counts, count, polls, description)
            still = f"still {_servers_text(count)} on {base}" if count is not None else now_text
            raise NotIdleError(
                f"{still} after {wait.max_wait} (at most {limit} wanted): not deployed (wait_for_idle.then: give-up)"
            )
        left = (deadline - moment).total_seconds()
        if now_text != said or moment - said_at >= PROGRESS_EVERY:
            log(f"{now_text}, waiting until at most {limit} ({duration_text(left)} left)")
            said, said_at = now_text, moment
        sleep(min(poll_seconds, left))


def _outcome(
    url: str,
    limit: int,
    anyway: bool,
    waited: float,
    counts: list[int],
    last: int | None,
    polls: int,
    description: str,
) -> IdleOutcome:
    """A wait that ends in a deploy: `counts` of the polls answered, `last` the final poll's (None: unanswered)."""
    return IdleOutcome(
        url=url,
        max_active_servers=limit,
        deployed_anyway=anyway,
        waited_seconds=round(waited, 3),
        first_count=counts[0] if counts else None,
        last_count=last,
        highest_count=max(counts) if counts else None,
        polls=polls,
        description=description,
    )
