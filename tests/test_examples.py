"""The bundled example hubs are a valid deployment repository in hubploy's layout."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner
from services.repos import PROJECT_ROOT, RepoBuilder

from hubploy_dagster.cli import main
from hubploy_dagster.definitions import build_definitions
from hubploy_dagster.deployment import load_deployment


def test_examples_validate(example_repo: RepoBuilder, chart_cache: Path):
    """Every check `hubploy validate` makes, secrets decrypted with the demo key and values rendered by the chart."""
    demo_key = PROJECT_ROOT / "hubs" / "DEMO-ONLY-age-key.txt"
    result = CliRunner(env={"SOPS_AGE_KEY_FILE": str(demo_key)}).invoke(
        main, ["validate", "--repo", str(example_repo.path)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 2 hubs valid") and "(4 chart renders)" in result.stdout, result.stdout


def test_examples_use_both_image_forms_and_have_every_values_file(example_repo: RepoBuilder):
    deployment = load_deployment(example_repo.open().snapshot("HEAD"))
    datahub, research = deployment.hub("datahub"), deployment.hub("research")
    assert datahub.config.images is not None and datahub.config.images.images is not None
    assert research.config.images is not None and research.config.images.image_name is not None
    for hub in (datahub, research):
        for env in ("staging", "prod"):
            files = deployment.values_files(hub, env)
            assert [f.path.rsplit("/", 2)[-2:] for f in files] == [
                ["config", "common.yaml"],
                ["config", f"{env}.yaml"],
                ["secrets", f"{env}.yaml"],
            ]
            secret = yaml.safe_load(deployment.snapshot.read(files[-1].path) or b"")
            assert "sops" in secret, f"{files[-1].path} must be sops-encrypted"
            assert hub.url(env)


def test_examples_code_location_has_both_hubs(example_repo: RepoBuilder):
    keys = {
        key.to_user_string()
        for key in build_definitions(str(example_repo.path)).resolve_asset_graph().get_all_asset_keys()
    }
    assert keys == {f"{hub}/{asset}" for hub in ("datahub", "research") for asset in ("image", "staging", "prod")}
