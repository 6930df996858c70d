"""Errors an operator can act on: each names the file, the key and the reason.

hubploy let YAML and schema mistakes surface as Python tracebacks; every error this package raises for bad
input instead says where the problem is, so the fix is obvious from one line of CI output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a deployment repository: which file, which key (dotted path, may be empty), why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


class HubployError(Exception):
    """Base class of every error hubploy-dagster reports to an operator."""


class ConfigError(HubployError):
    """The deployment repository's configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]):
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str, key: str, reason: str) -> ConfigError:
        return cls([ConfigProblem(file, key, reason)])


class UnknownHubError(HubployError):
    """A hub was asked for by name and the repository has no such hub at that commit."""

    def __init__(self, hub: str, known: list[str], where: str):
        self.hub = hub
        known_text = ", ".join(sorted(known)) or "none"
        super().__init__(f"no hub named {hub!r} in {where} (hubs there: {known_text})")


class GitError(HubployError):
    """A git operation failed: names the repository and the revision or remote involved."""
