"""Image tags equal hubploy's `git log -n 1 -- <image dir>` exactly, on real histories with merges."""

from __future__ import annotations

import json
import random
import re

import pytest
from services.hubploy_reference import hubploy_last_commit
from services.repos import CHART_FILES, RepoBuilder, hub_files

from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.tags import ImageTagIndex, deployment_image_tags, tag_from_sha


@pytest.mark.parametrize(
    ("sha", "tag"),
    [
        ("abcdef0123456789abcdef0123456789abcdef01", "abcdef0"),
        ("123456a789abcdef0123456789abcdef01234567", "123456a"),
        ("1234567a89abcdef0123456789abcdef01234567", "1234567a"),
        ("1234567890123b5678901234567890123456789a", "1234567890123b"),
        ("1234567890123456789012345678901234567890", "1234567890123456789012345678901234567890"),
    ],
)
def test_tag_is_shortest_prefix_of_seven_or_more_with_a_letter(sha: str, tag: str):
    assert tag_from_sha(sha) == tag


def test_tag_of_a_commit_whose_first_seven_characters_are_digits(repo_builder: RepoBuilder):
    """Commits until git gives one whose sha starts with 7 digits; its tag must run to the first letter."""
    repo_builder.commit("initial", {**CHART_FILES, **hub_files("alpha")})
    for attempt in range(2000):
        sha = repo_builder.commit(f"image change {attempt}", {"hubs/alpha/image/Dockerfile": f"FROM x{attempt}\n"})
        if re.match(r"^[0-9]{7}", sha):
            break
    else:
        pytest.fail("no all-digit prefix in 2000 commits")
    repo = repo_builder.open()
    deployment = load_deployment(repo.snapshot("HEAD"))
    [tag] = deployment_image_tags(ImageTagIndex(repo), deployment)
    first_letter = next(i for i, c in enumerate(sha) if c.isalpha())
    assert tag.tag == sha[: first_letter + 1] and len(tag.tag) > 7
    assert tag.reference == f"registry.example.org/alpha-image:{tag.tag}"


def test_tag_is_the_last_commit_touching_the_image_folder(two_hub_repo: RepoBuilder):
    touched = two_hub_repo.commit("alpha image", {"hubs/alpha/image/environment.yml": "dependencies: [numpy]\n"})
    two_hub_repo.commit("alpha config only", {"hubs/alpha/config/common.yaml": "jupyterhub: {hub: {}}\n"})
    two_hub_repo.commit("chart only", {"chart/values.yaml": "jupyterhub: {proxy: {}}\n"})
    repo = two_hub_repo.open()
    tags = {t.hub: t.tag for t in deployment_image_tags(ImageTagIndex(repo), load_deployment(repo.snapshot("HEAD")))}
    assert tags["alpha"] == tag_from_sha(touched)
    assert tags["beta"] == tag_from_sha(repo.resolve("HEAD~3"))


def _random_history(builder: RepoBuilder, seed: int, hubs: list[str], steps: int) -> None:
    """Commits, branches and merges (clean ones, ones taking either side, and evil merges) at random."""
    rng = random.Random(seed)
    builder.commit("initial", {**CHART_FILES, **{k: v for h in hubs for k, v in hub_files(h).items()}})
    branches = ["staging"]
    for step in range(steps):
        action = rng.random()
        current = builder.repo.active_branch.name
        if action < 0.15 and len(branches) < 4:
            name = f"feature-{step}"
            builder.branch(name)
            branches.append(name)
            builder.checkout(name)
        elif action < 0.35 and len(branches) > 1:
            other = rng.choice([b for b in branches if b != current])
            try:
                builder.merge(other)
            except Exception:  # a conflict: resolve by taking ours, an "evil" merge for the conflicting folder
                builder.repo.git.checkout("--ours", ".")
                builder.write({f"hubs/{rng.choice(hubs)}/image/merge-{step}": "resolved\n"})
                builder.commit(f"resolve merge of {other}")
            if rng.random() < 0.5:
                builder.checkout(rng.choice(branches))
        else:
            hub = rng.choice(hubs)
            where = rng.choice(["image/Dockerfile", "image/extra.txt", "config/common.yaml"])
            builder.commit(f"edit {hub} {where}", {f"hubs/{hub}/{where}": f"{seed}-{step}\n"})


@pytest.mark.parametrize("seed", range(6))
def test_single_walk_equals_hubploy_per_folder_git_log_on_random_merge_histories(repo_builder: RepoBuilder, seed):
    hubs = ["a", "b", "c", "d"]
    _random_history(repo_builder, seed, hubs, steps=60)
    repo = repo_builder.open()
    folders = [f"hubs/{h}/image" for h in hubs]
    revs = [c.hexsha for c in repo.git_repo.iter_commits("--all")]
    index = ImageTagIndex(repo)
    merges = 0
    for rev in revs[:40]:
        merges += len(repo.git_repo.commit(rev).parents) > 1
        expected = {f: hubploy_last_commit(repo, rev, f) for f in folders}
        assert ImageTagIndex(repo, index.index_dir.with_name(f"cold-{rev}")).last_commits(rev, folders) == expected
        assert index.last_commits(rev, folders) == expected  # warm: reuses what earlier revs indexed
    assert merges > 0, "the random history should contain merges"


def test_index_is_persistent_and_incremental(two_hub_repo: RepoBuilder):
    repo = two_hub_repo.open()
    index = ImageTagIndex(repo)
    folders = ["hubs/alpha/image", "hubs/beta/image"]
    first = index.last_commits("HEAD", folders)
    stored = json.loads((index.index_dir / f"{repo.resolve('HEAD')}.json").read_text())
    assert stored == first
    new = two_hub_repo.commit("beta image", {"hubs/beta/image/Dockerfile": "FROM other\n"})
    again = ImageTagIndex(repo).last_commits("HEAD", folders)  # a fresh object reads the stored index
    assert again == {"hubs/alpha/image": first["hubs/alpha/image"], "hubs/beta/image": new}


def test_a_file_named_like_a_sha_is_not_taken_for_a_commit(two_hub_repo: RepoBuilder):
    """`git log --name-only` prints file names on their own lines; a 40-hex name must stay a file name."""
    touched = two_hub_repo.commit("alpha image", {"hubs/alpha/image/Dockerfile": "FROM y\n"})
    two_hub_repo.commit("odd file", {"b" * 40: "x\n", f"{'c' * 40} something": "y\n"})
    repo = two_hub_repo.open()
    folders = ["hubs/alpha/image", "hubs/beta/image"]
    expected = {f: hubploy_last_commit(repo, "HEAD", f) for f in folders}
    assert expected["hubs/alpha/image"] == touched
    assert ImageTagIndex(repo).last_commits("HEAD", folders) == expected


def test_folder_never_committed_has_no_tag(two_hub_repo: RepoBuilder):
    repo = two_hub_repo.open()
    assert ImageTagIndex(repo).last_commits("HEAD", ["hubs/nothing/image"]) == {"hubs/nothing/image": None}


def test_user_git_configuration_does_not_change_the_answer(repo_builder: RepoBuilder):
    """log.diffMerges, log.showRoot, colours and decorations must not sway the walk (hubploy's log is immune)."""
    repo_builder.commit("root", {**CHART_FILES, **hub_files("a"), **hub_files("b")})
    repo_builder.branch("feature")
    repo_builder.checkout("feature")
    repo_builder.commit("a on a branch", {"hubs/a/image/Dockerfile": "FROM a2\n"})
    repo_builder.checkout("staging")
    repo_builder.commit("b on staging", {"hubs/b/config/common.yaml": "x: 1\n"})
    repo_builder.merge("feature")
    with repo_builder.repo.config_writer() as config:
        config.set_value("log", "diffMerges", "first-parent")
        config.set_value("log", "showRoot", "false")
        config.set_value("log", "decorate", "full")
        config.set_value("log", "showSignature", "false")
        config.set_value("color", "ui", "always")
    repo = repo_builder.open()
    folders = ["hubs/a/image", "hubs/b/image"]
    expected = {f: hubploy_last_commit(repo, "HEAD", f) for f in folders}
    assert ImageTagIndex(repo).last_commits("HEAD", folders) == expected


def test_a_locked_commit_graph_does_not_lose_the_answer(repo_builder: RepoBuilder, monkeypatch):
    monkeypatch.setattr("hubploy_dagster.tags.COMMIT_GRAPH_AFTER", 0)
    repo_builder.commit("root", {**CHART_FILES, **hub_files("a")})
    lock = repo_builder.path / ".git/objects/info/commit-graphs/commit-graph-chain.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("held by another writer")
    repo = repo_builder.open()
    index = ImageTagIndex(repo)
    assert index.last_commits("HEAD", ["hubs/a/image"]) == {"hubs/a/image": repo.resolve("HEAD")}
    assert (index.index_dir / f"{repo.resolve('HEAD')}.json").exists()
