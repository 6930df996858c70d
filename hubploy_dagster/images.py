"""Building and pushing a hub's user image, as `hubploy build --check-registry --push` does, but never twice.

The tag is hubploy's (the last commit touching the image folder): if the registry has it, there is nothing to do.
Otherwise the image is built from the folder *as committed* (a `git archive` at the pinned commit, never a work
tree), with the newest earlier tag in the registry as cache, then pushed and verified.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import docker
import docker.errors

from hubploy_dagster.config import ImageSpec, Repo2DockerSettings
from hubploy_dagster.errors import HubployError
from hubploy_dagster.registry import ImageName, RegistryClient
from hubploy_dagster.repo import DeploymentRepo, Snapshot, extract_tar
from hubploy_dagster.secrets import private_dir
from hubploy_dagster.settings import DEFAULT_DOCKER_HOST, current
from hubploy_dagster.tags import tag_from_sha
from hubploy_dagster.tools import find_tool

CACHE_LOOKBACK = 15
LOG_TAIL_LINES = 20

Log = Callable[[str], None]
AuthConfig = Callable[[str], dict[str, str] | None]  # registry host -> the engine's `auth_config`, or None


class DockerEngineError(HubployError):
    """The Docker engine does not answer."""


def docker_client(base_url: str | None = None) -> docker.DockerClient:
    """A client of the Docker engine at `base_url` (default: DOCKER_HOST, else the local socket), which answered."""
    address = base_url or current().docker_host or DEFAULT_DOCKER_HOST
    try:
        client = docker.DockerClient(base_url=address)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerEngineError(f"the Docker engine at {address} does not answer: {exc}") from None
    return client


class BuildError(HubployError):
    """The image did not build; carries the last lines of the build log."""


class PushError(HubployError):
    """The image built but did not reach the registry intact."""


@dataclass(frozen=True)
class BuildOptions:
    """hubploy's `--no-cache`, `--push` and `--check-registry`, and build arguments (e.g. a local BASE_IMAGE)."""

    no_cache: bool = False
    build_args: dict[str, str] = field(default_factory=dict)
    push: bool = True
    check_registry: bool = True


@dataclass(frozen=True)
class ImageResult:
    image: str
    tag: str
    digest: str | None
    built: bool
    pushed: bool
    build_seconds: float = 0.0
    cache_from: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.image}:{self.tag}"


def earlier_tags(repo: DeploymentRepo, sha: str, folder: str, limit: int = CACHE_LOOKBACK) -> list[str]:
    """The tags of the `limit` commits before the newest one that touched the folder (hubploy's cache walk)."""
    output = repo.git_repo.git.log(f"-n{limit + 1}", "--pretty=format:%H", sha, "--", folder)
    return [tag_from_sha(commit) for commit in output.split()[1:]]


@dataclass(frozen=True)
class DockerfileRecipe:
    """An image folder with a Dockerfile, built by the Docker engine from the committed folder."""

    label: str
    context: Callable[[], bytes]


@dataclass(frozen=True)
class Repo2DockerRecipe:
    """An image folder without a Dockerfile but with repo2docker files (environment.yml, requirements.txt...)."""

    label: str
    context: Callable[[], bytes]
    settings: Repo2DockerSettings


Recipe = DockerfileRecipe | Repo2DockerRecipe
REPO2DOCKER_FILES = (
    "environment.yml",
    "requirements.txt",
    "Project.toml",
    "REQUIRE",
    "install.R",
    "apt.txt",
    "postBuild",
)


def recipe_for(repo: DeploymentRepo, snapshot: Snapshot, image: ImageSpec, folder: str) -> Recipe:
    """How the committed image folder is built; a folder neither Docker nor repo2docker can build is refused."""
    label = snapshot.describe(folder)

    def context() -> bytes:
        return repo.archive(snapshot.sha, folder)

    if snapshot.exists(f"{folder}/Dockerfile"):
        return DockerfileRecipe(label, context)
    if image.repo2docker is not None or any(snapshot.exists(f"{folder}/{name}") for name in REPO2DOCKER_FILES):
        return Repo2DockerRecipe(label, context, image.repo2docker or Repo2DockerSettings())
    raise BuildError(f"{label}: the image folder has no Dockerfile (and no repo2docker files either)")


class ImageBuilder:
    """Ensures one image tag exists in the registry, building and pushing it only when it does not."""

    def __init__(self, docker_client: docker.DockerClient, registry: RegistryClient, auth_config: AuthConfig, log: Log):
        self.docker = docker_client
        self.registry = registry
        self.auth_config = auth_config
        self.log = log

    def ensure(
        self, image: str, tag: str, recipe: Recipe, cache_tags: Iterable[str], options: BuildOptions
    ) -> ImageResult:
        digest = self.registry.manifest_digest(image, tag) if options.check_registry else None
        if digest is not None:
            self.log(f"{image}:{tag} is already in the registry ({digest}): not building it again")
            return ImageResult(image, tag, digest, built=False, pushed=False)
        cache_from = None if options.no_cache else self._pull_cache(image, cache_tags)
        started = time.monotonic()
        if isinstance(recipe, Repo2DockerRecipe):
            self._build_with_repo2docker(f"{image}:{tag}", recipe, cache_from)
        else:
            self._build(f"{image}:{tag}", recipe.context(), cache_from, options)
        seconds = round(time.monotonic() - started, 3)
        digest = self._push(image, tag) if options.push else None
        return ImageResult(
            image, tag, digest, built=True, pushed=options.push, build_seconds=seconds, cache_from=cache_from
        )

    def _pull_cache(self, image: str, cache_tags: Iterable[str]) -> str | None:
        for tag in cache_tags:
            if self.registry.exists(image, tag):
                self.log(f"pulling {image}:{tag} to use as build cache")
                try:
                    self.docker.api.pull(image, tag=tag, auth_config=self.auth_config(ImageName.parse(image).host))
                except docker.errors.APIError as exc:
                    self.log(f"could not pull cache image {image}:{tag}, building without it: {exc.explanation}")
                    return None
                return f"{image}:{tag}"
        self.log(f"no earlier tag of {image} in the registry: building without cache")
        return None

    def _build(self, reference: str, context: bytes, cache_from: str | None, options: BuildOptions) -> None:
        self.log(f"building {reference}" + (f" with cache from {cache_from}" if cache_from else ""))
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        try:
            stream = self.docker.api.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                tag=reference,
                buildargs=options.build_args or None,
                cache_from=[cache_from] if cache_from else None,
                nocache=options.no_cache,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                for line in str(chunk.get("stream", "")).splitlines():
                    if line.strip():
                        tail.append(line)
                        self.log(line)
                if "error" in chunk:
                    tail.append(str(chunk["error"]).strip())
                    raise BuildError(f"build of {reference} failed:\n" + "\n".join(tail))
        except docker.errors.APIError as exc:
            raise BuildError(f"build of {reference} failed: {exc.explanation or exc}") from None

    def _build_with_repo2docker(self, reference: str, recipe: Repo2DockerRecipe, cache_from: str | None) -> None:
        """hubploy's classic builder, for image folders written for repo2docker rather than with a Dockerfile."""
        binary = find_tool("repo2docker", f"building {recipe.label} (no Dockerfile, repo2docker files)")
        settings = recipe.settings
        with private_dir("hubploy-r2d-") as folder:
            extract_tar(recipe.context(), folder)
            command = [
                binary, "--no-run", "--image-name", reference,
                "--user-id", str(settings.user_id), "--user-name", settings.user_name,
                "--target-repo-dir", "/srv/repo",
            ]  # fmt: skip
            if cache_from:
                command += ["--cache-from", cache_from]
            if settings.base_image:
                command.append(f"--Repo2Docker.base_image={settings.base_image}")
            self.log(f"building {reference} with repo2docker")
            tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
            with subprocess.Popen(
                [*command, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    tail.append(line.rstrip())
                    self.log(line.rstrip())
            if process.returncode != 0:
                raise BuildError(f"repo2docker build of {reference} failed:\n" + "\n".join(tail))

    def _push(self, image: str, tag: str) -> str:
        host = ImageName.parse(image).host
        self.log(f"pushing {image}:{tag} to {host}")
        digest = None
        try:
            stream = self.docker.api.push(image, tag=tag, stream=True, decode=True, auth_config=self.auth_config(host))
            for chunk in stream:
                if "error" in chunk:
                    raise PushError(f"push of {image}:{tag} to {host} failed: {str(chunk['error']).strip()}")
                digest = chunk.get("aux", {}).get("Digest", digest)
        except docker.errors.APIError as exc:
            raise PushError(f"push of {image}:{tag} to {host} failed: {exc.explanation or exc}") from None
        in_registry = self.registry.manifest_digest(image, tag)
        if digest is None or in_registry != digest:
            raise PushError(f"push of {image}:{tag} to {host}: registry has {in_registry}, the push reported {digest}")
        self.log(f"pushed {image}:{tag} ({digest})")
        return digest
