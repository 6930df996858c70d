"""The shipped front door for real: nginx with deploy/front-door/hubploy.conf.template, oauth2-proxy with
deploy/front-door/oauth2-proxy.cfg (configured through the variables that file documents), and test-idp
(scripts/front-door/test-idp: oauth2-proxy's mockoidc) as the identity provider, all on loopback ports.

The identity provider knows an operator (in the operators' group) and a viewer. `FrontDoor.sign_in(user)`
goes through the real OAuth2 code flow (nginx -> oauth2-proxy -> identity provider -> callback) with an httpx
client that keeps the session cookie, as a browser does.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.cluster import free_port, tool
from services.repos import PROJECT_ROOT

FRONT_DOOR = PROJECT_ROOT / "deploy" / "front-door"
OPERATORS_GROUP = "hubploy-operators"
USERS = {
    "operator": ("operator@example.org", [OPERATORS_GROUP, "staff"]),
    "viewer": ("viewer@example.org", ["staff"]),
    "outsider": ("student@example.org", ["students"]),  # not in OAUTH2_PROXY_ALLOWED_GROUPS
}
TEMPLATE_VARIABLE = re.compile(r"\$\{(\w+)\}")


def render_template(values: dict[str, str]) -> str:
    """The nginx configuration as the official image renders the template: each ${NAME} from `values`."""
    text = (FRONT_DOOR / "hubploy.conf.template").read_text()
    missing = set(TEMPLATE_VARIABLE.findall(text)) - values.keys()
    assert not missing, f"the template uses variables the test does not set: {missing}"
    return TEMPLATE_VARIABLE.sub(lambda match: values[match.group(1)], text)


def wait_answers(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited:\n{log.read_text()[-3000:]}", pytrace=False)
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.2)
    pytest.fail(f"nothing answered at {url} within {timeout:.0f}s:\n{log.read_text()[-3000:]}", pytrace=False)


@dataclass
class FrontDoor:
    url: str
    access_log: Path
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.processes.append(process)
        return process

    def client(self, user: str | None = None) -> httpx.Client:
        """A browser: follows redirects, keeps cookies; `user` is whom the identity provider signs in."""
        headers = {"X-Test-User": user} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, follow_redirects=True, timeout=60)

    @contextlib.contextmanager
    def sign_in(self, user: str) -> Iterator[httpx.Client]:
        """A browser signed in as `user` through the OAuth2 code flow (nginx, oauth2-proxy, identity provider)."""
        with self.client(user) as client:
            response = client.get("/")
            assert response.status_code == 200 and response.url.path == "/", (response.status_code, response.url)
            assert "_hubploy_session" in client.cookies, f"no session cookie after signing in as {user}"
            yield client

    def access_log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def front_door(workdir: Path, webserver: str, read_only_webserver: str) -> Iterator[FrontDoor]:
    """nginx, oauth2-proxy and the identity provider in front of the two webservers (host:port each)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, proxy_port, idp_port = free_port(), free_port(), free_port()
    door = FrontDoor(f"http://127.0.0.1:{port}", workdir / "access.log", workdir)
    try:
        client_secret = secrets.token_urlsafe(24)
        users = [f"{name}:{email}:{','.join(groups)}" for name, (email, groups) in USERS.items()]
        idp = door.start(
            "test-idp",
            [
                tool("test-idp"),
                "-listen",
                f"127.0.0.1:{idp_port}",
                "-client-id",
                "hubploy",
                "-client-secret",
                client_secret,
                *(arg for user in users for arg in ("-user", user)),
            ],
        )
        issuer = f"http://127.0.0.1:{idp_port}/oidc"
        wait_answers(f"{issuer}/.well-known/openid-configuration", idp, workdir / "test-idp.log")
        # The variables deploy/front-door/oauth2-proxy.cfg documents; plain http on loopback only here.
        proxy_env = {
            "PATH": os.environ["PATH"],
            "OAUTH2_PROXY_OIDC_ISSUER_URL": issuer,
            "OAUTH2_PROXY_CLIENT_ID": "hubploy",
            "OAUTH2_PROXY_CLIENT_SECRET": client_secret,
            "OAUTH2_PROXY_COOKIE_SECRET": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "OAUTH2_PROXY_ALLOWED_GROUPS": f"{OPERATORS_GROUP},staff",
            "OAUTH2_PROXY_REDIRECT_URL": f"{door.url}/oauth2/callback",
        }
        proxy = door.start(
            "oauth2-proxy",
            [
                tool("oauth2-proxy"),
                f"--config={FRONT_DOOR / 'oauth2-proxy.cfg'}",
                f"--http-address=127.0.0.1:{proxy_port}",
                "--cookie-secure=false",
            ],
            proxy_env,
        )
        wait_answers(f"http://127.0.0.1:{proxy_port}/ping", proxy, workdir / "oauth2-proxy.log")
        site = render_template(
            {
                "HUBPLOY_FRONT_DOOR_PORT": f"127.0.0.1:{port}",
                "HUBPLOY_OAUTH2_PROXY": f"127.0.0.1:{proxy_port}",
                "HUBPLOY_WEBSERVER": webserver,
                "HUBPLOY_WEBSERVER_READ_ONLY": read_only_webserver,
                "HUBPLOY_OPERATORS_GROUP": OPERATORS_GROUP,
                "HUBPLOY_ACCESS_LOG": str(door.access_log),
            }
        )
        (workdir / "hubploy.conf").write_text(site)
        # Workers run as root here (CI's user): they buffer large responses in temp files under the workdir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (workdir / "nginx.conf").write_text(
            f"daemon off;\n{user}pid {workdir / 'nginx.pid'};\nerror_log {workdir / 'nginx-error.log'} notice;\n"
            "events {}\n"
            f"http {{\n  client_body_temp_path {workdir};\n  proxy_temp_path {workdir};\n"
            f"  include {workdir / 'hubploy.conf'};\n}}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        server = door.start("nginx", [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf")])
        wait_answers(f"{door.url}/oauth2/ping", server, workdir / "nginx-error.log")
        yield door
    finally:
        door.stop()
