"""`hubploy validate`: everything a deploy of any hub at one commit would trip over, found before any deploy.

A deploy stops at the first problem; a pull request wants them all, so each check records what it finds and goes
on: every `hubploy.yaml`, the files they reference (image folders, chart, `watch_paths`, credentials), the values
files, every file under a hub's `secrets/` (decryptable with the key at hand), an image pinned without a tag, and
each hub rendered with its real chart (`helm template`, so also its values schema) for every environment of the
repository's chain. A render is skipped when a file it reads already has a problem, or the chart folder is missing.
Secret values never reach a problem's text: every decrypted value goes into the Masker that masks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from git.objects import Blob, Tree

from hubploy_dagster.chain import Chain, default_chain, load_chain
from hubploy_dagster.config import parse_yaml
from hubploy_dagster.deployment import Deployment, Hub, load_deployment
from hubploy_dagster.errors import ConfigError, ConfigProblem, HubployError
from hubploy_dagster.helm import HelmError
from hubploy_dagster.images import BuildError, recipe_for
from hubploy_dagster.release import pinned_image_problems, render_hub
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.secrets import Masker, SecretError, Sops, decrypted_files
from hubploy_dagster.session import HubSession

SCHEMA_FAILURE = "values don't meet the specifications of the schema(s)"
SCHEMA_ITEM = re.compile(r"^- (?P<path>[^:]+): (?P<reason>.+)$")
ADDITIONAL_PROPERTY = re.compile(r"Additional property (?P<key>\S+) is not allowed")
CREDENTIAL_FIELDS = ("filename", "service_key", "auth_file")  # hubploy.yaml keys naming files in secrets/


@dataclass
class ValidationReport:
    """Every problem found at one commit, and what was checked, for an honest summary line."""

    sha: str
    hubs: list[str] = field(default_factory=list)
    renders: int = 0
    problems: list[ConfigProblem] = field(default_factory=list)


def validate_repository(
    repo: DeploymentRepo, rev: str, sops: Sops, log: Callable[[str], None] = lambda line: None
) -> ValidationReport:
    """Every problem at `rev`; each hub is rendered for every environment of the repository's chain there."""
    snapshot = repo.snapshot(rev)
    deployment = load_deployment(snapshot)
    report = ValidationReport(deployment.sha, sorted(deployment.hubs), problems=list(deployment.problems))
    try:
        chain = load_chain(snapshot)  # only its environments matter here, not the branches they follow
    except ConfigError as exc:
        report.problems += exc.problems
        chain = default_chain()
    masker = Masker()
    for name in report.hubs:
        checks = _HubChecks(repo, deployment, deployment.hubs[name], sops, masker, chain)
        checks.check_images()
        checks.check_referenced_paths()
        checks.check_environments()
        checks.check_values_files()
        checks.check_secrets()
        failed_files = {p.file for p in checks.problems}
        checks.check_pinned_images()  # after: a tagless image is no reason to skip a file's render
        if checks.chart_exists():
            for env in chain.names:
                report.renders += checks.render(env, failed_files, log)
        report.problems += checks.problems
    report.problems = [ConfigProblem(p.file, p.key, masker(p.reason)) for p in report.problems]
    return report


@dataclass
class _HubChecks:
    """The checks of one hub; `problems` collects what they find, `values` what each values file sets."""

    repo: DeploymentRepo
    deployment: Deployment
    hub: Hub
    sops: Sops
    masker: Masker
    chain: Chain
    problems: list[ConfigProblem] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # file label -> parsed values (secrets: keys only)

    @property
    def config_file(self) -> str:
        return self.deployment.snapshot.describe(self.hub.config_path)

    def problem(self, file: str, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(file, key, reason))

    def chart_exists(self) -> bool:
        return self.deployment.snapshot.is_dir(self.hub.config.chart)

    def check_images(self) -> None:
        snapshot = self.deployment.snapshot
        for image in self.hub.images():
            try:
                recipe_for(self.repo, snapshot, image, self.hub.image_dir(image))
            except BuildError as exc:
                self.problem(snapshot.describe(self.hub.image_dir(image)), "", str(exc).split(": ", 1)[-1])

    def check_referenced_paths(self) -> None:
        snapshot = self.deployment.snapshot
        if not self.chart_exists():  # a build needs no chart: discovery keeps the hub, deploys and validate refuse
            self.problem(self.config_file, "chart", f"chart folder {self.hub.config.chart} does not exist")
        for index, path in enumerate(self.hub.config.watch_paths):
            if not snapshot.exists(path):
                self.problem(self.config_file, f"watch_paths.{index}", f"{path} does not exist")
        images = self.hub.config.images
        blocks = [("images.registry", images.registry if images else None), ("cluster", self.hub.config.cluster)]
        for section, block in blocks:
            if block is None:
                continue
            for name in CREDENTIAL_FIELDS:
                filename = getattr(getattr(block, block.provider), name, None)
                path = f"{self.hub.path}/secrets/{filename}"
                if filename and not snapshot.exists(path):
                    self.problem(self.config_file, f"{section}.{block.provider}.{name}", f"{path} does not exist")

    def check_environments(self) -> None:
        """The hub's `environments` settings are for environments of the chain: any other is never deployed."""
        chain = " -> ".join(self.chain.names)
        for env in sorted(set(self.hub.config.environments) - set(self.chain.names)):
            reason = f"{env!r} is not an environment of {self.chain.source} ({chain}): it is never deployed"
            self.problem(self.config_file, f"environments.{env}", reason)

    def check_pinned_images(self) -> None:
        """hubploy 1.2: an image name without a tag in a hub's config files (hubs without an `images` block)."""
        known = {(p.file, p.key) for p in self.problems}
        for env in self.chain.names:
            for problem in pinned_image_problems(self.deployment, self.hub, env):
                if (problem.file, problem.key) not in known:  # common.yaml is read by every environment
                    known.add((problem.file, problem.key))
                    self.problems.append(problem)

    def check_values_files(self) -> None:
        snapshot = self.deployment.snapshot
        paths = {f.path for env in self.chain.names for f in self.deployment.values_files(self.hub, env)}
        for path in sorted(p for p in paths if p.startswith(f"{self.hub.path}/config/")):
            label = snapshot.describe(path)
            try:
                data = parse_yaml(snapshot.read(path) or b"", label)
            except ConfigError as exc:
                self.problems += exc.problems
                continue
            if isinstance(data, dict | None):
                self.values[label] = data or {}
            else:
                self.problem(label, "", f"helm values must be a mapping, got {type(data).__name__}")

    def check_secrets(self) -> None:
        """Every file under the hub's secrets/ (and the secrets-submodule copy) decrypts with the key at hand."""
        snapshot = self.deployment.snapshot
        for folder in (f"{self.hub.path}/secrets", f"secrets/deployments/{self.hub.name}/secrets"):
            tree = snapshot.entry(folder)
            blobs = [item for item in tree.traverse() if isinstance(item, Blob)] if isinstance(tree, Tree) else []
            for blob in blobs:
                label = snapshot.describe(blob.path)
                files = [(label, blob.data_stream.read())]
                try:
                    encryption = self.hub.config.secrets.encryption
                    with decrypted_files(files, self.sops, self.masker, encryption) as [plain], suppress(ConfigError):
                        self.values[label] = _keys_only(parse_yaml(plain.read_bytes(), ""))  # unparsable: no keys
                except SecretError as exc:
                    self.problem(label, "", str(exc).replace(label, "the file"))

    def render(self, env: str, failed_files: set[str], log: Callable[[str], None]) -> int:
        """`helm template` for one environment; returns 1 when it ran, 0 when a file it reads already failed.
        A schema error in a file every environment reads (common.yaml) is listed once, for the first one."""
        snapshot = self.deployment.snapshot
        reads = [snapshot.describe(f.path) for f in self.deployment.values_files(self.hub, env)]
        if failed_files.intersection(reads):
            return 0
        try:
            render_hub(HubSession(self.deployment, self.hub, env, self.sops, log, self.masker))
        except HelmError as exc:
            known = {(p.file, p.key) for p in self.problems}
            self.problems += [p for p in self._helm_problems(env, str(exc), reads) if (p.file, p.key) not in known]
        except HubployError as exc:
            self.problem(snapshot.describe(self.hub.config.chart), "", f"helm template ({env}): {exc}")
        return 1

    def _helm_problems(self, env: str, message: str, reads: list[str]) -> list[ConfigProblem]:
        """The chart's schema errors one by one, each at the last values file (in hubploy's order) setting the key."""
        chart_file = self.deployment.snapshot.describe(f"{self.hub.config.chart}/values.yaml")
        if SCHEMA_FAILURE not in message:
            return [ConfigProblem(chart_file, "", f"helm template of {self.hub.name} ({env}) failed: {message}")]
        problems, prefix = [], ""
        for line in message.split(SCHEMA_FAILURE, 1)[1].splitlines()[1:]:
            item = SCHEMA_ITEM.match(line.strip())
            if item is None:
                prefix = line.strip().removesuffix(":") if line.strip().endswith(":") else prefix
                continue
            path = [] if item["path"] == "(root)" else item["path"].split(".")
            extra = ADDITIONAL_PROPERTY.search(item["reason"])
            key = [*self._subchart_prefix(prefix), *path, *([extra["key"]] if extra else [])]
            file = next((f for f in reversed(reads) if _has_key(self.values.get(f), key)), chart_file)
            reason = f"{item['reason']} (the chart's values schema, {env})"
            problems.append(ConfigProblem(file, ".".join(key), reason))
        return problems

    def _subchart_prefix(self, chart_name: str) -> list[str]:
        """Schema errors name the chart they come from: a dependency's values sit under its name."""
        chart_yaml = self.deployment.snapshot.read(f"{self.hub.config.chart}/Chart.yaml") or b""
        own_name = None
        with suppress(ConfigError):
            own_name = (parse_yaml(chart_yaml, "Chart.yaml") or {}).get("name")
        return [] if not chart_name or chart_name == own_name else [chart_name]


def _keys_only(data: Any) -> Any:
    """The key structure of decrypted values, without a single value: enough to say which file sets a key."""
    return {key: _keys_only(value) for key, value in data.items()} if isinstance(data, dict) else None


def _has_key(data: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True
