"""When a release may change: deploy windows, and the holds they put on a deploy.

A hub restart in the middle of a class interrupts every student on it, so operators keep deploys to allowed
windows and out of freezes. A window opens at each time a cron expression names (in its time zone) and stays open
for its duration. `deny` windows always win (a freeze); with `allow` windows, a release changes only inside one
of them. The settings of an environment are the repository's (`hubploy-environments.yaml`) with the hub's own
keys over them (`environments.<env>.rollout` in hubploy.yaml).

A `Hold` says why a deploy waits and until when: the sensor requests nothing while a hold lasts (the branch's
move is planned again at every tick, so the deploy happens when it ends, at the newest commit), and a run
launched by hand inside a hold is refused unless a run tag overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from hubploy_dagster.chain import Chain
from hubploy_dagster.config import DeployWindow, RolloutSettings, parse_duration
from hubploy_dagster.deployment import Hub


@dataclass(frozen=True)
class Hold:
    """A deploy that must wait: what holds it, why, and when it is expected to end (None: not known)."""

    kind: str  # window | soak
    reason: str
    until: datetime | None = None


def now() -> datetime:
    """The clock holds are judged by (tests replace it, instead of waiting for a window)."""
    return datetime.now(UTC)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def hub_rollout(chain: Chain, hub: Hub, env: str) -> RolloutSettings:
    """The hub's rollout settings in `env`: its own keys over the repository's."""
    settings = hub.config.environments.get(env)
    own = settings.rollout if settings is not None else None
    defaults = chain.rollout.get(env)
    return own.over(defaults) if own is not None else defaults or RolloutSettings()


def _opened_at(window: DeployWindow, moment: datetime) -> datetime | None:
    """When the occurrence of `window` that is open at `moment` opened, or None when none is open."""
    local = moment.astimezone(ZoneInfo(window.timezone))
    # get_prev is strictly before its base: a window opening at exactly `moment` is found from a second later
    opened = croniter(window.cron, local.replace(microsecond=0) + parse_duration("1s")).get_prev(datetime)
    return opened if local < opened + parse_duration(window.duration) else None


def _next_opening(window: DeployWindow, moment: datetime) -> datetime:
    return croniter(window.cron, moment.astimezone(ZoneInfo(window.timezone))).get_next(datetime)


def window_hold(rollout: RolloutSettings, moment: datetime) -> Hold | None:
    """The hold the windows put on a deploy at `moment`, if any."""
    for window in rollout.deny or []:
        opened = _opened_at(window, moment)
        if opened is not None:
            until = opened + parse_duration(window.duration)
            reason = (
                f"inside the deny window `{window.cron}` ({window.timezone}, {window.duration}) until {utc_text(until)}"
            )
            return Hold("window", reason, until)
    if rollout.allow and not any(_opened_at(window, moment) for window in rollout.allow):
        until = min(_next_opening(window, moment) for window in rollout.allow)
        return Hold("window", f"outside every allow window; the next opens at {utc_text(until)}", until)
    return None
