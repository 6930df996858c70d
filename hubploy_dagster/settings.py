"""The settings hubploy-dagster reads from the environment: one class, one typed and documented field each.

Modules get these variables from here, never from `os.environ`: the entry points (`definitions.py`, the
`hubploy` command) take them from `current()` once and pass them on; library code both reach (tools, chart
cache, Docker engine, secret-printing guard) asks `current()` itself. The environments and their branches are
repository configuration (`hubploy_dagster.chain`); HUBPLOY_BRANCHES only names the default chain's. Other
tools' variables (KUBECONFIG, HELM_*, the cloud CLIs', XDG_CACHE_HOME) are passed through to them.

`python -m hubploy_dagster.settings [README.md]` prints the README's settings table (or rewrites it there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hubploy_dagster.errors import HubployError

DEFAULT_BRANCHES = ("staging", "prod")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# External commands an operator may point at their own installation with HUBPLOY_<NAME> (hubploy had
# HELM_EXECUTABLE): program name -> field of Settings. Other programs (the local cluster's) come from PATH.
TOOLS = {
    name: f"{name.replace('-', '_')}_command"
    for name in ("helm", "sops", "repo2docker", "gcloud", "aws", "az", "docker-credential-ecr-login")
}

README_BEGIN = (
    "<!-- settings table: generated from hubploy_dagster/settings.py (python -m hubploy_dagster.settings README.md) -->"
)
README_END = "<!-- end of the settings table -->"


class SettingsError(HubployError):
    """A variable of the environment has a value hubploy-dagster cannot use (the message names it)."""


def _variable(name: str, description: str, default: Any = None, shown_default: str | None = None, **kw: Any) -> Any:
    """A field read from the variable `name`, documented; `shown_default` is the README's default when given."""
    extra = {"shown_default": shown_default} if shown_default is not None else None
    return Field(default, validation_alias=name, description=description, json_schema_extra=extra, **kw)


def _tool(name: str) -> Any:
    variable = f"HUBPLOY_{name.upper().replace('-', '_')}"
    return _variable(variable, f"the `{name}` command to run: a name on PATH or a path", shown_default=f"`{name}`")


class Settings(BaseSettings):
    """What the environment configures, typed and validated (each field names its variable)."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, frozen=True)

    repo: str | None = _variable(
        "HUBPLOY_REPO",
        "the deployment repository: a path (bare or not) or a git URL; `hubploy history` reads commit authors there",
        shown_default="required by the code location",
    )
    branches: Annotated[tuple[str, ...], NoDecode] = _variable(
        "HUBPLOY_BRANCHES",
        "without `hubploy-environments.yaml` in the repository: the branches staging (the first) and prod "
        "(the last) follow, comma-separated",
        default=DEFAULT_BRANCHES,
    )
    sensor_interval: int = _variable("HUBPLOY_SENSOR_INTERVAL", "seconds between sensor ticks", default=30, gt=0)
    webserver_url: str | None = _variable(
        "HUBPLOY_WEBSERVER_URL", "the Dagster webserver, for code-location reloads (new hubs) and links"
    )
    webhook_url: str | None = _variable(
        "HUBPLOY_WEBHOOK_URL",
        "a Slack-style incoming webhook for failed deploys",
        shown_default="none (nothing posted)",
    )
    build_args: Annotated[dict[str, str], NoDecode] = _variable(
        "HUBPLOY_BUILD_ARGS", "`KEY=VALUE,...` build arguments for every image", default={}
    )
    chart_cache: Annotated[tuple[Path, ...], NoDecode] = _variable(
        "HUBPLOY_CHART_CACHE",
        "folders (`:`-separated, as in PATH) of chart archives (`name-version.tgz`) used instead of "
        "downloading dependencies",
        default=(),
    )
    sops_age_key_file: Path | None = _variable(
        "SOPS_AGE_KEY_FILE", "the age key sops decrypts with", shown_default="sops' own defaults"
    )
    dagster_home: Path | None = _variable(
        "DAGSTER_HOME",
        "the Dagster instance `hubploy history` reads and `hubploy deploy` records into",
        shown_default="none (deploys not recorded)",
    )
    docker_host: str | None = _variable(
        "DOCKER_HOST", "the Docker engine images are built with", shown_default=f"`{DEFAULT_DOCKER_HOST}`"
    )
    actor: str | None = _variable(
        "HUBPLOY_ACTOR",
        "who runs `hubploy deploy`, recorded with the deploy (in CI, e.g. `$GITHUB_ACTOR`)",
        shown_default="the login name",
    )
    ci: bool = _variable(
        "CI",
        "set (any value) by CI systems: `--dry-run` and `--helm-debug`, which print secrets, are refused",
        default=False,
        shown_default="unset",
    )
    local_debug: bool = _variable(
        "HUBPLOY_LOCAL_DEBUG",
        "`1` allows `--dry-run` and `--helm-debug` outside CI (they print secrets)",
        default=False,
        shown_default="unset",
    )
    helm_command: str | None = _tool("helm")
    sops_command: str | None = _tool("sops")
    repo2docker_command: str | None = _tool("repo2docker")
    gcloud_command: str | None = _tool("gcloud")
    aws_command: str | None = _tool("aws")
    az_command: str | None = _tool("az")
    docker_credential_ecr_login_command: str | None = _tool("docker-credential-ecr-login")

    @field_validator("branches", mode="before")
    @classmethod
    def _split_branches(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        branches = tuple(part.strip() for part in value.split(","))
        if any(not branch for branch in branches):
            raise ValueError(f"an empty branch name in {value!r} (expected e.g. `staging,prod`)")
        return branches

    @field_validator("branches")
    @classmethod
    def _some_branch(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("no branch given")
        return value

    @field_validator("build_args", mode="before")
    @classmethod
    def _split_build_args(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        items = [item.strip() for item in value.split(",") if item.strip()]
        if bad := [item for item in items if "=" not in item or item.startswith("=")]:
            raise ValueError(f"{', '.join(map(repr, bad))} is not KEY=VALUE (expected `KEY=VALUE,...`)")
        return dict(item.split("=", 1) for item in items)

    @field_validator("chart_cache", mode="before")
    @classmethod
    def _split_folders(cls, value: Any) -> Any:
        return tuple(part for part in value.split(os.pathsep) if part) if isinstance(value, str) else value

    @field_validator("webserver_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("ci", mode="before")
    @classmethod
    def _any_value_is_set(cls, value: Any) -> Any:
        """CI systems set CI to `true`, `1`, their name...: any value counts (the guard errs on the safe side)."""
        return bool(value) if isinstance(value, str) else value

    def require_repo(self) -> str:
        if not self.repo:
            raise SettingsError(
                "HUBPLOY_REPO is not set: point it at the deployment repository (a path or a git URL); "
                "`make run` sets it to the bundled example"
            )
        return self.repo

    def tool_override(self, program: str) -> str | None:
        """The operator's own `program` (HUBPLOY_<PROGRAM>), or None: look for it on PATH."""
        field = TOOLS.get(program)
        return getattr(self, field) if field else None


# The variables Settings reads, in field order.
VARIABLES = tuple(str(info.validation_alias) for info in Settings.model_fields.values())


def load_settings() -> Settings:
    """The settings from the environment now; a value that does not parse is a SettingsError naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, error['loc']))}={error['input']!r}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        ]
        raise SettingsError("invalid settings in the environment: " + "; ".join(problems)) from None


_current: tuple[tuple[str | None, ...], Settings] | None = None


def current() -> Settings:
    """The process's settings: parsed once, again only when one of the variables changed since (tests)."""
    global _current
    values = tuple(os.environ.get(name) for name in VARIABLES)
    if _current is None or _current[0] != values:
        _current = (values, load_settings())
    return _current[1]


def reset() -> None:
    """Forget the parsed settings: the next `current()` reads the environment again."""
    global _current
    _current = None


def _shown_default(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, Mapping) and "shown_default" in extra:
        return str(extra["shown_default"])
    default = info.get_default(call_default_factory=True)
    if default is None or default == {} or default == ():
        return "none"
    if isinstance(default, tuple):
        return f"`{','.join(map(str, default))}`"
    return f"`{default}`"


def settings_table() -> str:
    """The README's table of the settings, from the fields: variable, meaning, default."""
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for info in Settings.model_fields.values():
        lines.append(f"| `{info.validation_alias}` | {info.description} | {_shown_default(info)} |")
    return "\n".join(lines) + "\n"


def _table_span(text: str) -> tuple[int, int]:
    try:
        start = text.index(README_BEGIN) + len(README_BEGIN) + 1
        return start, text.index(README_END, start)
    except ValueError:
        raise SettingsError(f"the README has no settings table between {README_BEGIN} and {README_END}") from None


def readme_table(text: str) -> str:
    """The part of a README between the settings table's markers."""
    start, end = _table_span(text)
    return text[start:end]


def write_readme_table(path: Path) -> None:
    text = path.read_text()
    start, end = _table_span(text)
    path.write_text(text[:start] + settings_table() + text[end:])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        write_readme_table(Path(sys.argv[1]))
    else:
        sys.stdout.write(settings_table())
