"""`hubploy plan`: what a deploy of an environment at commit B would do, before anything is done.

Per hub, the live release (`helm get manifest` and hooks, with the hub's cluster login) is compared with what B
renders (`helm template --dry-run=server`, so charts that `lookup` their Secrets, as Zero to JupyterHub does for
generated tokens, render what an upgrade would apply), one unified diff per resource (kind, namespace, name).
A Secret's `data` and `stringData` values become, on both sides, markers holding a digest keyed with a random key
per plan: a changed value shows as a changed marker, yet nothing can be learned of it, not even by guessing; the
Masker of the decrypted values then runs over all the text, in case a value appears anywhere else.

Which hubs: with `--from A`, the change set A -> B; without it, every hub whose rendered resources differ from its
live release, or that is not installed yet. Images missing from the registry are listed: the chain's first
environment would build them; a later one would refuse (it never builds).
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from hubploy_dagster.chain import load_chain
from hubploy_dagster.changes import change_set
from hubploy_dagster.errors import ConfigProblem, HubployError
from hubploy_dagster.helm import ImageValue
from hubploy_dagster.release import DeployOptions, hub_images, missing_images, prepared_release
from hubploy_dagster.repo import DeploymentRepo
from hubploy_dagster.rollout import hub_rollout, now, window_hold
from hubploy_dagster.secrets import MASK, Masker, Sops
from hubploy_dagster.session import HubSession
from hubploy_dagster.settings import current

SECRET_FIELDS = ("data", "stringData")


class ResourceId(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return "/".join(part for part in self if part)


@dataclass(frozen=True)
class Resources:
    """Manifests split per resource, Secret values already replaced by markers."""

    texts: dict[ResourceId, str]
    secrets: dict[ResourceId, dict[str, str]]  # Secret -> {"data.<key>": marker}


@dataclass(frozen=True)
class HubPlan:
    hub: str
    release: str
    namespace: str
    installed: bool
    diff: str
    secret_changes: list[str]
    images: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "hub": self.hub,
            "release": self.release,
            "namespace": self.namespace,
            "action": "upgrade" if self.installed else "install",
            "images": self.images,
            "secret_changes": self.secret_changes,
            "diff": self.diff,
        }


@dataclass
class DeployPlan:
    env: str
    old: str | None
    new: str
    builds: bool = True  # whether `env` is the chain's first environment, the one that builds images
    hubs: list[HubPlan] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    to_build: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)  # hub -> why its deploy would wait now (deploy windows)

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "holds": self.holds,
            "from": self.old,
            "to": self.new,
            "hubs": [h.to_json() for h in self.hubs],
            "unchanged": self.unchanged,
            "images_to_build": self.to_build,
            "removed": self.removed,
            "problems": [str(p) for p in self.problems],
        }

    def summary(self) -> list[str]:
        base = f"the change set {self.old[:7]}..{self.new[:7]}" if self.old else "the live releases"
        counts = f"{len(self.hubs)} hub(s) to deploy" + (f", {len(self.unchanged)} unchanged" if self.unchanged else "")
        lines = [f"plan for {self.env} at {self.new[:7]} against {base}: {counts}"]
        for hub in self.hubs:
            action = "upgrade" if hub.installed else "install"
            lines.append(f"deploy\t{hub.hub}\t{action} {hub.release} in {hub.namespace}")
            if hub.hub in self.holds:
                lines.append(f"held\t{hub.hub}\t{self.holds[hub.hub]}")
            lines += [f"secret\t{hub.hub}\t{change}" for change in hub.secret_changes]
        verb = "to build" if self.builds else f"missing ({self.env} never builds: deploy would fail)"
        lines += [f"image\t{image}\t{verb}" for image in self.to_build]
        lines += [f"removed\t{name}\t(its releases are left installed)" for name in self.removed]
        lines += [f"invalid\t{problem}" for problem in self.problems]
        return lines

    def to_text(self) -> str:
        parts = [f"\n=== {h.hub} ({h.release} in {h.namespace})\n{h.diff or '(no manifest change)'}" for h in self.hubs]
        return "\n".join([*self.summary(), *parts]) + "\n"

    def to_markdown(self) -> str:
        """For a pull request comment (and the `plan` job's metadata): one collapsed diff per hub."""
        headline, *items = self.summary()
        lines = [f"## Plan for {self.env} at `{self.new[:7]}`", "", headline, ""]
        lines += [f"- {item.replace(chr(9), ' ')}" for item in items]
        for hub in self.hubs:
            summary = f"{hub.hub}: {'upgrade' if hub.installed else 'install'} {hub.release} in {hub.namespace}"
            diff = hub.diff or "(no manifest change)"
            lines += ["", f"<details><summary>{summary}</summary>", "", "```diff", diff, "```", "", "</details>"]
        return "\n".join(lines) + "\n"


def branch_head(repo: DeploymentRepo, branch: str) -> str:
    """The branch's current head (asked of the source, so a mirror is never stale)."""
    head = repo.heads([branch]).get(branch)
    if head is None:
        raise HubployError(f"{repo.source} has no branch {branch!r}")
    return repo.resolve(head)


def plan_deploy(
    repo: DeploymentRepo, env: str, new: str, old: str | None, sops: Sops, log: Callable[[str], None]
) -> DeployPlan:
    changes = change_set(repo, old, new)
    after = changes.after
    chain = load_chain(after.snapshot, current().branches)
    builds = chain.before(env) is None  # the first environment builds
    plan = DeployPlan(env, changes.old, after.sha, builds, removed=changes.removed, problems=after.problems)
    masker, key = Masker(), os.urandom(32)  # one of each for the whole plan
    for name in changes.changed:
        session = HubSession(after, after.hubs[name], env, sops, log, masker)
        if hold := window_hold(hub_rollout(chain, session.hub, env), now()):
            plan.holds[name] = hold.reason
        images = hub_images(session)
        hub_plan = plan_hub(session, images, key)
        if old is None and hub_plan.installed and not hub_plan.diff:
            plan.unchanged.append(name)
            continue
        plan.hubs.append(hub_plan)
        plan.to_build += missing_images(session, images)
    return plan


def plan_hub(session: HubSession, images: list[ImageValue], key: bytes) -> HubPlan:
    """The live release against what this commit renders; `key` keys the digests standing for Secret values."""
    sha, hub = session.sha, session.hub
    with prepared_release(session, DeployOptions(), images) as prepared:
        request, helm = prepared.request, prepared.helm
        live = helm.live_manifests(request.release, request.namespace)
        args = [*request.template_args(), "--dry-run=server", *(["--is-upgrade"] if live is not None else [])]
        rendered = helm.run(args, f"helm template of {hub.name} ({session.env}) at {sha[:7]}", quiet=True)
    before, after = split_resources(live or "", key), split_resources(rendered, key)
    return HubPlan(
        hub=hub.name,
        release=request.release,
        namespace=request.namespace,
        installed=live is not None,
        diff=session.masker(manifest_diff(before, after, sha[:7])),
        secret_changes=secret_changes(before, after) if live is not None else [],
        images=[f"{image.name}:{image.tag}" for image in images],
    )


def split_resources(text: str, key: bytes) -> Resources:
    texts: dict[ResourceId, str] = {}
    secrets: dict[ResourceId, dict[str, str]] = {}
    for document in yaml.safe_load_all(text):
        if not isinstance(document, dict):
            continue
        metadata = document.get("metadata") or {}
        ident = ResourceId(str(document.get("kind", "")), str(metadata.get("namespace", "")), str(metadata.get("name")))
        if ident.kind == "Secret":
            secrets[ident] = mask_secret(document, key)
        texts[ident] = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return Resources(texts, secrets)


def mask_secret(secret: dict[str, Any], key: bytes) -> dict[str, str]:
    """Replace the Secret's values in place by markers; returns {"<field>.<name>": marker} to compare."""
    markers = {}
    for name in SECRET_FIELDS:
        values = secret.get(name)
        if isinstance(values, dict):
            for item, value in values.items():
                digest = hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:12]
                values[item] = markers[f"{name}.{item}"] = f"{MASK} #{digest}"
    return markers


def manifest_diff(before: Resources, after: Resources, new_label: str) -> str:
    """One unified diff per resource, resources sorted by kind, namespace and name."""
    lines: list[str] = []
    for ident in sorted(before.texts.keys() | after.texts.keys()):
        old, new = before.texts.get(ident), after.texts.get(ident)
        lines += difflib.unified_diff(
            (old or "").splitlines(),
            (new or "").splitlines(),
            f"live/{ident}" if old is not None else "/dev/null",
            f"{new_label}/{ident}" if new is not None else "/dev/null",
            lineterm="",
        )
    return "\n".join(lines)


def secret_changes(before: Resources, after: Resources) -> list[str]:
    """Which Secret keys a deploy would add, change or remove (never their values)."""
    changes = []
    for ident in sorted(before.secrets.keys() | after.secrets.keys()):
        old, new = before.secrets.get(ident, {}), after.secrets.get(ident, {})
        for item in sorted(old.keys() | new.keys()):
            if old.get(item) != new.get(item):
                state = "added" if item not in old else "removed" if item not in new else "changed"
                changes.append(f"{ident} {item}: {state}")
    return changes
