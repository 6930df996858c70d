"""The `hubploy` command: hubs, tags, changed, schema, validate, with --json, against real repositories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from services.repos import RepoBuilder

from hubploy_dagster.cli import main
from hubploy_dagster.tags import tag_from_sha


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_hubs_lists_valid_and_invalid_hubs(two_hub_repo: RepoBuilder):
    two_hub_repo.commit("bad", {"hubs/broken/hubploy.yaml": "rollback: sometimes\n"})
    code, out, err = run("hubs", "--repo", str(two_hub_repo.path))
    assert code == 0
    assert out.splitlines() == ["alpha\thubs/alpha", "beta\thubs/beta"]
    assert "hubs/broken/hubploy.yaml@" in err and "rollback:" in err
    code, out, _ = run("hubs", "--repo", str(two_hub_repo.path), "--json")
    data = json.loads(out)
    assert [h["name"] for h in data["hubs"]] == ["alpha", "beta"] and list(data["invalid"]) == ["broken"]


def test_tags_json_matches_hubploy_rule_at_any_rev(two_hub_repo: RepoBuilder):
    first = two_hub_repo.repo.head.commit.hexsha
    second = two_hub_repo.commit("alpha image", {"hubs/alpha/image/Dockerfile": "FROM new\n"})
    code, out, _ = run("tags", "--repo", str(two_hub_repo.path), "--json")
    assert code == 0
    assert json.loads(out) == [
        {"hub": "alpha", "image": "registry.example.org/alpha-image", "tag": tag_from_sha(second)},
        {"hub": "beta", "image": "registry.example.org/beta-image", "tag": tag_from_sha(first)},
    ]
    _, out, _ = run("tags", "--repo", str(two_hub_repo.path), "--rev", first)
    assert out.splitlines()[0] == f"alpha\tregistry.example.org/alpha-image:{tag_from_sha(first)}"


def test_changed_json(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.remove("hubs/alpha")
    new = two_hub_repo.commit("retire alpha, change beta", {"hubs/beta/config/common.yaml": "jupyterhub: {a: 1}\n"})
    code, out, _ = run("changed", old, new, "--repo", str(two_hub_repo.path), "--json")
    assert code == 0 and json.loads(out) == {"changed": ["beta"], "removed": ["alpha"]}
    _, out, _ = run("changed", old, new, "--repo", str(two_hub_repo.path))
    assert out.splitlines() == ["changed\tbeta", "removed\talpha"]


def test_validate_lists_every_problem_and_exits_nonzero(two_hub_repo: RepoBuilder):
    code, out, _ = run("validate", "--repo", str(two_hub_repo.path))
    assert code == 0 and out.startswith("ok: 2 hubs valid")
    two_hub_repo.commit("bad", {"hubs/alpha/hubploy.yaml": "chart: chart\nhelm: {wait: true}\nrollback: x\n"})
    code, _, err = run("validate", "--repo", str(two_hub_repo.path))
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: hubs/alpha/hubploy.yaml@") for line in lines)
    assert "helm.wait: unknown key" in err and "rollback: Input should be" in err


def test_unknown_revision_and_not_a_repository_are_clear_errors(two_hub_repo: RepoBuilder, tmp_path: Path):
    code, _, err = run("tags", "--repo", str(two_hub_repo.path), "--rev", "no-such-branch")
    assert code == 1 and "unknown revision 'no-such-branch'" in err and str(two_hub_repo.path) in err
    code, _, err = run("hubs", "--repo", str(tmp_path / "nowhere"))
    assert code == 1 and "cannot clone" in err and "nowhere" in err


def test_remote_url_is_mirrored_and_read(two_hub_repo: RepoBuilder, tmp_path: Path):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(two_hub_repo.path), str(bare)], check=True)
    code, out, _ = run("hubs", "--repo", f"file://{bare}", "--rev", "staging")
    assert code == 0 and out.splitlines() == ["alpha\thubs/alpha", "beta\thubs/beta"]


def test_schema_and_console_script():
    code, out, _ = run("schema")
    assert code == 0 and json.loads(out)["title"] == "hubploy.yaml"
    script = Path(sys.executable).with_name("hubploy")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert all(cmd in result.stdout for cmd in ("hubs", "tags", "changed", "schema", "validate"))
