"""`hubploy validate`: a real repository with many problems at once, each listed with its file; a clean one passes.

Real git, real sops with age keys, and the real jupyterhub chart rendered by real helm (its values schema).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from services.repos import PROJECT_ROOT, RepoBuilder, hub_files, new_age_key, sops_encrypt

from hubploy_dagster.cli import main

CANARY = f"validate-canary-{uuid.uuid4().hex}"


@pytest.fixture
def umbrella_repo(repo_builder: RepoBuilder, chart_cache: Path, tmp_path: Path) -> tuple[RepoBuilder, Path, str]:
    """A repository with the real umbrella chart (jupyterhub dependency) and one clean hub with secrets."""
    shutil.copytree(PROJECT_ROOT / "chart", repo_builder.path / "chart", ignore=shutil.ignore_patterns("charts"))
    key, recipient = new_age_key(tmp_path)
    repo_builder.commit("clean hub", {**hub_files("alpha"), **secrets_of("alpha", tmp_path, recipient)})
    return repo_builder, key, recipient


def secrets_of(hub: str, folder: Path, recipient: str) -> dict[str, str]:
    secret = f"jupyterhub:\n  proxy:\n    secretToken: {CANARY}\n"
    return {f"hubs/{hub}/secrets/{env}.yaml": sops_encrypt(folder, recipient, secret) for env in ("staging", "prod")}


def validate(repo: RepoBuilder, key: Path):
    return CliRunner(env={"SOPS_AGE_KEY_FILE": str(key)}).invoke(main, ["validate", "--repo", str(repo.path)])


def test_clean_repository_renders_every_environment_and_passes(umbrella_repo):
    repo, key, _ = umbrella_repo
    result = validate(repo, key)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 1 hubs valid") and "(2 chart renders)" in result.stdout
    assert CANARY not in result.output


def test_every_problem_is_listed_with_its_file(umbrella_repo, tmp_path: Path):
    repo, key, _ = umbrella_repo
    _, stranger = new_age_key(tmp_path, "stranger")
    repo.commit(
        "many mistakes",
        {
            **hub_files("yaml"),
            "hubs/yaml/config/staging.yaml": "jupyterhub:\n  hub: [unclosed\n",
            **hub_files("nocommon"),
            **hub_files("leaky"),
            "hubs/leaky/secrets/staging.yaml": f"jupyterhub:\n  proxy:\n    secretToken: {CANARY}\n",
            **hub_files("schema"),
            "hubs/schema/config/common.yaml": "jupyterhub:\n  hub:\n    bogusKey: 1\n",
            "hubs/schema/config/prod.yaml": "jupyterhub:\n  proxy:\n    nope: 2\n",
            **hub_files("wrongkey"),
            **secrets_of("wrongkey", tmp_path, stranger),
            **hub_files("creds", extra="cluster:\n  provider: kubeconfig\n  kubeconfig: {filename: kube.yaml}\n"),
            "hubs/badconfig/hubploy.yaml": "images: [unclosed\n",
        },
    )
    repo.remove("hubs/nocommon/config/common.yaml", "hubs/creds/image/Dockerfile")
    repo.write({"hubs/creds/image/notes.txt": "no recipe here\n"})
    sha = repo.commit("remove files")
    short = sha[:7]
    result = validate(repo, key)
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert all(line.startswith("error: hubs/") for line in errors), errors

    def reported(file: str, *words: str) -> bool:
        return any(line.startswith(f"error: {file}@{short}") and all(w in line for w in words) for line in errors)

    assert reported("hubs/badconfig/hubploy.yaml", "invalid YAML")
    assert reported("hubs/yaml/config/staging.yaml", "invalid YAML", "line 3")
    assert reported("hubs/leaky/secrets/staging.yaml", "not sops-encrypted")
    assert reported("hubs/schema/config/common.yaml", "jupyterhub.hub.bogusKey", "Additional property bogusKey")
    assert reported("hubs/schema/config/prod.yaml", "jupyterhub.proxy.nope", "values schema, prod")
    assert sum("bogusKey" in line for line in errors) == 1, "listed once, though both environments read it"
    assert reported("hubs/wrongkey/secrets/staging.yaml", "cannot decrypt")
    assert reported("hubs/wrongkey/secrets/prod.yaml", "cannot decrypt")
    assert reported("hubs/creds/hubploy.yaml", "cluster.kubeconfig.filename", "hubs/creds/secrets/kube.yaml")
    assert reported("hubs/creds/image", "no Dockerfile")
    assert not any("hubs/alpha/" in line for line in errors), "the clean hub has no problem"
    # hubploy skips a missing values file, common.yaml included: an existing repository stays valid without one.
    assert not any("hubs/nocommon/" in line for line in errors), errors
    assert CANARY not in result.output
