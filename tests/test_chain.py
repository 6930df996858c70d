"""The chain of environments: repository configuration, or today's staging -> prod."""

from __future__ import annotations

import git
import pytest
from services.repos import RepoBuilder

from hubploy_dagster.chain import CHAIN_FILE, UnknownEnvironmentError, default_chain, load_chain, repository_chain
from hubploy_dagster.errors import ConfigError
from hubploy_dagster.repo import DeploymentRepo


def chain_at(builder: RepoBuilder, text: str | None):
    builder.commit("chain", {CHAIN_FILE: text} if text is not None else {"README": "no chain file\n"})
    return load_chain(builder.open().snapshot("HEAD"), ("main", "live"))


def test_without_the_file_the_chain_is_staging_then_prod_on_hubploy_branches(repo_builder: RepoBuilder):
    chain = chain_at(repo_builder, None)
    assert chain.names == ("staging", "prod") and chain.branches == {"staging": "main", "prod": "live"}
    assert chain.first == "staging" and chain.before("prod") == "staging" and chain.before("staging") is None
    assert default_chain().branches == {"staging": "staging", "prod": "prod"}


def test_three_environments_each_gated_on_the_one_before(repo_builder: RepoBuilder):
    chain = chain_at(repo_builder, "environments:\n- name: develop\n- name: staging\n  branch: main\n- name: prod\n")
    assert chain.names == ("develop", "staging", "prod")
    assert chain.branches == {"develop": "develop", "staging": "main", "prod": "prod"}
    assert [chain.before(env) for env in chain.names] == [None, "develop", "staging"]
    with pytest.raises(
        UnknownEnvironmentError, match=r"'qa' is not in hubploy-environments.yaml@\w+: develop -> staging -> prod"
    ):
        chain.require("qa")


def test_one_environment_has_no_gate(repo_builder: RepoBuilder):
    chain = chain_at(repo_builder, "environments: [{name: prod, branch: main}]\n")
    assert chain.names == ("prod",) and chain.first == "prod" and chain.before("prod") is None


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("environments: []\n", "environments", "at least 1"),
        ("environments: [{name: Prod}]\n", "environments.0.name", "lowercase letters"),
        ("environments: [{name: a}, {name: a}]\n", "environments", "repeat"),
        ("environments: [{name: a}, {name: b, branch: a}]\n", "environments", "one branch"),
        ("environments: [{name: a, brnch: x}]\n", "environments.0.brnch", "unknown key"),
        ("environments: [\n", "", "invalid YAML"),
    ],
)
def test_a_bad_chain_file_names_the_file_key_and_reason(repo_builder: RepoBuilder, text: str, key: str, reason: str):
    with pytest.raises(ConfigError) as caught:
        chain_at(repo_builder, text)
    [problem] = caught.value.problems
    assert problem.file.startswith(CHAIN_FILE) and problem.key == key and reason in problem.reason, problem


def test_the_code_location_reads_the_chain_at_head_or_else_the_first_branch(repo_builder: RepoBuilder, tmp_path):
    """A bare repository whose HEAD names a branch never pushed: the chain comes from the first branch."""
    repo_builder.commit("chain", {CHAIN_FILE: "environments: [{name: live, branch: staging}]\n"})
    bare = tmp_path / "origin.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    repo_builder.repo.git.push(str(bare), "staging:refs/heads/staging")
    assert repository_chain(DeploymentRepo(str(bare)), ("staging", "prod")).names == ("live",)
    assert repository_chain(repo_builder.open()).names == ("live",), "HEAD (staging) holds the file"
    empty = tmp_path / "empty.git"
    git.Repo.init(empty, bare=True)
    assert repository_chain(DeploymentRepo(str(empty))).names == ("staging", "prod")
