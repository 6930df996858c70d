"""hubploy's secrets submodule: real superprojects with a real `secrets` submodule, read from git objects.

hubploy reads `secrets/deployments/<hub>/secrets/<env>.yaml` from a submodule at `secrets/`. Every file here is
read at a commit, never from a work tree, so the submodule's files come from the commit the superproject pins,
found in a clone's own `.git/modules/` or fetched from the URL `.gitmodules` gives.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import git
import pytest
from git.objects import Blob, Tree
from services.repos import CHART_FILES, RepoBuilder, hub_files, new_age_key, sops_encrypt

from hubploy_dagster.changes import change_set
from hubploy_dagster.deployment import load_deployment
from hubploy_dagster.release import DeployOptions, prepared_release, require_chart
from hubploy_dagster.repo import DeploymentRepo, Gitlink, SubmoduleError, resolve_submodule_url
from hubploy_dagster.secrets import Masker, SecretError, Sops, decrypted_files
from hubploy_dagster.session import HubSession

SECRET_FILE = "secrets/deployments/{hub}/secrets/staging.yaml"
GIT_CRYPT_CONTENT = b"\x00GITCRYPT\x00" + bytes(range(1, 200))


class SecretsSetup:
    """A secrets repository (`secrets_source`) and a deployment repository using it as its `secrets` submodule."""

    def __init__(self, tmp_path: Path, url: str | None = None, hub_extra: str = ""):
        self.tmp_path = tmp_path
        self.key, self.recipient = new_age_key(tmp_path)
        self.source = RepoBuilder(tmp_path / "secrets-src")
        self.source.commit("secrets", {**self.secret("alpha", "alpha-cookie-1"), **self.secret("beta", "beta-cookie")})
        self.deploy = RepoBuilder(tmp_path / "deploy-repo")
        hubs = {**hub_files("alpha", extra=hub_extra), **hub_files("beta", extra=hub_extra)}
        self.before = self.deploy.commit("hubs", {**CHART_FILES, **hubs})
        self.deploy.repo.git(c="protocol.file.allow=always").submodule("add", url or str(self.source.path), "secrets")
        self.first = self.deploy.commit("secrets submodule")

    def secret(self, hub: str, cookie: str) -> dict[str, str]:
        plaintext = f"jupyterhub:\n  hub:\n    cookieSecret: {cookie}\n"
        return {f"deployments/{hub}/secrets/staging.yaml": sops_encrypt(self.tmp_path, self.recipient, plaintext)}

    @property
    def checkout(self) -> git.Repo:
        return git.Repo(self.deploy.path / "secrets")

    def bump(self, files: dict[str, str], push: bool = True) -> str:
        """A new secrets commit (pushed to the source, or only in the superproject's checkout) and the new pin."""
        if push:
            self.source.commit("rotate", files)
            self.checkout.git.fetch("origin")
            self.checkout.git.checkout("--detach", "origin/staging")
        else:
            for name, content in files.items():
                (self.deploy.path / "secrets" / name).write_text(content)
            commit_in(self.checkout, "local only")
        return self.deploy.commit("bump secrets")

    def bare_clone(self) -> Path:
        """The superproject as a deployment server holds it: bare, with no submodule objects of its own."""
        target = self.tmp_path / "deploy-repo.git"
        if target.exists():
            self.deploy.repo.git.push(str(target), "--force", "staging")
        else:
            git.Repo.clone_from(self.deploy.path, target, bare=True)
        return target

    def read_decrypted(self, repo: DeploymentRepo, sha: str, hub: str) -> str:
        snapshot = repo.snapshot(sha)
        path = SECRET_FILE.format(hub=hub)
        content = snapshot.read(path)
        assert content is not None
        with decrypted_files([(path, content)], Sops(age_key_file=str(self.key)), Masker()) as [plain]:
            return plain.read_text()


def commit_in(checkout: git.Repo, message: str) -> None:
    """A commit in the superproject's submodule checkout (not pushed anywhere)."""
    checkout.git.add("--all")
    checkout.git(c=["user.name=Test Operator", "user.email=operator@example.org"]).commit("-q", "-m", message)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()


def mirrors(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "hubploy-dagster" / "mirrors"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_local_clone_reads_its_own_submodule_copy(tmp_path: Path):
    """Hub discovery lists past the gitlink; values come from .git/modules at the pinned commit, no fetch."""
    setup = SecretsSetup(tmp_path)
    repo = setup.deploy.open()
    deployment = load_deployment(repo.snapshot(setup.first))

    assert sorted(deployment.hubs) == ["alpha", "beta"] and not deployment.problems
    root = {entry.name: entry for entry in deployment.snapshot.list_dir("")}
    assert isinstance(root["secrets"], Gitlink) and root["secrets"].hexsha == setup.source.repo.head.commit.hexsha
    assert deployment.snapshot.is_dir("secrets")
    assert [f.path for f in deployment.values_files(deployment.hubs["alpha"], "staging")] == [
        "hubs/alpha/config/common.yaml",
        "hubs/alpha/config/staging.yaml",
        SECRET_FILE.format(hub="alpha"),
    ]
    assert "cookieSecret: alpha-cookie-1" in setup.read_decrypted(repo, setup.first, "alpha")
    assert mirrors(tmp_path) == []
    # what `hubploy validate` walks: the submodule's folders as trees whose paths are the superproject's
    folder = deployment.snapshot.entry("secrets/deployments/alpha/secrets")
    assert isinstance(folder, Tree)
    assert [item.path for item in folder.traverse() if isinstance(item, Blob)] == [SECRET_FILE.format(hub="alpha")]


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-url", "relative-url"])
@pytest.mark.parametrize("as_url", [False, True], ids=["bare-path", "file-url-mirror"])
def test_bare_deployment_repository_fetches_the_submodule(tmp_path: Path, relative: bool, as_url: bool):
    """A bare repository or a mirrored URL has no submodule objects: the pinned commit is fetched from .gitmodules."""
    setup = SecretsSetup(tmp_path, url="../secrets-src" if relative else None)
    bare = setup.bare_clone()
    repo = DeploymentRepo(f"file://{bare}" if as_url else bare)
    deployment = load_deployment(repo.snapshot(setup.first))

    assert sorted(deployment.hubs) == ["alpha", "beta"]
    assert SECRET_FILE.format(hub="beta") in [
        f.path for f in deployment.values_files(deployment.hubs["beta"], "staging")
    ]
    assert "cookieSecret: beta-cookie" in setup.read_decrypted(repo, setup.first, "beta")
    # a relative URL of a mirrored superproject is a URL too: mirrored beside the superproject's own mirror
    assert len(mirrors(tmp_path)) == int(as_url) + int(as_url and relative)


def test_relative_urls_resolve_as_git_resolves_them():
    assert resolve_submodule_url("../secrets.git", "https://git.example.org/org/deploy.git") == (
        "https://git.example.org/org/secrets.git"
    )
    assert resolve_submodule_url("../secrets.git", "git@github.com:org/deploy.git") == "git@github.com:org/secrets.git"
    assert resolve_submodule_url("../../other/s", "ssh://h/org/deploy/") == "ssh://h/other/s"
    assert resolve_submodule_url("./s", "/srv/deploy") == "/srv/deploy/s"
    assert resolve_submodule_url("../s", "git@h:deploy") == "git@h:s"
    assert resolve_submodule_url("https://x/s.git", "/srv/deploy") == "https://x/s.git"


def test_bumping_the_pin_changes_only_the_hub_whose_files_moved(tmp_path: Path):
    """Fingerprints and change sets see inside the submodule: alpha's rotated secret redeploys alpha alone."""
    setup = SecretsSetup(tmp_path)
    bare = setup.bare_clone()
    repo = DeploymentRepo(f"file://{bare}")
    before = load_deployment(repo.snapshot(setup.first))
    fingerprints = {name: before.fingerprint(hub) for name, hub in before.hubs.items()}

    new = setup.bump(setup.secret("alpha", "alpha-cookie-2"))
    setup.bare_clone()
    repo.fetch()
    after = load_deployment(repo.snapshot(new))

    assert after.fingerprint(after.hubs["alpha"]) != fingerprints["alpha"]
    assert after.fingerprint(after.hubs["beta"]) == fingerprints["beta"]
    assert change_set(repo, setup.first, new).changed == ["alpha"]
    assert "cookieSecret: alpha-cookie-2" in setup.read_decrypted(repo, new, "alpha")
    # adding the submodule at all changes both hubs: both gained a secrets file
    assert change_set(repo, setup.before, setup.first).changed == ["alpha", "beta"]


def test_archives_of_and_inside_submodules(tmp_path: Path):
    """A folder inside the submodule is archived from the pinned commit; a folder holding one archives."""
    setup = SecretsSetup(tmp_path)
    repo = DeploymentRepo(setup.bare_clone())
    assert "secrets/staging.yaml" in tar_names(repo.archive(setup.first, "secrets/deployments/alpha"))
    whole = tar_names(repo.archive(setup.first, ""))
    assert "secrets" in whole and "hubs/alpha/hubploy.yaml" in whole


@pytest.mark.parametrize("fault", ["url-unreachable", "commit-not-pushed"])
def test_unreadable_submodule_is_a_clear_error_for_the_hubs_reading_it(tmp_path: Path, fault: str):
    """Discovery and fingerprints still work; reading a hub's submodule values names path, URL and commit."""
    setup = SecretsSetup(tmp_path)
    old = setup.first
    if fault == "url-unreachable":
        new = setup.bump(setup.secret("alpha", "alpha-cookie-2"))
        bare = setup.bare_clone()
        shutil.rmtree(setup.source.path)
        url = str(setup.source.path)
    else:
        new = setup.bump(setup.secret("alpha", "alpha-cookie-2"), push=False)
        bare = setup.bare_clone()
        url = str(setup.source.path)
    pin = git.Repo(bare).commit(new).tree["secrets"].hexsha
    repo = DeploymentRepo(bare)
    deployment = load_deployment(repo.snapshot(new))

    assert sorted(deployment.hubs) == ["alpha", "beta"] and not deployment.problems
    with pytest.raises(SubmoduleError) as caught:
        deployment.values_files(deployment.hubs["alpha"], "staging")
    message = str(caught.value)
    assert "submodule secrets" in message and url in message and pin in message
    assert deployment.fingerprint(deployment.hubs["alpha"]) != load_deployment(repo.snapshot(old)).fingerprint(
        deployment.hubs["alpha"]
    )
    # every hub with inputs under the unreadable submodule may have changed: deployed, and failing by name
    assert change_set(repo, old, new).changed == ["alpha", "beta"]


def test_unreadable_submodule_fails_only_the_hubs_that_need_it(tmp_path: Path):
    """A hub whose chart is in an unreachable submodule is refused with the error where the chart is used (a
    build needs no chart: issue 15); the other hub is unaffected."""
    vendor = RepoBuilder(tmp_path / "vendor-src")
    vendor.commit("chart", {f"chart/{name}": content for name, content in CHART_FILES.items()})
    deploy = RepoBuilder(tmp_path / "deploy-repo")
    old = deploy.commit("alpha", {**CHART_FILES, **hub_files("alpha")})
    deploy.repo.git(c="protocol.file.allow=always").submodule("add", str(vendor.path), "vendored")
    gamma = hub_files("gamma")
    gamma["hubs/gamma/hubploy.yaml"] = gamma["hubs/gamma/hubploy.yaml"].replace("chart: chart", "chart: vendored/chart")
    new = deploy.commit("gamma with a vendored chart", gamma)
    bare = tmp_path / "deploy-repo.git"
    git.Repo.clone_from(deploy.path, bare, bare=True)
    repo = DeploymentRepo(bare)
    assert sorted(load_deployment(repo.snapshot(new)).hubs) == ["alpha", "gamma"]

    shutil.rmtree(vendor.path)
    deployment = load_deployment(DeploymentRepo(bare).snapshot(new))
    assert sorted(deployment.hubs) == ["alpha", "gamma"] and not deployment.problems
    with pytest.raises(SubmoduleError) as caught:
        require_chart(deployment, deployment.hubs["gamma"])
    assert "submodule vendored" in str(caught.value) and str(vendor.path) in str(caught.value)
    require_chart(deployment, deployment.hubs["alpha"])
    assert deployment.fingerprint(deployment.hubs["alpha"])
    assert [f.path for f in deployment.values_files(deployment.hubs["alpha"], "staging")][-1].startswith("hubs/alpha")
    changes = change_set(DeploymentRepo(bare), old, new)
    assert changes.changed == ["gamma"] and not changes.problems, "gamma is new; its deploy fails by name"


def test_git_crypt_files_are_refused_by_name(tmp_path: Path):
    """git-crypt ciphertext is what git objects hold: refused naming the file, never decrypted or passed on."""
    setup = SecretsSetup(tmp_path, hub_extra="secrets:\n  encryption: external\n")
    (setup.deploy.path / "secrets/deployments/alpha/secrets/staging.yaml").write_bytes(GIT_CRYPT_CONTENT)
    commit_in(setup.checkout, "git-crypt")
    (setup.deploy.path / "hubs/beta/secrets").mkdir()
    (setup.deploy.path / "hubs/beta/secrets/staging.yaml").write_bytes(GIT_CRYPT_CONTENT)
    new = setup.deploy.commit("git-crypt files")
    repo = setup.deploy.open()
    deployment = load_deployment(repo.snapshot(new))

    [problem] = deployment.invalid["beta"]
    assert problem.file.startswith("hubs/beta/secrets/staging.yaml@") and "git-crypt" in problem.reason
    alpha = deployment.hubs["alpha"]
    path = SECRET_FILE.format(hub="alpha")
    assert deployment.snapshot.read(path) == GIT_CRYPT_CONTENT
    options = DeployOptions()
    with (
        pytest.raises(
            SecretError, match=r"secrets/deployments/alpha/secrets/staging\.yaml@\w+ is encrypted with git-crypt"
        ),
        prepared_release(HubSession(deployment, alpha, "staging", Sops(), print), options, [], False),
    ):
        pytest.fail("a git-crypt file reached the release")

    # a plain values file under git-crypt is refused too, before helm ever sees it
    (setup.deploy.path / "hubs/alpha/config/staging.yaml").write_bytes(GIT_CRYPT_CONTENT)
    plain = setup.deploy.commit("git-crypt config")
    deployment = load_deployment(repo.snapshot(plain))
    with (
        pytest.raises(SecretError, match=r"hubs/alpha/config/staging\.yaml@\w+ is encrypted with git-crypt.*sops"),
        prepared_release(HubSession(deployment, alpha, "staging", Sops(), print), options, [], False),
    ):
        pytest.fail("a git-crypt values file reached the release")
