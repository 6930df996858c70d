"""The hubs of a deployment repository at one commit, in hubploy's layout.

A hub is a folder `<root>/<hub>/` holding `hubploy.yaml`, where `<root>` is `hubs/` (new repositories) or
`deployments/` (existing hubploy repositories). Everything a deploy of a hub depends on is named here: its
image folders, its values files in hubploy's order, and the repository paths whose content is its
configuration (its fingerprint), which is what change detection and the promotion gate compare.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from hubploy_dagster.config import HubployConfig, ImageSpec, load_hubploy_config
from hubploy_dagster.errors import ConfigError, ConfigProblem, UnknownHubError
from hubploy_dagster.repo import Snapshot, SubmoduleError
from hubploy_dagster.secrets import secret_file_problem

HUB_ROOTS = ("hubs", "deployments")
CONFIG_FILE = "hubploy.yaml"


@dataclass(frozen=True)
class ValuesFile:
    path: str
    secret: bool


@dataclass(frozen=True)
class Hub:
    name: str
    root: str
    config: HubployConfig

    @property
    def path(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def config_path(self) -> str:
        return f"{self.path}/{CONFIG_FILE}"

    def images(self) -> list[ImageSpec]:
        return self.config.image_specs()

    def image_dir(self, image: ImageSpec) -> str:
        return f"{self.path}/{image.path}"

    def release_name(self, env: str) -> str:
        settings = self.config.environments.get(env)
        return (settings and settings.release) or f"{self.name}-{env}"

    def namespace(self, env: str) -> str:
        settings = self.config.environments.get(env)
        return (settings and settings.namespace) or f"{self.name}-{env}"

    def url(self, env: str) -> str | None:
        settings = self.config.environments.get(env)
        return settings.url if settings else None

    @property
    def cluster(self) -> str:
        """The cluster the hub deploys to: its `cluster` block's, else the kubeconfig's current context."""
        return self.config.cluster.identity() if self.config.cluster else "current-context"

    def values_candidates(self, env: str) -> list[ValuesFile]:
        """hubploy's order: common, env, decrypted env secrets, then the secrets-submodule copy."""
        return [
            ValuesFile(f"{self.path}/config/common.yaml", secret=False),
            ValuesFile(f"{self.path}/config/{env}.yaml", secret=False),
            ValuesFile(f"{self.path}/secrets/{env}.yaml", secret=True),
            ValuesFile(f"secrets/deployments/{self.name}/secrets/{env}.yaml", secret=True),
        ]

    def input_paths(self) -> list[str]:
        """Repository paths whose content makes up this hub's configuration."""
        return sorted({self.path, self.config.chart, f"secrets/deployments/{self.name}", *self.config.watch_paths})


@lru_cache(maxsize=8192)
def _parse_config(blob_id: str, text: bytes) -> HubployConfig | tuple[tuple[str, str], ...]:
    """Parse a hubploy.yaml once per distinct content: most commits leave most hubs' configs unchanged."""
    try:
        return load_hubploy_config(text, CONFIG_FILE)
    except ConfigError as exc:
        return tuple((p.key, p.reason) for p in exc.problems)


@dataclass
class Deployment:
    """Every hub found at one commit, and every problem that kept a hub folder from being one."""

    snapshot: Snapshot
    hubs: dict[str, Hub] = field(default_factory=dict)
    invalid: dict[str, list[ConfigProblem]] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return self.snapshot.sha

    @property
    def problems(self) -> list[ConfigProblem]:
        return [problem for name in sorted(self.invalid) for problem in self.invalid[name]]

    def hub(self, name: str) -> Hub:
        if name not in self.hubs:
            if name in self.invalid:
                raise ConfigError(self.invalid[name])
            raise UnknownHubError(name, list(self.hubs), f"commit {self.sha[:7]}")
        return self.hubs[name]

    def values_files(self, hub: Hub, env: str) -> list[ValuesFile]:
        """The values files that exist at this commit; missing ones are skipped, as hubploy does."""
        return [f for f in hub.values_candidates(env) if self.snapshot.exists(f.path)]

    def fingerprint(self, hub: Hub) -> str:
        """A digest of the content of the hub's inputs: equal fingerprints mean an identical deploy.

        An input's id is its object id; inside a submodule, that of the pinned commit's tree (only this hub's
        files). An unreadable submodule's pin stands in: the hub is still deployed and that deploy fails naming
        the URL, where failing here would stop the sensor for every hub.
        """
        digest = hashlib.sha256()
        for path in hub.input_paths():
            try:
                content_id = self.snapshot.object_id(path) or "-"
            except SubmoduleError as exc:
                content_id = f"unreadable submodule {exc.path} at {exc.commit}"
            digest.update(f"{path}\0{content_id}\n".encode())
        return digest.hexdigest()


def load_deployment(snapshot: Snapshot, only: set[str] | None = None) -> Deployment:
    """The hubs at the snapshot (with `only`, those hubs alone: a run worker reads no other hub's config)."""
    deployment = Deployment(snapshot)
    roots_of: dict[str, list[str]] = {}
    for root in HUB_ROOTS:
        for entry in snapshot.list_dir(root):
            if entry.type == "tree" and (only is None or entry.name in only):
                roots_of.setdefault(entry.name, []).append(root)
    for name, roots in sorted(roots_of.items()):
        if len(roots) > 1:
            folders = " and ".join(f"{root}/{name}/" for root in roots)
            reason = f"hub {name!r} is defined twice: in {folders}"
            deployment.invalid[name] = [ConfigProblem(snapshot.describe(f"{roots[0]}/{name}"), "", reason)]
            continue
        hub_or_problems = _load_hub(snapshot, roots[0], name)
        if isinstance(hub_or_problems, Hub):
            deployment.hubs[name] = hub_or_problems
        else:
            deployment.invalid[name] = hub_or_problems
    return deployment


def _load_hub(snapshot: Snapshot, root: str, name: str) -> Hub | list[ConfigProblem]:
    """The hub, or its problems; an unreadable submodule it lives in or points into only fails this hub."""
    path = f"{root}/{name}/{CONFIG_FILE}"
    try:
        blob_id = snapshot.object_id(path)
        text = snapshot.read(path)
        if blob_id is None or text is None:
            return [ConfigProblem(snapshot.describe(f"{root}/{name}"), "", f"hub folder has no {CONFIG_FILE}")]
        file = snapshot.describe(path)
        parsed = _parse_config(blob_id, text)
        if isinstance(parsed, tuple):
            return [ConfigProblem(file, key, reason) for key, reason in parsed]
        hub = Hub(name=name, root=root, config=parsed)
        return _missing_paths(snapshot, hub, file) + _unusable_secrets(snapshot, hub) or hub
    except SubmoduleError as exc:
        return [ConfigProblem(snapshot.describe(path), "", str(exc))]


def _missing_paths(snapshot: Snapshot, hub: Hub, file: str) -> list[ConfigProblem]:
    """Image folders that do not exist: every build and deploy tags images from them.

    Not the chart folder: `hubploy build` needs none, so `release.require_chart` and `hubploy validate` check it.
    """
    problems = []
    images = hub.config.images
    for index, image in enumerate(hub.images()):
        if not snapshot.is_dir(hub.image_dir(image)):
            key = f"images.images.{index}.path" if images and images.images else "images.image_name"
            problems.append(ConfigProblem(file, key, f"image folder {hub.image_dir(image)} does not exist"))
    return problems


def _unusable_secrets(snapshot: Snapshot, hub: Hub) -> list[ConfigProblem]:
    """Files under the hub's secrets/ that cannot be deployed (plain text under sops, git-crypt ciphertext).

    Found here, at discovery, so that the sensor reports such a hub and deploys the others of the commit.
    """
    encryption = hub.config.secrets.encryption
    found = []
    for path, blob_id in _files_under(snapshot, f"{hub.path}/secrets"):
        reason = _secret_problem(blob_id, snapshot.read(path) or b"", encryption)
        if reason:
            found.append(ConfigProblem(snapshot.describe(path), "", reason))
    return found


def _files_under(snapshot: Snapshot, folder: str) -> list[tuple[str, str]]:
    """Files in a folder, recursively; a submodule inside a hub's folder is not followed at discovery."""
    found = []
    for entry in snapshot.list_dir(folder):
        path = f"{folder}/{entry.name}"
        if entry.type == "tree":
            found += _files_under(snapshot, path)
        elif entry.type == "blob":
            found.append((path, entry.hexsha))
    return found


@lru_cache(maxsize=8192)
def _secret_problem(blob_id: str, content: bytes, encryption: str) -> str | None:
    return secret_file_problem(content, encryption)
