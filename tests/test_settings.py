"""The settings read from the environment: one class, parsed and validated once, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from services.repos import RepoBuilder

from hubploy_dagster.chain import UnknownEnvironmentError, default_chain
from hubploy_dagster.cli import main
from hubploy_dagster.errors import HubployError
from hubploy_dagster.settings import (
    VARIABLES,
    Settings,
    SettingsError,
    current,
    load_settings,
    readme_table,
    reset,
    settings_table,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the ambient environment (CI sets CI, a developer may have HUBPLOY_REPO...)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    reset()
    return monkeypatch


def settings_error(env: pytest.MonkeyPatch, name: str, value: str) -> str:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    return str(raised.value)


def test_the_readme_table_is_the_settings_class():
    readme = (ROOT / "README.md").read_text()
    assert readme_table(readme) == settings_table(), (
        "the README's settings table differs from hubploy_dagster/settings.py: "
        "run `python -m hubploy_dagster.settings README.md`"
    )


def test_every_setting_names_its_variable_and_is_documented():
    assert len(set(VARIABLES)) == len(VARIABLES) == len(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        assert info.validation_alias and info.description, f"field {name} needs its variable and a description"


def test_defaults(env: pytest.MonkeyPatch):
    settings = load_settings()
    assert settings.repo is None and settings.branches == ("staging", "prod")
    assert default_chain(settings.branches).branches == {"staging": "staging", "prod": "prod"}
    assert settings.sensor_interval == 30 and settings.build_args == {} and settings.chart_cache == ()
    assert settings.webserver_url is settings.webhook_url is settings.sops_age_key_file is None
    assert settings.dagster_home is settings.docker_host is None
    assert not settings.ci and not settings.local_debug
    with pytest.raises(SettingsError, match="HUBPLOY_REPO is not set"):
        settings.require_repo()


def test_branches_map_staging_to_the_first_and_prod_to_the_last(env: pytest.MonkeyPatch):
    """Without hubploy-environments.yaml in the repository (tests/test_chain.py), HUBPLOY_BRANCHES says."""
    env.setenv("HUBPLOY_BRANCHES", "main, candidate ,live")
    settings = load_settings()
    assert settings.branches == ("main", "candidate", "live")
    chain = default_chain(settings.branches)
    assert chain.branches == {"staging": "main", "prod": "live"}
    with pytest.raises(UnknownEnvironmentError, match="'feature' is not in the default chain"):
        chain.branch("feature")
    env.setenv("HUBPLOY_BRANCHES", "main")
    assert default_chain(load_settings().branches).branches == {"staging": "main", "prod": "main"}
    env.setenv("HUBPLOY_BRANCHES", "")  # empty: unset
    assert load_settings().branches == ("staging", "prod")
    assert "HUBPLOY_BRANCHES='staging,,prod'" in settings_error(env, "HUBPLOY_BRANCHES", "staging,,prod")


def test_the_dagster_resource_follows_the_same_branches(env: pytest.MonkeyPatch):
    from hubploy_dagster.resources import DeploymentRepoResource

    env.setenv("HUBPLOY_BRANCHES", "main,live")
    chain = default_chain(load_settings().branches)
    resource = DeploymentRepoResource(source="unused", env_branches=chain.branches)
    assert [resource.branch(e) for e in chain.names] == [chain.branch(e) for e in chain.names] == ["main", "live"]
    assert DeploymentRepoResource(source="unused").branch("prod") == "prod"
    with pytest.raises(HubployError, match="'feature' is not one of staging, prod"):
        DeploymentRepoResource(source="unused").branch("feature")


def test_build_args(env: pytest.MonkeyPatch):
    env.setenv("HUBPLOY_BUILD_ARGS", "BASE_IMAGE=local/base:1,EXTRA=a=b,EMPTY=,")
    assert load_settings().build_args == {"BASE_IMAGE": "local/base:1", "EXTRA": "a=b", "EMPTY": ""}
    env.setenv("HUBPLOY_BUILD_ARGS", "")  # `make run` with HUBPLOY_BUILD_ARGS= builds from the upstream base
    assert load_settings().build_args == {}
    message = settings_error(env, "HUBPLOY_BUILD_ARGS", "BASE_IMAGE=x,oops")
    assert "HUBPLOY_BUILD_ARGS='BASE_IMAGE=x,oops'" in message and "'oops' is not KEY=VALUE" in message


def test_a_bad_value_is_an_error_naming_its_variable(env: pytest.MonkeyPatch):
    message = settings_error(env, "HUBPLOY_SENSOR_INTERVAL", "abc")
    assert message.startswith("invalid settings in the environment: HUBPLOY_SENSOR_INTERVAL='abc'")
    assert "valid integer" in message
    assert "HUBPLOY_SENSOR_INTERVAL='0'" in settings_error(env, "HUBPLOY_SENSOR_INTERVAL", "0")
    env.delenv("HUBPLOY_SENSOR_INTERVAL")
    assert "HUBPLOY_WEBHOOK_URL='hooks.example.org'" in settings_error(env, "HUBPLOY_WEBHOOK_URL", "hooks.example.org")
    env.delenv("HUBPLOY_WEBHOOK_URL")
    assert "HUBPLOY_LOCAL_DEBUG='perhaps'" in settings_error(env, "HUBPLOY_LOCAL_DEBUG", "perhaps")


def test_paths_flags_and_tools(env: pytest.MonkeyPatch, tmp_path: Path):
    env.setenv("HUBPLOY_CHART_CACHE", f"{tmp_path / 'a'}::{tmp_path / 'b'}")
    env.setenv("DAGSTER_HOME", str(tmp_path))
    env.setenv("CI", "woodpecker")  # CI systems set CI to anything: set is set
    env.setenv("HUBPLOY_LOCAL_DEBUG", "1")
    env.setenv("HUBPLOY_HELM", "/opt/helm/bin/helm")
    settings = load_settings()
    assert settings.chart_cache == (tmp_path / "a", tmp_path / "b") and settings.dagster_home == tmp_path
    assert settings.ci and settings.local_debug
    assert settings.tool_override("helm") == "/opt/helm/bin/helm"
    assert settings.tool_override("sops") is None and settings.tool_override("etcd") is None


def test_current_is_parsed_once_and_again_when_a_variable_changes(env: pytest.MonkeyPatch):
    first = current()
    assert current() is first
    env.setenv("HUBPLOY_SENSOR_INTERVAL", "5")
    assert current() is not first and current().sensor_interval == 5
    again = current()
    reset()
    assert current() is not again and current() == again


def test_the_cli_reports_a_bad_setting_and_exits(env: pytest.MonkeyPatch):
    env.setenv("HUBPLOY_SENSOR_INTERVAL", "abc")
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid settings in the environment: HUBPLOY_SENSOR_INTERVAL='abc'")


def test_the_code_location_takes_branches_interval_and_resources_from_the_settings(
    two_hub_repo: RepoBuilder, env: pytest.MonkeyPatch, tmp_path: Path
):
    from hubploy_dagster.definitions import build_definitions

    two_hub_repo.branch("main")
    two_hub_repo.branch("live")
    env.setenv("HUBPLOY_BRANCHES", "main,live")
    env.setenv("HUBPLOY_SENSOR_INTERVAL", "7")
    env.setenv("HUBPLOY_BUILD_ARGS", "BASE_IMAGE=local/base")
    env.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "age.txt"))
    defs = build_definitions(str(two_hub_repo.path), load_settings())
    sensor = defs.resolve_sensor_def("git_branches")
    assert sensor.minimum_interval_seconds == 7 and "main, live" in (sensor.description or "")
    resources = defs.resources or {}
    assert resources["deployment_repo"].env_branches == {"staging": "main", "prod": "live"}
    assert resources["docker_engine"].build_args == {"BASE_IMAGE": "local/base"}
    assert resources["sops"].age_key_file == str(tmp_path / "age.txt")
