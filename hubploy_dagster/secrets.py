"""sops-encrypted files, decrypted only inside a `with` block, and the masking of their values in output.

hubploy decrypts a file when it has a top-level `sops` key. Like 2i2c's deployer, we also refuse a file under
`secrets/` that is not encrypted (probably committed in plain text, its values leaked), unless the repository
says `secrets: {encryption: external}`. git-crypt ciphertext is refused by name: files are read from git
objects, where git-crypt keeps them encrypted.

Decrypted content exists only in a private temporary folder (mode 0700) removed when the block ends; the values
are collected so that logs and errors can be masked.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubploy_dagster.errors import HubployError
from hubploy_dagster.tools import MissingToolError, find_tool

MASK = "********"
GIT_CRYPT_MAGIC = b"\x00GITCRYPT\x00"
GIT_CRYPT_REASON = (
    "is encrypted with git-crypt: files are read from git objects at the pinned commit, where git-crypt keeps "
    "them encrypted (it decrypts only on checkout), so it cannot be used. Use sops instead: decrypt it "
    "(git-crypt unlock), encrypt it with sops --encrypt --in-place, drop it from git-crypt's .gitattributes "
    "patterns and commit"
)
NOT_SOPS_REASON = "is not sops-encrypted (no top-level 'sops' key): encrypt it with sops"
MIN_MASKED_LENGTH = 4


class SecretError(HubployError):
    """A secret file cannot be used: not encrypted, or not decryptable with the keys at hand."""


def _parse(content: bytes) -> Any:
    """JSON (sops writes it tab-indented, which YAML refuses) or YAML; None when it is neither."""
    try:
        return json.loads(content)
    except ValueError:
        pass
    try:
        return yaml.safe_load(content)
    except yaml.YAMLError:
        return None


def is_sops_encrypted(content: bytes) -> bool:
    """hubploy's rule: a parsed mapping with a top-level `sops` key."""
    data = _parse(content)
    return isinstance(data, dict) and "sops" in data


def is_git_crypt_encrypted(content: bytes) -> bool:
    """git-crypt's ciphertext, as stored in git objects, starts with its magic header."""
    return content.startswith(GIT_CRYPT_MAGIC)


def secret_file_problem(content: bytes, encryption: str) -> str | None:
    """Why a committed secrets file cannot be deployed as it is, or None when it can."""
    if is_git_crypt_encrypted(content):
        return GIT_CRYPT_REASON
    if encryption == "sops" and not is_sops_encrypted(content):
        return NOT_SOPS_REASON
    return None


def refuse_git_crypt(files: list[tuple[str, bytes]]) -> None:
    """Stop before any (label, content) that is git-crypt ciphertext reaches helm, whatever `encryption` says."""
    for label, content in files:
        if is_git_crypt_encrypted(content):
            raise SecretError(f"{label} {GIT_CRYPT_REASON}")


@contextmanager
def private_dir(prefix: str = "hubploy-") -> Iterator[Path]:
    """A temporary folder only this user can read, removed with everything in it when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _leaf_strings(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key != "sops":
                yield from _leaf_strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaf_strings(value)
    elif isinstance(data, str | int | float) and not isinstance(data, bool):
        yield str(data)


@dataclass
class Masker:
    """Replaces every known secret value in text; the longest values first so none leaks partly."""

    values: set[str] = field(default_factory=set)

    def add(self, values: Iterable[str]) -> None:
        """A value and its base64 form: Kubernetes Secret manifests carry values base64-encoded."""
        for value in values:
            if len(value) >= MIN_MASKED_LENGTH:
                self.values.add(value)
                self.values.add(base64.b64encode(value.encode()).decode())

    def add_file_values(self, content: bytes) -> None:
        """Every value of a secrets file; of a kubeconfig only its users' credentials, so that errors still
        name the server, the cluster and the context an operator has to look at."""
        data = _parse(content)
        if isinstance(data, dict) and data.get("kind") == "Config" and "clusters" in data:
            data = [entry.get("user") for entry in data.get("users") or [] if isinstance(entry, dict)]
        self.add(_leaf_strings(data))

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text


@dataclass(frozen=True)
class Sops:
    """How to run sops: the binary and the age key file (None: sops' own defaults and environment)."""

    executable: str = "sops"
    age_key_file: str | None = None

    def decrypt(self, source: Path, target: Path, label: str) -> None:
        try:
            binary = find_tool(self.executable, f"decrypting {label}")
        except MissingToolError as exc:
            raise SecretError(str(exc)) from None
        env = {**os.environ, "SOPS_AGE_KEY_FILE": self.age_key_file} if self.age_key_file else None
        result = subprocess.run(
            [binary, "--decrypt", "--output", str(target), str(source)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            reason = next((line for line in result.stderr.splitlines() if line.strip()), "unknown error")
            raise SecretError(f"cannot decrypt {label} with sops: {reason.strip()}")


@contextmanager
def decrypted_files(
    files: list[tuple[str, bytes]], sops: Sops, masker: Masker, encryption: str = "sops"
) -> Iterator[list[Path]]:
    """Each (label, content) as a private plaintext file, in order; every value is added to `masker`.

    sops files are decrypted; any other file is an error unless `encryption` is "external" (then used as it is).
    Every file is checked before anything is written, so a plaintext file stops the deploy before any secret
    touches the disk. git-crypt ciphertext is refused in both modes.
    """
    refuse_git_crypt(files)
    encrypted = [is_sops_encrypted(content) for _, content in files]
    plain = [label for (label, _), flag in zip(files, encrypted, strict=True) if not flag]
    if encryption == "sops" and plain:
        raise SecretError(
            f"{plain[0]} is not sops-encrypted (no top-level 'sops' key): refusing to deploy with it. "
            "If it was ever pushed in plain text, treat its values as leaked and rotate them; "
            "if secrets are decrypted before deploys by other means, set secrets.encryption: external"
        )
    with private_dir("hubploy-secrets-") as folder:
        paths = []
        for index, ((label, content), is_encrypted) in enumerate(zip(files, encrypted, strict=True)):
            suffix = Path(label.split("@")[0]).suffix or ".yaml"
            target = folder / f"{index}-plain{suffix}"
            if is_encrypted:
                source = folder / f"{index}-encrypted{suffix}"
                source.write_bytes(content)
                sops.decrypt(source, target, label)
                source.unlink()
            else:
                target.write_bytes(content)
            target.chmod(0o600)
            masker.add_file_values(target.read_bytes())
            paths.append(target)
        yield paths
