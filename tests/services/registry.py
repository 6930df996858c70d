"""Real OCI registries for integration tests: Debian's `docker-registry` (the distribution v2 binary).

Each registry is started once per session on a free loopback port, with its storage in a temporary folder
that is removed at the end. The Docker engine treats 127.0.0.0/8 registries as insecure on its own (TLS
without certificate checks, or plain http), so pushes to `127.0.0.1:PORT/...` need no daemon configuration.

Load with `pytest_plugins = ["services.registry"]` in tests/conftest.py. Fixtures:
- `registry`: plain http, anonymous read and write, delete enabled.
- `auth_registry`: plain http behind htpasswd (bcrypt); `username` and a random `password`.
- `token_registry`: https (self-signed) with bearer-token auth, the scheme Docker Hub, GHCR, Quay, GCR and
  ECR use; the token service is a small HTTP server in this process that signs JWTs the registry trusts.
Each can be stopped and started again (same port, same storage) to simulate an outage.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

import docker
import docker.errors
import httpx
import pytest

from hubploy_dagster.local_cluster import free_port

REGISTRY_BINARY = "docker-registry"
BASE_IMAGE = "hubploy-dagster/base:busybox"
START_TIMEOUT_S = 20.0
TOKEN_SERVICE = "hubploy-test-registry"
TOKEN_ISSUER = "hubploy-test-token-issuer"

Auth = Literal["none", "htpasswd", "token"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenAuthority:
    """A self-signed certificate (serves the registry's TLS too) and the RS256 JWTs the registry accepts.

    distribution verifies a token's `x5c` chain against its `rootcertbundle`; the certificate is its own
    root here, which Go's verifier accepts.
    """

    def __init__(self, workdir: Path):
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding, rsa
            from cryptography.x509.oid import NameOID
        except ImportError:
            pytest.fail("the Python package cryptography is missing (test dependency)", pytrace=False)

        self._padding = padding.PKCS1v15()
        self._sha256 = hashes.SHA256()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubploy-dagster test registry")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = workdir / "cert.pem"
        self.key_path = workdir / "key.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        self.key_path.chmod(0o600)
        self._x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()

    def token(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), self._padding, self._sha256)
        return f"{signing_input}.{_b64url(signature)}"


class TokenServer:
    """Docker's token protocol: GET /token?service&scope with optional basic auth -> {"token": JWT}.

    Anonymous requests get a token without rights (like Docker Hub), so the registry then refuses them;
    wrong credentials get 401 here. `token_key` picks the JSON key the answer uses (`token` or
    `access_token`: registries use either).
    """

    def __init__(self, authority: TokenAuthority, username: str, password: str):
        self.authority = authority
        self.username = username
        self.password = password
        self.token_key = "token"
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                server.requests += 1
                query = parse_qs(urlparse(self.path).query)
                header = self.headers.get("Authorization", "")
                subject = ""
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, password) != (server.username, server.password):
                        self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                        return
                    subject = user
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if subject and kind == "repository":
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
                token = server.authority.token(subject, access)
                self._answer(200, {server.token_key: token, "expires_in": 300})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="registry-token-server", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class RegistryService:
    """One `docker-registry serve` process; `stop()` and `start()` keep its port and storage."""

    def __init__(self, workdir: Path, name: str, auth: Auth = "none"):
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            pytest.fail(
                f"{REGISTRY_BINARY} not found on PATH: install Debian's docker-registry package "
                "(`apt-get install docker-registry`, done by `make setup`)",
                pytrace=False,
            )
        self.binary = binary
        self.name = name
        self.auth_mode = auth
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "registry.log"
        self.config_path = workdir / "config.yml"
        self.username: str | None = None
        self.password: str | None = None
        self.htpasswd: Path | None = None
        self.authority: TokenAuthority | None = None
        self.token_server: TokenServer | None = None
        if auth != "none":
            self.username = "hubploy-test"
            self.password = secrets.token_urlsafe(18)
        if auth == "htpasswd":
            self.htpasswd = workdir / "htpasswd"
            self.htpasswd.write_text(f"{self.username}:{bcrypt_hash(self.password or '')}\n")
        if auth == "token":
            self.authority = TokenAuthority(workdir)
            self.token_server = TokenServer(self.authority, self.username or "", self.password or "")
        self.scheme = "https" if auth == "token" else "http"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password), or None for the anonymous registry."""
        return (self.username, self.password) if self.username and self.password else None

    @property
    def auth_config(self) -> dict[str, str] | None:
        """The Docker SDK's `auth_config` for pushes and pulls."""
        found = self.credentials
        return {"username": found[0], "password": found[1]} if found else None

    def docker_config(self) -> dict:
        """A Docker `config.json` body holding this registry's credentials (empty for the anonymous one)."""
        found = self.credentials
        if not found:
            return {"auths": {}}
        return {"auths": {self.host: {"auth": base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()}}}

    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog: {disabled: true}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.storage}}}",
            "  delete: {enabled: true}",
            "  maintenance: {uploadpurging: {enabled: false}}",
            "http:",
            f"  addr: {self.host}",
            f"  secret: {secrets.token_hex(16)}",
            "health: {storagedriver: {enabled: false}}",
        ]
        if self.authority is not None and self.token_server is not None:
            lines[-1:-1] = [f"  tls: {{certificate: {self.authority.cert_path}, key: {self.authority.key_path}}}"]
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token_server.realm}",
                f"    service: {TOKEN_SERVICE}",
                f"    issuer: {TOKEN_ISSUER}",
                f"    rootcertbundle: {self.authority.cert_path}",
            ]
        elif self.htpasswd is not None:
            lines += ["auth:", f"  htpasswd: {{realm: {self.name}, path: {self.htpasswd}}}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start (or restart after `stop()`) and wait until `/v2/` answers; the first start picks the port."""
        if self.process is not None and self.process.poll() is None:
            return
        first_start = self.port == 0
        for _attempt in range(3 if first_start else 1):
            if first_start:
                self.port = free_port()
            self._write_config()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"{REGISTRY_BINARY} ({self.name}) did not start on {self.host}:\n{self._log_tail()}", pytrace=False)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1.0, verify=False).status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the registry process (the token server keeps running); the port refuses until `start()`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self.token_server is not None:
            self.token_server.close()

    def _headers(self, repository: str, actions: str) -> dict[str, str]:
        """Authorization for this test harness's own calls (not the product's client)."""
        found = self.credentials
        if found is None:
            return {}
        if self.authority is not None:
            access = [{"type": "repository", "name": repository, "actions": actions.split(",")}]
            return {"Authorization": f"Bearer {self.authority.token(found[0], access)}"}
        return {"Authorization": "Basic " + base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()}

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """The digest of `repository:tag` as the registry serves it (for checks independent of the product)."""
        headers = {
            "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            **self._headers(repository, "pull"),
        }
        response = httpx.head(f"{self.url}/v2/{repository}/manifests/{tag}", headers=headers, timeout=10, verify=False)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]

    def delete(self, repository: str, digest: str) -> None:
        """Delete a manifest (tags pointing at it go with it); absent is fine."""
        response = httpx.delete(
            f"{self.url}/v2/{repository}/manifests/{digest}",
            headers=self._headers(repository, "delete"),
            timeout=10,
            verify=False,
        )
        if response.status_code not in (202, 404):
            response.raise_for_status()


def bcrypt_hash(password: str) -> str:
    """An htpasswd bcrypt entry; the registry's Go bcrypt accepts the `$2b$` prefix Python's bcrypt writes."""
    try:
        import bcrypt  # only the htpasswd registry needs it
    except ImportError:
        pytest.fail("the Python package bcrypt is missing (test dependency, `pip install -e .[test]`)", pytrace=False)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()


def push_image(service: RegistryService, repository: str, tag: str) -> str:
    """Push the local base image as `<host>/<repository>:<tag>`; return the digest the push reported.

    The local tag is removed again (the image itself stays: it is the shared base image).
    """
    client = docker.from_env()
    try:
        try:
            base = client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound:
            pytest.fail(f"local image {BASE_IMAGE} is missing: run `make setup` (scripts/make-base-image.sh)")
        reference = f"{service.host}/{repository}"
        base.tag(reference, tag)
        try:
            digest = None
            for chunk in client.api.push(reference, tag=tag, stream=True, decode=True, auth_config=service.auth_config):
                if "error" in chunk:
                    pytest.fail(f"push of {reference}:{tag} failed: {chunk['error']}")
                digest = chunk.get("aux", {}).get("Digest", digest)
        finally:
            client.images.remove(f"{reference}:{tag}", noprune=True)
        assert digest, f"push of {reference}:{tag} reported no digest"
        return digest
    finally:
        client.close()


def _service(tmp_path_factory: pytest.TempPathFactory, name: str, auth: Auth) -> Iterator[RegistryService]:
    workdir = tmp_path_factory.mktemp(name)
    service = RegistryService(workdir, name, auth)
    try:
        service.start()
        yield service
    finally:
        service.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    """An anonymous registry on 127.0.0.1 (plain http), delete enabled."""
    yield from _service(tmp_path_factory, "registry", "none")


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    """A registry behind htpasswd basic auth: `auth_registry.username` / `auth_registry.password`."""
    yield from _service(tmp_path_factory, "auth-registry", "htpasswd")


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    """A registry over https (self-signed) with bearer tokens from `token_registry.token_server`."""
    yield from _service(tmp_path_factory, "token-registry", "token")


def remove_local_images(prefix: str) -> None:
    """The images runs built stay in the registry (removed with it); their local tags under `prefix/` go now."""
    with contextlib.closing(docker.from_env()) as client:
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{prefix}/"):
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(tag, noprune=False)
