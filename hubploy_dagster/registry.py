"""A small client of the OCI distribution API: does a tag exist in the registry, and with which digest.

Plain HTTP rather than the Docker engine: it needs no engine, tells a missing tag apart from a registry that is
down or refuses the credentials, and names the registry. Credentials come from the caller's lookup (a private
`DOCKER_CONFIG`, see `hubploy_dagster.cloud`); no password or token is ever put in a message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from docker import credentials as docker_credentials

from hubploy_dagster.errors import HubployError

Credentials = Callable[[str], tuple[str, str] | None]  # host as in an image name -> (username, password)
DOCKER_HUB_HOST = "registry-1.docker.io"  # where Docker Hub's API answers; image names say `docker.io` or nothing
IDENTITY_TOKEN_USERNAME = "<token>"  # Docker's convention: the password is then an OAuth2 refresh token

_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", DOCKER_HUB_HOST}
_DOCKER_HUB_CONFIG_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", DOCKER_HUB_HOST)

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

# The grammar of docker/distribution's reference package: lowercase path components, a tag of 1-128 characters.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_ABSENT_CODES = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryError(HubployError):
    """The registry could not answer: unreachable, timed out, or an HTTP error; names the registry."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or there were none and it wants some)."""


@dataclass(frozen=True)
class ImageName:
    """An image name without tag or digest, split as the Docker CLI does: the first component is the registry
    host if it has a '.' or ':' or is `localhost`; otherwise Docker Hub (one-component names under `library/`)."""

    host: str
    repository: str

    @classmethod
    def parse(cls, name: str) -> ImageName:
        if not name or name != name.strip():
            raise ValueError(f"invalid image name {name!r}: empty or surrounded by spaces")
        if "@" in name:
            raise ValueError(f"invalid image name {name!r}: give the name without a digest")
        first, sep, rest = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            host, path = first, rest
        else:
            host, path = DOCKER_HUB_HOST, name
        if ":" in path:
            raise ValueError(f"invalid image name {name!r}: give the name without a tag (the tag is computed)")
        components = path.split("/")
        bad = [c for c in components if not _PATH_COMPONENT.fullmatch(c)]
        if bad:
            raise ValueError(
                f"invalid image name {name!r}: path component {bad[0]!r} must be lowercase letters and digits "
                "separated by '.', '_', '__' or '-'"
            )
        if host.lower() in _DOCKER_HUB_ALIASES:
            host = DOCKER_HUB_HOST
            if len(components) == 1:
                path = f"library/{path}"
        return cls(host, path)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


def is_loopback(host: str) -> bool:
    """Whether `host` (with or without port) is this machine; Docker talks plain HTTP to such registries."""
    hostname = _split_host(host)[0]
    try:
        return hostname.lower() == "localhost" or ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _split_host(host: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6]:port` -> (hostname, port or None)."""
    if host.startswith("["):
        hostname, _, rest = host[1:].partition("]")
        return hostname, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    hostname, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in hostname:
        return hostname, int(port)
    return host, None


def _host_and_port(host: str, scheme: str) -> str:
    """How a message names the registry: always with the port, so an operator knows what was tried."""
    return host if _split_host(host)[1] is not None else f"{host}:{443 if scheme == 'https' else 80}"


def _connect_reason(exc: BaseException) -> str:
    """A short reason for a failed connection ("connection refused"), from the OS error under httpx's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or getattr(current, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed ({current.reason or current})"
        if isinstance(current, OSError) and current.errno is not None:
            return (current.strerror or str(current)).lower()
        current = current.__cause__ or current.__context__
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or type(exc).__name__


def _error_codes_and_message(response: httpx.Response) -> tuple[set[str], str]:
    """The distribution API's `{"errors": [{"code", "message"}]}`, or the start of whatever else it said."""
    try:
        body = response.json()
    except ValueError:  # also a body that is not UTF-8
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set(), response.text.strip()[:200]
    errors = [e for e in errors if isinstance(e, dict)]
    text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    return {str(e.get("code", "")) for e in errors}, text


class RegistryClient:
    """Asks a registry whether `image:tag` exists and what its digest is, authenticating like Docker does.

    Holds no connection between calls; it remembers which scheme a loopback registry speaks and the last
    bearer token per repository, so repeated checks of one image do not repeat the token dance.
    """

    def __init__(self, credentials: Credentials | None = None, timeout: float = 30.0):
        self.credentials: Credentials = credentials or (lambda host: None)
        self.timeout = timeout
        self._schemes: dict[str, str] = {}
        self._auth_headers: dict[tuple[str, str], str] = {}
        self._found: dict[str, tuple[str, str] | None] = {}
        self._secrets: set[str] = set()

    def _credentials(self, host: str) -> tuple[str, str] | None:
        """The lookup's answer for `host`, asked once per client (a credential helper is a subprocess)."""
        if host not in self._found:
            found = self._found[host] = self.credentials(host)
            if found:
                self._secrets.add(found[1])
        return self._found[host]

    def exists(self, image: str, tag: str) -> bool:
        """Whether `image:tag` is in the registry; registry failures raise rather than answer False."""
        return self.manifest_digest(image, tag) is not None

    def manifest_digest(self, image: str, tag: str) -> str | None:
        """The digest the registry serves for `image:tag` (`sha256:...`), or None when the tag is absent."""
        name = ImageName.parse(image)
        if not _TAG.fullmatch(tag):
            raise ValueError(f"invalid tag {tag!r} for {image}")
        path = f"/v2/{name.repository}/manifests/{tag}"
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:
            response = self._request(client, "HEAD", name, path, headers)
            if response.status_code == 404:
                return None
            if response.is_success and response.headers.get("Docker-Content-Digest"):
                return response.headers["Docker-Content-Digest"]
            # A HEAD has no body: ask again with GET for the digest to hash, or for the registry's error text.
            response = self._request(client, "GET", name, path, headers)
            if response.is_success:
                digest = response.headers.get("Docker-Content-Digest")
                return digest or "sha256:" + hashlib.sha256(response.content).hexdigest()
            codes, message = _error_codes_and_message(response)
            if response.status_code == 404 or codes & _ABSENT_CODES:
                return None
            where = _host_and_port(name.host, self._schemes.get(name.host, "https"))
            raise RegistryError(
                f"registry {where} answered HTTP {response.status_code} for {name.repository}:{tag}: "
                f"{self._safe(message, name.host) or response.reason_phrase}"
            )

    # -- HTTP with Docker's scheme and authentication rules ------------------------------------------------

    def _safe(self, text: str, host: str) -> str:
        """`text` without any password, token or Authorization value this client has used."""
        self._credentials(host)
        for secret in sorted(self._secrets - {""}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _request(
        self, client: httpx.Client, method: str, name: ImageName, path: str, headers: Mapping[str, str]
    ) -> httpx.Response:
        """Send with the cached authorization; on 401 answer the challenge once; refuse a second 401/403."""
        key = (name.host, name.repository)
        auth = self._auth_headers.get(key)
        response = self._send(client, method, name.host, path, {**headers, "Authorization": auth} if auth else headers)
        if response.status_code != 401:
            return response
        self._auth_headers.pop(key, None)
        authorization = self._answer_challenge(client, name, response)
        self._secrets.add(authorization.split(" ", 1)[-1])
        self._auth_headers[key] = authorization
        response = self._send(client, method, name.host, path, {**headers, "Authorization": authorization})
        if response.status_code in (401, 403):
            self._auth_headers.pop(key, None)
            if method == "HEAD":  # a HEAD answer has no body: ask again for the registry's reason
                with contextlib.suppress(RegistryError):
                    response = self._send(client, "GET", name.host, path, {**headers, "Authorization": authorization})
            raise self._auth_failed(name, response)
        return response

    def _auth_failed(
        self, name: ImageName, response: httpx.Response | None, reason: str = "", by: str = "the registry"
    ) -> RegistryAuthError:
        """Say who refused whom, with the server's own words; never a password or token."""
        found = self._credentials(name.host)
        if response is not None:
            status = f"HTTP {response.status_code}"
            message = self._safe(_error_codes_and_message(response)[1], name.host) if response.content else ""
            detail = f"{status}: {message}" if message else status
            whose = "anonymous access" if found is None else f"the credentials of user {found[0]!r}"
            reason = f"{by} refused {whose} ({detail})"
        if found is None:
            reason = f"no credentials for {name.host}; {reason}"
        return RegistryAuthError(f"authentication to {name.host} failed for {name.repository}: {reason}")

    def _answer_challenge(self, client: httpx.Client, name: ImageName, response: httpx.Response) -> str:
        """The Authorization header that answers the registry's challenge (`Bearer realm="...",service="..."`)."""
        scheme, _, challenge = response.headers.get("WWW-Authenticate", "").strip().partition(" ")
        scheme = scheme.lower()
        params = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _CHALLENGE_PARAM.finditer(challenge)}
        found = self._credentials(name.host)
        if scheme == "basic":
            if found is None:
                raise self._auth_failed(name, None, "the registry wants a username and password")
            return "Basic " + base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
        if scheme != "bearer" or not params.get("realm"):
            raise self._auth_failed(name, None, f"unsupported challenge {scheme or 'none'!r}")
        return f"Bearer {self._fetch_token(client, name, params)}"

    def _fetch_token(self, client: httpx.Client, name: ImageName, params: dict[str, str]) -> str:
        """Docker's token flow: GET the realm (basic credentials when known), or OAuth2 for identity tokens."""
        realm, found = params["realm"], self._credentials(name.host)
        service = f"token service {realm} of registry {name.host}"
        query = {"scope": f"repository:{name.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        try:
            if found is not None and found[0] == IDENTITY_TOKEN_USERNAME:
                grant = {"grant_type": "refresh_token", "refresh_token": found[1], "client_id": "hubploy-dagster"}
                token_response = client.post(realm, data={**query, **grant})
            else:
                token_response = client.get(realm, params=query, auth=httpx.BasicAuth(*found) if found else None)
        except httpx.TransportError as exc:
            raise self._unreachable(service, exc) from None
        if token_response.status_code in (401, 403):
            raise self._auth_failed(name, token_response, by=f"the token service {realm}")
        if not token_response.is_success:
            message = self._safe(_error_codes_and_message(token_response)[1], name.host)
            raise RegistryError(f"{service} answered HTTP {token_response.status_code}: {message}")
        try:
            body = token_response.json()
        except ValueError:
            body = {}
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise RegistryError(f"{service} answered without a token")
        return str(token)

    def _unreachable(self, what: str, exc: httpx.TransportError) -> RegistryError:
        """A transport failure of `what` (a registry with its port, or a token service): timeout or reason."""
        if isinstance(exc, httpx.TimeoutException):
            return RegistryError(f"{what} did not answer within {self.timeout:g}s")
        return RegistryError(f"{what} is unreachable: {_connect_reason(exc)}")

    def _send(
        self, client: httpx.Client, method: str, host: str, path: str, headers: Mapping[str, str]
    ) -> httpx.Response:
        """https; a loopback registry as Docker does: TLS without certificate checks, else plain http."""
        loopback = is_loopback(host)
        known = self._schemes.get(host)
        schemes = [known] if known else (["https", "http"] if loopback else ["https"])
        for scheme in schemes:
            url = f"{scheme}://{host}{path}"
            try:
                if loopback and scheme == "https":
                    with httpx.Client(timeout=self.timeout, verify=False, follow_redirects=True) as insecure:
                        response = insecure.request(method, url, headers=headers)
                else:
                    response = client.request(method, url, headers=headers)
            except httpx.TransportError as exc:
                if scheme != schemes[-1] and not isinstance(exc, httpx.TimeoutException):
                    continue
                raise self._unreachable(f"registry {_host_and_port(host, scheme)}", exc) from None
            self._schemes[host] = scheme
            return response
        raise AssertionError("unreachable")  # pragma: no cover


def _config_entry(entries: Mapping[str, Any], keys: list[str], host: str) -> Any:
    """The entry under one of `keys`, else under a key naming `host` (`https://host/v1/`), as the Docker CLI."""
    named = (v for k, v in entries.items() if k.replace("https://", "").replace("http://", "").split("/", 1)[0] == host)
    return next((entries[k] for k in keys if k in entries), None) or next(named, None)


def credentials_from_docker_config(config_dir: Path, env: Mapping[str, str] | None = None) -> Credentials:
    """A credentials lookup reading `<config_dir>/config.json` as the Docker CLI does: `credHelpers[host]`,
    then `credsStore`, then `auths`. Helpers run with `env` (so they read this run's cloud CLI configuration);
    the file is read on each lookup, because a provider's login may write it after this function returned.
    """
    config_file = Path(config_dir) / "config.json"
    environment = dict(env) if env is not None else None

    def from_helper(name: str, server: str) -> tuple[str, str] | None:
        """Ask `docker-credential-<name>` for `server` (the host; Docker Hub's index URL for Docker Hub)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the SDK warns when the helper is missing; get() then says so
            store = docker_credentials.Store(name, environment=environment)
        try:
            data = store.get(server)
        except docker_credentials.CredentialsNotFound:
            return None
        except docker_credentials.StoreError as exc:
            raise RegistryError(f"{config_file}: credential helper docker-credential-{name} failed: {exc}") from None
        return str(data["Username"]), str(data["Secret"])

    def lookup(host: str) -> tuple[str, str] | None:
        try:
            config = json.loads(config_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{config_file}: cannot read Docker credentials: {exc}") from None
        if not isinstance(config, dict):
            return None
        if host.lower() in _DOCKER_HUB_ALIASES:
            keys = list(_DOCKER_HUB_CONFIG_KEYS)
        else:
            keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
        helper = _config_entry(config.get("credHelpers") or {}, keys, host)
        for store_name in (helper, config.get("credsStore")):
            if store_name:
                found = from_helper(str(store_name), keys[0])
                if found is not None:
                    return found
        entry = _config_entry(config.get("auths") or {}, keys, host)
        if not isinstance(entry, dict):
            return None
        if entry.get("identitytoken"):
            return IDENTITY_TOKEN_USERNAME, str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                username, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return (username, password) if sep else None
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        return None

    return lookup
