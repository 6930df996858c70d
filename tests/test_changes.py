"""Change sets between two commits: exactly the hubs whose inputs' content differs."""

from __future__ import annotations

from services.repos import RepoBuilder, hub_files

from hubploy_dagster.changes import change_set


def names(builder: RepoBuilder, old: str | None, new: str) -> tuple[list[str], list[str]]:
    changes = change_set(builder.open(), old, new)
    return changes.changed, changes.removed


def test_ordinary_commit_changes_one_hub(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    new = two_hub_repo.commit("alpha values", {"hubs/alpha/config/staging.yaml": "jupyterhub: {hub: {}}\n"})
    assert names(two_hub_repo, old, new) == (["alpha"], [])


def test_unrelated_change_changes_nothing(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    new = two_hub_repo.commit("docs", {"docs/index.md": "hello\n", "README.md": "x\n"})
    assert names(two_hub_repo, old, new) == ([], [])


def test_chart_change_changes_every_hub(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    new = two_hub_repo.commit("bump chart", {"chart/Chart.yaml": "apiVersion: v2\nname: hub\nversion: 0.2.0\n"})
    assert names(two_hub_repo, old, new) == (["alpha", "beta"], [])


def test_watch_paths_and_hub_specific_chart(two_hub_repo: RepoBuilder):
    old = two_hub_repo.commit(
        "beta uses its own chart and watches shared/",
        {
            **hub_files("beta", extra="watch_paths: [shared/beta-extras]\n"),
            "hubs/beta/hubploy.yaml": "images: {image_name: x/beta}\nchart: beta-chart\nwatch_paths: [shared/extras]\n",
            "beta-chart/Chart.yaml": "apiVersion: v2\nname: beta\nversion: 1.0.0\n",
        },
    )
    assert names(two_hub_repo, old, two_hub_repo.commit("c", {"shared/extras/x.yaml": "1\n"})) == (["beta"], [])
    old = two_hub_repo.repo.head.commit.hexsha
    assert names(two_hub_repo, old, two_hub_repo.commit("c", {"beta-chart/values.yaml": "a: 1\n"})) == (["beta"], [])
    old = two_hub_repo.repo.head.commit.hexsha
    assert names(two_hub_repo, old, two_hub_repo.commit("c", {"chart/values.yaml": "a: 2\n"})) == (["alpha"], [])


def test_merge_of_a_feature_branch(two_hub_repo: RepoBuilder):
    base = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.branch("feature")
    two_hub_repo.checkout("feature")
    two_hub_repo.commit("beta image", {"hubs/beta/image/Dockerfile": "FROM new\n"})
    two_hub_repo.checkout("staging")
    two_hub_repo.commit("unrelated on staging", {"notes.txt": "x\n"})
    merged = two_hub_repo.merge("feature")
    assert names(two_hub_repo, base, merged) == (["beta"], [])


def test_new_hub_and_removed_hub(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.write(hub_files("gamma"))
    two_hub_repo.remove("hubs/beta")
    new = two_hub_repo.commit("add gamma, retire beta")
    changes = change_set(two_hub_repo.open(), old, new)
    assert (changes.changed, changes.added, changes.removed) == (["gamma"], ["gamma"], ["beta"])


def test_rename_is_a_removal_and_a_new_hub(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.repo.git.mv("hubs/beta", "hubs/beta2")
    new = two_hub_repo.commit("rename beta")
    assert names(two_hub_repo, old, new) == (["beta2"], ["beta"])


def test_image_folder_rename_changes_the_hub(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.repo.git.mv("hubs/alpha/image", "hubs/alpha/user-image")
    two_hub_repo.write({"hubs/alpha/hubploy.yaml": "images: {images: [{name: x/a, path: user-image}]}\nchart: chart\n"})
    new = two_hub_repo.commit("move alpha image")
    assert names(two_hub_repo, old, new) == (["alpha"], [])


def test_force_push_to_unrelated_history_compares_trees(two_hub_repo: RepoBuilder, tmp_path):
    old = two_hub_repo.commit(
        "alpha and beta change", {"hubs/alpha/image/x": "1\n", "hubs/beta/config/common.yaml": "b\n"}
    )
    # an orphan history whose tree equals `old` except for alpha's image: only alpha differs
    two_hub_repo.repo.git.checkout("--orphan", "rewritten")
    new = two_hub_repo.commit("rewritten history", {"hubs/alpha/image/x": "2\n"})
    changes = change_set(two_hub_repo.open(), old, new)
    assert changes.force_push and (changes.changed, changes.removed) == (["alpha"], [])


def test_force_push_back_to_an_older_commit(two_hub_repo: RepoBuilder):
    older = two_hub_repo.repo.head.commit.hexsha
    newer = two_hub_repo.commit("beta change", {"hubs/beta/config/staging.yaml": "jupyterhub: {x: 1}\n"})
    changes = change_set(two_hub_repo.open(), newer, older)
    assert changes.force_push and changes.changed == ["beta"]


def test_change_reverted_within_the_range_changes_nothing(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    two_hub_repo.commit("try", {"hubs/alpha/config/common.yaml": "jupyterhub: {tried: 1}\n"})
    two_hub_repo.repo.git.revert("--no-edit", "HEAD")
    assert names(two_hub_repo, old, two_hub_repo.repo.head.commit.hexsha) == ([], [])


def test_first_deploy_changes_every_valid_hub_and_reports_invalid_ones(two_hub_repo: RepoBuilder):
    new = two_hub_repo.commit("bad", {"hubs/broken/hubploy.yaml": "images: [\n"})
    changes = change_set(two_hub_repo.open(), None, new)
    assert changes.changed == ["alpha", "beta"]
    assert [p.file.split("@")[0] for p in changes.problems] == ["hubs/broken/hubploy.yaml"]


def test_a_hub_becoming_invalid_is_not_reported_removed(two_hub_repo: RepoBuilder):
    old = two_hub_repo.repo.head.commit.hexsha
    new = two_hub_repo.commit("typo", {"hubs/beta/hubploy.yaml": "imagez: {}\n"})
    changes = change_set(two_hub_repo.open(), old, new)
    assert (changes.changed, changes.removed) == ([], [])
    assert [p.key for p in changes.problems] == ["imagez"]
