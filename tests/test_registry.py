"""The registry client against real registries (Debian's docker-registry), and image-name parsing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from services.registry import RegistryService, free_port, push_image

from hubploy_dagster.errors import HubployError
from hubploy_dagster.registry import (
    DOCKER_HUB_HOST,
    ImageName,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    credentials_from_docker_config,
)


class Pushed:
    """Images a test pushed, deleted from their registry when the test ends."""

    def __init__(self) -> None:
        self.created: list[tuple[RegistryService, str, str]] = []

    def __call__(self, service: RegistryService, tag: str = "v1") -> tuple[str, str, str]:
        """Push the base image under a fresh repository: (image name, tag, digest)."""
        repository = f"tests/{uuid.uuid4().hex[:10]}"
        digest = push_image(service, repository, tag)
        self.created.append((service, repository, digest))
        return f"{service.host}/{repository}", tag, digest


@pytest.fixture
def pushed() -> Iterator[Pushed]:
    tracker = Pushed()
    yield tracker
    for service, repository, digest in tracker.created:
        service.start()  # a test that stopped it may have failed before starting it again
        service.delete(repository, digest)


def creds_for(service: RegistryService, password: str | None = None):
    def lookup(host: str) -> tuple[str, str] | None:
        if host != service.host or service.username is None:
            return None
        return service.username, password if password is not None else str(service.password)

    return lookup


@pytest.mark.integration
def test_absent_tag_and_absent_repository_are_none(registry: RegistryService, pushed: Pushed) -> None:
    client = RegistryClient(lambda host: None, timeout=10)
    assert client.manifest_digest(f"{registry.host}/tests/never-pushed", "abc1234") is None
    image, _, _ = pushed(registry)
    assert client.manifest_digest(image, "other-tag") is None
    assert client.exists(image, "other-tag") is False


@pytest.mark.integration
def test_pushed_tag_has_the_digest_the_push_reported(registry: RegistryService, pushed: Pushed) -> None:
    image, tag, digest = pushed(registry)
    client = RegistryClient(lambda host: None, timeout=10)
    assert client.manifest_digest(image, tag) == digest
    assert client.exists(image, tag) is True
    assert registry.manifest_digest(image.split("/", 1)[1], tag) == digest


@pytest.mark.integration
def test_auth_registry_with_correct_credentials(auth_registry: RegistryService, pushed: Pushed) -> None:
    image, tag, digest = pushed(auth_registry)
    client = RegistryClient(creds_for(auth_registry), timeout=10)
    assert client.manifest_digest(image, tag) == digest
    assert client.manifest_digest(image, "absent-tag") is None


@pytest.mark.integration
def test_auth_registry_with_a_wrong_password_names_the_host_not_the_password(auth_registry: RegistryService) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    client = RegistryClient(creds_for(auth_registry, password=wrong), timeout=10)
    with pytest.raises(RegistryAuthError) as caught:
        client.manifest_digest(f"{auth_registry.host}/tests/private", "abc1234")
    message = str(caught.value)
    assert f"authentication to {auth_registry.host} failed for tests/private" in message
    assert wrong not in message and str(auth_registry.password) not in message
    assert isinstance(caught.value, HubployError)


@pytest.mark.integration
def test_auth_registry_without_credentials_is_an_auth_failure(auth_registry: RegistryService) -> None:
    client = RegistryClient(lambda host: None, timeout=10)
    with pytest.raises(RegistryAuthError, match=rf"authentication to {auth_registry.host} failed.*no credentials"):
        client.exists(f"{auth_registry.host}/tests/private", "abc1234")


@pytest.mark.integration
def test_registry_outage_names_host_and_port_then_recovers(registry: RegistryService, pushed: Pushed) -> None:
    image, tag, digest = pushed(registry)
    client = RegistryClient(lambda host: None, timeout=5)
    assert client.manifest_digest(image, tag) == digest
    registry.stop()
    try:
        with pytest.raises(RegistryError) as caught:
            client.manifest_digest(image, tag)
        assert str(caught.value) == f"registry {registry.host} is unreachable: connection refused"
        with pytest.raises(RegistryError, match=f"registry {registry.host} is unreachable"):
            RegistryClient(timeout=5).exists(image, tag)  # a client that never reached it
    finally:
        registry.start()
    assert client.manifest_digest(image, tag) == digest


@pytest.mark.integration
@pytest.mark.parametrize("token_key", ["token", "access_token"])
def test_token_registry_over_tls_with_credentials(
    token_registry: RegistryService, pushed: Pushed, token_key: str
) -> None:
    """Bearer auth as Docker Hub, GHCR, Quay, GCR and ECR do it; a loopback registry over self-signed TLS."""
    assert token_registry.token_server is not None
    token_registry.token_server.token_key = token_key
    try:
        image, tag, digest = pushed(token_registry)
        client = RegistryClient(creds_for(token_registry), timeout=10)
        asked = token_registry.token_server.requests
        assert client.manifest_digest(image, tag) == digest
        assert client.manifest_digest(image, "absent-tag") is None
        assert client.exists(image, tag)
        assert token_registry.token_server.requests == asked + 1, "the token is reused for the same repository"
    finally:
        token_registry.token_server.token_key = "token"


@pytest.mark.integration
def test_token_registry_with_a_wrong_password_or_none(token_registry: RegistryService) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    image = f"{token_registry.host}/tests/private"
    with pytest.raises(RegistryAuthError) as caught:
        RegistryClient(creds_for(token_registry, password=wrong), timeout=10).exists(image, "abc1234")
    message = str(caught.value)
    assert message.startswith(f"authentication to {token_registry.host} failed for tests/private")
    assert wrong not in message and str(token_registry.password) not in message
    with pytest.raises(RegistryAuthError, match=rf"authentication to {token_registry.host} failed.*no credentials"):
        RegistryClient(lambda host: None, timeout=10).exists(image, "abc1234")


class CannedRegistry:
    """A loopback HTTP server answering each path with a canned (status, headers, body): for the answers a
    real registry gives only when it is broken, or that only some registries give."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                status, headers, content = canned.answers.get(self.path, (404, {}, b""))
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def canned() -> Iterator[CannedRegistry]:
    server = CannedRegistry()
    yield server
    server.close()


def test_other_registry_answers(canned: CannedRegistry) -> None:
    """500 with the registry's words; MANIFEST_UNKNOWN under another status; no digest header -> hash the body."""
    errors = {"errors": [{"code": "UNKNOWN", "message": "storage backend down"}]}
    unknown = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    manifest = b'{"schemaVersion": 2}'
    json_type = {"Content-Type": "application/json"}
    canned.answers = {
        "/v2/a/manifests/broken": (500, json_type, json.dumps(errors).encode()),
        "/v2/a/manifests/gone": (400, json_type, json.dumps(unknown).encode()),
        "/v2/a/manifests/nodigest": (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, manifest),
    }
    client = RegistryClient(timeout=5)
    with pytest.raises(RegistryError) as caught:
        client.manifest_digest(f"{canned.host}/a", "broken")
    assert str(caught.value) == f"registry {canned.host} answered HTTP 500 for a:broken: UNKNOWN: storage backend down"
    assert client.manifest_digest(f"{canned.host}/a", "gone") is None
    assert client.manifest_digest(f"{canned.host}/a", "nodigest") == "sha256:" + hashlib.sha256(manifest).hexdigest()


def test_a_registry_that_echoes_the_password_has_it_masked(canned: CannedRegistry) -> None:
    password = "pw-" + uuid.uuid4().hex
    basic = base64.b64encode(f"robot:{password}".encode()).decode()
    echo = {"errors": [{"code": "UNAUTHORIZED", "message": f"password {password} (Basic {basic}) is wrong"}]}
    challenge = {"WWW-Authenticate": 'Basic realm="canned"', "Content-Type": "application/json"}
    canned.answers = {"/v2/a/manifests/v1": (401, challenge, json.dumps(echo).encode())}
    with pytest.raises(RegistryAuthError) as caught:
        RegistryClient(lambda host: ("robot", password), timeout=5).exists(f"{canned.host}/a", "v1")
    message = str(caught.value)
    assert password not in message and basic not in message
    assert message.startswith(f"authentication to {canned.host} failed for a: the registry refused the credentials")


def test_invalid_tag_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="invalid tag"):
        RegistryClient().exists("127.0.0.1:1/a", "-bad")


def test_a_registry_that_never_answers_times_out_naming_host_and_port() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(RegistryError, match=rf"^registry {host} did not answer within 0.5s$"):
            RegistryClient(timeout=0.5).exists(f"{host}/x", "v1")
        assert time.monotonic() - started < 5


def test_nothing_listening_names_host_and_port() -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=f"^registry {host} is unreachable: connection refused$"):
        RegistryClient(timeout=5).exists(f"{host}/x", "v1")


@pytest.mark.parametrize(
    ("name", "host", "repository"),
    [
        ("gcr.io/p/x", "gcr.io", "p/x"),
        ("localhost:5000/a/b", "localhost:5000", "a/b"),
        ("localhost/a", "localhost", "a"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x"),
        ("quay.io/jupyter/base-notebook", "quay.io", "jupyter/base-notebook"),
        ("jupyter/base-notebook", DOCKER_HUB_HOST, "jupyter/base-notebook"),
        ("ubuntu", DOCKER_HUB_HOST, "library/ubuntu"),
        ("docker.io/ubuntu", DOCKER_HUB_HOST, "library/ubuntu"),
        ("docker.io/jupyter/base-notebook", DOCKER_HUB_HOST, "jupyter/base-notebook"),
        ("123.dkr.ecr.us-west-2.amazonaws.com/hub-user-image", "123.dkr.ecr.us-west-2.amazonaws.com", "hub-user-image"),
    ],
)
def test_image_name_parse(name: str, host: str, repository: str) -> None:
    parsed = ImageName.parse(name)
    assert (parsed.host, parsed.repository) == (host, repository)


@pytest.mark.parametrize(
    "name",
    ["ubuntu:22.04", "gcr.io/p/x:abc1234", "localhost:5000/a:b", "quay.io/x@sha256:" + "0" * 64, "Gcr.io/P/X", ""],
)
def test_image_name_with_tag_or_digest_or_bad_characters_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid image name") as caught:
        ImageName.parse(name)
    assert repr(name) in str(caught.value)


def test_credentials_from_docker_config_auths(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"robot:s3cr:et").decode()
    config = {
        "auths": {
            "127.0.0.1:5000": {"auth": encoded},
            "https://quay.io": {"username": "quser", "password": "qpass"},
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpass").decode()},
            "acr.example.io": {"identitytoken": "refresh-token"},
            "empty.example.io": {},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    lookup = credentials_from_docker_config(tmp_path)
    assert lookup("127.0.0.1:5000") == ("robot", "s3cr:et")
    assert lookup("quay.io") == ("quser", "qpass")
    assert lookup(DOCKER_HUB_HOST) == ("hubuser", "hubpass")
    assert lookup(ImageName.parse("jupyter/base-notebook").host) == ("hubuser", "hubpass")
    assert lookup("acr.example.io") == ("<token>", "refresh-token")
    assert lookup("empty.example.io") is None
    assert lookup("gcr.io") is None
    assert credentials_from_docker_config(tmp_path / "missing")("quay.io") is None


def test_credentials_from_a_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers run `docker-credential-<name>` with the given environment, as the Docker CLI does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-hubploytest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'if [ "$server" = "registry.example.org" ]; then\n'
        '  printf \'{"ServerURL":"%s","Username":"helper-user","Secret":"%s"}\' "$server" "$HELPER_SECRET"\n'
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    )
    helper.chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"registry.example.org": "hubploytest"}}))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    lookup = credentials_from_docker_config(tmp_path, {"HELPER_SECRET": "from-env"})
    assert lookup("registry.example.org") == ("helper-user", "from-env")
    assert lookup("other.example.org") is None


@pytest.mark.integration
def test_credentials_from_docker_config_reach_the_auth_registry(
    auth_registry: RegistryService, pushed: Pushed, tmp_path: Path
) -> None:
    image, tag, digest = pushed(auth_registry)
    (tmp_path / "config.json").write_text(json.dumps(auth_registry.docker_config()))
    client = RegistryClient(credentials_from_docker_config(tmp_path), timeout=10)
    assert client.manifest_digest(image, tag) == digest
