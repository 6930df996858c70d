"""helm, exactly as hubploy drives it: the argument list, the chart's dependencies, and reading releases back.

hubploy's command, kept flag for flag and in its order:
`helm upgrade --wait --install --namespace NS RELEASE CHART [--kube-context C] [--version V] [--timeout T]
[--force] [--atomic] [--cleanup-on-fail] [--debug] [--dry-run] -f common -f env -f secrets... --set ...
--set-string ...`, then each image's `--set-string <path>.tag=` and `<path>.name=` last, so they win.
Our only addition is the hub's `helm.extra_args`, after everything hubploy passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubploy_dagster.errors import HubployError
from hubploy_dagster.secrets import Masker
from hubploy_dagster.settings import current
from hubploy_dagster.tools import find_tool


class HelmError(HubployError):
    """helm refused or failed; the message carries helm's own words, with secret values masked."""


@dataclass(frozen=True)
class ImageValue:
    helm_path: str
    name: str
    tag: str


@dataclass(frozen=True)
class UpgradeRequest:
    release: str
    namespace: str
    chart: Path
    values_files: list[Path] = field(default_factory=list)
    set_values: list[str] = field(default_factory=list)
    set_string_values: list[str] = field(default_factory=list)
    images: list[ImageValue] = field(default_factory=list)
    kube_context: str | None = None
    version: str | None = None
    timeout: str | None = None
    force: bool = False
    atomic: bool = False
    cleanup_on_fail: bool = False
    debug: bool = False
    dry_run: bool = False
    extra_args: list[str] = field(default_factory=list)

    def value_args(self) -> list[str]:
        """Values in hubploy's order: files, --set, --set-string, then the images (which win)."""
        args: list[str] = []
        for path in self.values_files:
            args += ["-f", str(path)]
        for value in self.set_values:
            args += ["--set", value]
        for value in self.set_string_values:
            args += ["--set-string", value]
        for image in self.images:
            args += ["--set-string", f"{image.helm_path}.tag={image.tag}"]
            args += ["--set-string", f"{image.helm_path}.name={image.name}"]
        return args

    def upgrade_args(self) -> list[str]:
        args = ["upgrade", "--wait", "--install", "--namespace", self.namespace, self.release, str(self.chart)]
        if self.kube_context:
            args += ["--kube-context", self.kube_context]
        if self.version:
            args += ["--version", self.version]
        if self.timeout:
            args += ["--timeout", self.timeout]
        flags = {"--force": self.force, "--atomic": self.atomic, "--cleanup-on-fail": self.cleanup_on_fail}
        flags |= {"--debug": self.debug, "--dry-run": self.dry_run}
        return args + [flag for flag, enabled in flags.items() if enabled] + self.value_args() + list(self.extra_args)

    def template_args(self) -> list[str]:
        """`helm template` with the same values: the chart's schema is checked before anything is upgraded."""
        args = ["template", self.release, str(self.chart), "--namespace", self.namespace]
        if self.kube_context:
            args += ["--kube-context", self.kube_context]
        return args + self.value_args()

    def values_digest(self) -> str:
        """A digest of every value that goes into the release (files' content and --set arguments), never the values."""
        digest = hashlib.sha256()
        for path in self.values_files:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        digest.update("\0".join(self.value_args()[2 * len(self.values_files) :]).encode())
        return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class Helm:
    """Runs helm with a given environment (KUBECONFIG, HELM_DRIVER...), masking secrets in what it prints.

    With `kube_context`, every command talks to that context of the kubeconfig (`--kube-context`, unless the
    arguments already place it, as `UpgradeRequest` does in hubploy's order), never to the current one.
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    masker: Masker = field(default_factory=Masker)
    log: Callable[[str], None] = lambda line: None
    kube_context: str | None = None

    def run(self, args: list[str], purpose: str, quiet: bool = False) -> str:
        binary = find_tool("helm", purpose)
        if self.kube_context and "--kube-context" not in args:
            args = [*args, "--kube-context", self.kube_context]
        result = subprocess.run([binary, *args], env=dict(self.env), capture_output=True, text=True, check=False)
        if not quiet:
            for line in self.masker(result.stdout).splitlines():
                self.log(line)
        if result.returncode != 0:
            detail = self.masker(result.stderr.strip() or result.stdout.strip())
            raise HelmError(f"{purpose} failed: {detail}")
        return result.stdout

    def status(self, release: str, namespace: str) -> dict[str, Any] | None:
        """`helm status -o json`, or None when there is no such release."""
        args = ["status", release, "--namespace", namespace, "-o", "json"]
        try:
            return json.loads(self.run(args, f"helm status {release}", quiet=True))
        except HelmError as exc:
            if "release: not found" in str(exc):
                return None
            raise

    def history(self, release: str, namespace: str) -> list[dict[str, Any]]:
        """Revisions, oldest first: revision, status, chart (`name-version`), app_version, description."""
        args = ["history", release, "--namespace", namespace, "-o", "json"]
        return json.loads(self.run(args, f"helm history {release}", quiet=True))

    def get(self, part: str, release: str, namespace: str, *flags: str) -> str:
        """`helm get <part>` (values, manifest, hooks...) of a release; its text can carry secrets: never logged."""
        return self.run(["get", part, release, "--namespace", namespace, *flags], f"helm get {part}", quiet=True)

    def live_manifests(self, release: str, namespace: str) -> str | None:
        """What the deployed revision applied: `helm get manifest` plus its hooks (`helm template` renders both).

        None when there is no such release. The text carries secret values: callers mask it.
        """
        try:
            return "\n---\n".join(self.get(part, release, namespace) for part in ("manifest", "hooks"))
        except HelmError as exc:
            if "release: not found" in str(exc):
                return None
            raise


def prepare_dependencies(chart: Path, helm: Helm) -> str:
    """Put the chart's dependencies in charts/: from the archive cache when there, else `helm dependency update`.

    Returns how they were obtained, for the record. hubploy ran `helm dep up` (network) on every deploy; an
    archive already at hand makes the deploy work offline and faster.
    """
    data = yaml.safe_load((chart / "Chart.yaml").read_text()) or {}
    dependencies = [d for d in data.get("dependencies") or [] if isinstance(d, dict)]
    if not dependencies:
        return "none"
    charts_dir = chart / "charts"
    charts_dir.mkdir(exist_ok=True)
    missing = []
    for dependency in dependencies:
        archive = f"{dependency['name']}-{dependency['version']}.tgz"
        if (charts_dir / archive).exists():
            continue
        # HUBPLOY_CHART_CACHE: folders of chart archives (`<name>-<version>.tgz`) to use instead of downloading
        cached = next((d / archive for d in current().chart_cache if (d / archive).exists()), None)
        if cached is None:
            missing.append(archive)
        else:
            shutil.copyfile(cached, charts_dir / archive)
    if not missing:
        return "cached"
    helm.run(["dependency", "update", str(chart)], f"helm dependency update (for {', '.join(missing)})")
    return "downloaded"
