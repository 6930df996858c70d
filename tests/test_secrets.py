"""sops decryption into private files that never outlive their block, and masking of secret values."""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

import pytest
from services.repos import PROJECT_ROOT, new_age_key, sops_encrypt

from hubploy_dagster.secrets import MASK, Masker, SecretError, Sops, decrypted_files, is_sops_encrypted

DEMO_KEY = PROJECT_ROOT / "hubs" / "DEMO-ONLY-age-key.txt"
CANARY = "canary-4f1d9c0e-secret-value"


def age_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    return new_age_key(tmp_path, name)


def encrypt(tmp_path: Path, plaintext: str, recipient: str) -> bytes:
    return sops_encrypt(tmp_path, recipient, plaintext).encode()


def test_example_secrets_decrypt_with_the_demo_key_and_the_folder_is_removed():
    content = (PROJECT_ROOT / "hubs/datahub/secrets/staging.yaml").read_bytes()
    masker = Masker()
    with decrypted_files(
        [("hubs/datahub/secrets/staging.yaml", content)], Sops(age_key_file=str(DEMO_KEY)), masker
    ) as [path]:
        folder = path.parent
        assert folder.stat().st_mode & 0o777 == 0o700 and path.stat().st_mode & 0o777 == 0o600
        assert "ENC[" not in path.read_text() and "secretToken" in path.read_text()
        assert list(folder.iterdir()) == [path], "the encrypted copy is removed right after decryption"
    assert not folder.exists()
    assert masker.values, "decrypted values are known to the masker"


def test_values_are_masked_longest_first(tmp_path: Path):
    key, public = age_key(tmp_path, "k")
    content = encrypt(tmp_path, f"token: {CANARY}\nshort: {CANARY[:10]}\nflag: true\n", public)
    masker = Masker()
    with decrypted_files([("s.yaml", content)], Sops(age_key_file=str(key)), masker):
        pass
    assert masker(f"helm said {CANARY} and {CANARY[:10]}") == f"helm said {MASK} and {MASK}"
    encoded = base64.b64encode(CANARY.encode()).decode()
    assert masker(f"data: {{token: {encoded}}}") == f"data: {{token: {MASK}}}"
    assert "True" not in masker.values and "true" not in masker.values


def test_wrong_age_key_is_a_clear_error_and_nothing_remains(tmp_path: Path, monkeypatch):
    _, public = age_key(tmp_path, "right")
    wrong, _ = age_key(tmp_path, "wrong")
    content = encrypt(tmp_path, f"token: {CANARY}\n", public)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with (
        pytest.raises(SecretError) as caught,
        decrypted_files([("hubs/h/secrets/staging.yaml@abc1234", content)], Sops(age_key_file=str(wrong)), Masker()),
    ):
        pytest.fail("must not get here")
    assert str(caught.value).startswith("cannot decrypt hubs/h/secrets/staging.yaml@abc1234 with sops:")
    assert CANARY not in str(caught.value)
    assert list((tmp_path / "tmp").iterdir()) == [], "no decrypted or encrypted copy is left behind"


def test_plaintext_secret_is_refused_before_anything_is_written(tmp_path: Path):
    encrypted = (PROJECT_ROOT / "hubs/datahub/secrets/staging.yaml").read_bytes()
    files = [("ok.yaml", encrypted), ("hubs/h/secrets/prod.yaml", f"token: {CANARY}\n".encode())]
    sops = Sops(age_key_file=str(DEMO_KEY))
    with (
        pytest.raises(SecretError, match=r"hubs/h/secrets/prod.yaml is not sops-encrypted") as caught,
        decrypted_files(files, sops, Masker()),
    ):
        pytest.fail("must not get here")
    assert CANARY not in str(caught.value)


def test_external_encryption_uses_plaintext_as_is_but_still_decrypts_sops_files(tmp_path: Path):
    encrypted = (PROJECT_ROOT / "hubs/research/secrets/prod.yaml").read_bytes()
    files = [("a.yaml", encrypted), ("b.yaml", f"token: {CANARY}\n".encode())]
    masker = Masker()
    with decrypted_files(files, Sops(age_key_file=str(DEMO_KEY)), masker, encryption="external") as [a, b]:
        assert "ENC[" not in a.read_text() and b.read_text() == f"token: {CANARY}\n"
    assert CANARY in masker.values


def test_missing_sops_binary_is_named(tmp_path: Path):
    encrypted = (PROJECT_ROOT / "hubs/research/secrets/prod.yaml").read_bytes()
    message = "decrypting x.yaml needs the `no-such-sops` command, which is not installed"
    with (
        pytest.raises(SecretError, match=re.escape(message)),
        decrypted_files([("x.yaml", encrypted)], Sops(executable="no-such-sops"), Masker()),
    ):
        pass


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"sops: {}\na: 1\n", True),
        (b'{\n\t"sops": {}\n}', True),
        (b"a: 1\n", False),
        (b"- sops\n", False),
        (b"{bad yaml", False),
        (b"", False),
    ],
)
def test_sops_detection_is_hubploys_rule(content: bytes, expected: bool):
    assert is_sops_encrypted(content) is expected


def test_a_kubeconfig_masks_its_credentials_not_its_server_or_names():
    """helm's "Kubernetes cluster unreachable: Get "https://…/version"" must stay readable; tokens and keys not."""
    token, key = "token-canary-0123456789", base64.b64encode(b"-----BEGIN PRIVATE KEY----- canary").decode()
    kubeconfig = f"""
apiVersion: v1
kind: Config
clusters:
- name: campus-cluster
  cluster: {{server: "https://k8s.campus.example.org:6443", certificate-authority-data: Y2EtY2VydA==}}
users:
- name: deployer
  user: {{token: {token}, client-key-data: {key}}}
contexts:
- name: hub-context
  context: {{cluster: campus-cluster, user: deployer}}
current-context: hub-context
"""
    masker = Masker()
    masker.add_file_values(kubeconfig.encode())
    error = (
        'Kubernetes cluster unreachable: Get "https://k8s.campus.example.org:6443/version": dial tcp: connection '
        f"refused (context hub-context of campus-cluster, as {token}, key {key})"
    )
    masked = masker(error)
    assert "https://k8s.campus.example.org:6443/version" in masked and "unreachable" in masked
    assert "hub-context" in masked and "campus-cluster" in masked
    assert token not in masked and key not in masked and masked.count(MASK) == 2


def test_a_values_file_masks_every_value():
    masker = Masker()
    masker.add_file_values(b"jupyterhub:\n  proxy:\n    secretToken: abcdef123\n  hub: {cookieSecret: fedcba987}\n")
    assert masker("abcdef123 and fedcba987") == f"{MASK} and {MASK}"
