"""The ordered chain of environments a deployment repository promotes through, and the branch each follows.

hubploy's model is a `staging` and a `prod` branch, prod promoted from staging; hubploy 1.2 repositories add
`develop`. The chain is repository configuration, `hubploy-environments.yaml` at the repository's root:

    environments:
      - name: develop          # the first environment builds the images and deploys them
      - name: staging          # every later one promotes what was healthy in the one before it
        branch: main           # the branch it follows (default: its name)
      - name: prod
        rollout:               # when its releases may change, for every hub (hubploy_dagster/rollout.py)
          deny: [{cron: "0 8 * * 1-5", duration: 10h, timezone: Europe/Berlin}]
        watch: 1h              # every release's checks and drift check run again this often (sensors/watch.py)

Without the file the chain is today's `staging -> prod`, following the first and last branch of
HUBPLOY_BRANCHES. A chain of one environment deploys without a promotion gate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hubploy_dagster.config import Duration, RolloutSettings, parse_yaml, problem_from_pydantic
from hubploy_dagster.errors import ConfigError, GitError, HubployError
from hubploy_dagster.repo import DeploymentRepo, Snapshot

CHAIN_FILE = "hubploy-environments.yaml"
DEFAULT_ENVIRONMENTS = ("staging", "prod")
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
RESERVED = "image"  # `<hub>/image` is the image asset's key


class _EnvironmentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Lowercase letters, digits and dashes: it names releases and namespaces")
    branch: str | None = Field(None, description="The branch this environment follows (default: its name)")
    rollout: RolloutSettings | None = Field(None, description="Every hub's rollout settings here (a hub's win)")
    watch: Duration | None = Field(None, description="Re-run every release's checks and drift check this often")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"environment name {value!r} must be lowercase letters, digits and dashes")
        if value == RESERVED:
            raise ValueError(f"{RESERVED!r} names the image asset of every hub: choose another environment name")
        return value


class _ChainFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environments: list[_EnvironmentEntry] = Field(min_length=1)

    @field_validator("environments")
    @classmethod
    def _distinct(cls, value: list[_EnvironmentEntry]) -> list[_EnvironmentEntry]:
        names = [entry.name for entry in value]
        if len(set(names)) != len(names):
            raise ValueError(f"environment names repeat: {', '.join(names)}")
        branches = [entry.branch or entry.name for entry in value]
        if len(set(branches)) != len(branches):
            raise ValueError(f"two environments follow one branch: {', '.join(branches)}")
        return value


class UnknownEnvironmentError(HubployError):
    """An environment that is not in the repository's chain."""


@dataclass(frozen=True)
class Chain:
    """Environments in promotion order, each with the branch it follows."""

    branches: dict[str, str]  # environment -> branch, in order
    source: str = "the default chain"
    rollout: dict[str, RolloutSettings] = field(default_factory=dict)  # environment -> the repository's defaults
    watch: dict[str, str] = field(default_factory=dict)  # environment -> how often its releases are checked again

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.branches)

    @property
    def first(self) -> str:
        """The environment that builds images (the others never build: they promote)."""
        return self.names[0]

    def before(self, env: str) -> str | None:
        """The environment `env` promotes from (None: the first, which deploys what was built)."""
        index = self.names.index(self.require(env))
        return self.names[index - 1] if index else None

    def branch(self, env: str) -> str:
        return self.branches[self.require(env)]

    def require(self, env: str) -> str:
        if env not in self.branches:
            raise UnknownEnvironmentError(f"environment {env!r} is not in {self.source}: {' -> '.join(self.names)}")
        return env


def default_chain(branches: Sequence[str] = DEFAULT_ENVIRONMENTS) -> Chain:
    """Today's `staging -> prod`: staging follows the first of `branches`, prod the last (HUBPLOY_BRANCHES)."""
    staging, prod = DEFAULT_ENVIRONMENTS
    return Chain({staging: branches[0], prod: branches[-1]}, "the default chain (no " + CHAIN_FILE + ")")


def load_chain(snapshot: Snapshot, branches: Sequence[str] = DEFAULT_ENVIRONMENTS) -> Chain:
    """The chain the repository configures at this commit, or the default one (with `branches`)."""
    text = snapshot.read(CHAIN_FILE)
    if text is None:
        return default_chain(branches)
    file = snapshot.describe(CHAIN_FILE)
    data = parse_yaml(text, file)
    try:
        parsed = _ChainFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError([problem_from_pydantic(file, error) for error in exc.errors()]) from None
    entries = parsed.environments
    rollout = {entry.name: entry.rollout for entry in entries if entry.rollout is not None}
    watch = {entry.name: entry.watch for entry in entries if entry.watch is not None}
    return Chain({entry.name: entry.branch or entry.name for entry in entries}, file, rollout, watch)


def repository_chain(repo: DeploymentRepo, branches: Sequence[str] = DEFAULT_ENVIRONMENTS) -> Chain:
    """The chain the code location follows: read at the repository's HEAD (its default branch), or, when HEAD
    names no commit (a bare repository whose default branch was never pushed), at the first of `branches`."""
    heads = repo.heads(list(branches))
    for rev in ["HEAD", *(heads[b] for b in branches if b in heads)]:
        try:
            snapshot = repo.snapshot(rev)
        except GitError:
            continue
        return load_chain(snapshot, branches)
    return default_chain(branches)
