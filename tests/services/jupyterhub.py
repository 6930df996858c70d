"""A real JupyterHub for the health-check tests: PyPI `jupyterhub` with npm `configurable-http-proxy`.

The hub runs once per session on free loopback ports, in a temporary folder that holds its sqlite database,
cookie secret, generated proxy token, config file, log and the single-user servers' home folders. Single-user
servers are real `jupyterhub-singleuser` (jupyter_server) processes started by
`jupyterhub.spawner.SimpleLocalProcessSpawner`; the tests run as root, hence `--allow-root`.

An admin service `hubploy-health` gets a random, canary-like API token (`jupyterhub_server.token`) and, through
`load_roles`, the scopes a deploy health check needs (the role 2i2c gives its `hub-health` service).

Load with `pytest_plugins = ["services.jupyterhub"]` in tests/conftest.py. Fixture `jupyterhub_server`:
`.url` (the proxy's public URL), `.token`, `.stop()` / `.start()` (same ports, same database) to simulate an
outage, `.pids()` / `.singleuser_pids()` (processes of this hub now) and `.log_tail()`. Users whose name starts
with `FAILING_SPAWN_PREFIX` are refused a server by a pre_spawn_hook, to test how a failed spawn is reported
(with "late" in the name, after the start request has answered). As on Kubernetes, starting and stopping
a server answer 202 at once (`slow_spawn_timeout`, `slow_stop_timeout`), so clients have to follow progress.
Everything started (hub, proxy, single-user servers) is ended at session end, also when the hub is killed.

The proxy comes from PATH or from `.tools/bin` (`scripts/setup.sh proxy` installs the pinned version there).
A missing tool or package fails the tests that use the fixture, it never skips them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hubploy_dagster.local_cluster import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROXY_BINARY = "configurable-http-proxy"
SERVICE_NAME = "hubploy-health"
# Users whose name starts with this never get a server (a pre_spawn_hook refuses): the spawn-failure test.
FAILING_SPAWN_PREFIX = "spawn-fails"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# Set in the environment of the hub, its proxy and its single-user servers, so that teardown finds every
# process this fixture caused, even those started in sessions of their own (proxy and spawner both do that).
MARKER_VARIABLE = "HUBPLOY_TEST_JUPYTERHUB"
# The admin service's role: what the health check uses (users, their servers, and requests to the servers).
SERVICE_SCOPES = ["admin:users", "admin:servers", "access:servers", "read:users", "read:servers"]


def find_proxy() -> str:
    """configurable-http-proxy from PATH, else from the project's .tools/bin; a clear failure otherwise."""
    found = shutil.which(PROXY_BINARY)
    if found:
        return found
    local = PROJECT_ROOT / ".tools" / "bin" / PROXY_BINARY
    if os.access(local, os.X_OK):
        return str(local)
    pytest.fail(
        f"{PROXY_BINARY} (npm) not found on PATH nor in {local.parent}: run `scripts/setup.sh proxy`",
        pytrace=False,
    )


def _process_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or a kernel thread
        return b""


class JupyterHubServer:
    """One JupyterHub with its proxy; its state (database, tokens, ports) survives `stop()` / `start()`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Canary-like: a test can grep any output for it, and it looks like nothing else.
        self.token = f"hubploy-canary-{secrets.token_hex(20)}"
        self.marker = f"{MARKER_VARIABLE}={secrets.token_hex(8)}"
        self.log_path = workdir / "jupyterhub.log"
        self.home_root = workdir / "home"
        self.home_root.mkdir()
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        bin_dir = Path(sys.executable).parent
        singleuser = bin_dir / "jupyterhub-singleuser"
        if not singleuser.exists():
            pytest.fail(
                f"{singleuser} is missing: the test dependencies jupyterhub and jupyter_server are not installed",
                pytrace=False,
            )
        (self.workdir / "cookie_secret").write_text(secrets.token_hex(32))
        (self.workdir / "cookie_secret").chmod(0o600)
        marker_name, marker_value = self.marker.split("=", 1)
        settings = {
            "ip": "127.0.0.1",
            "port": self.port,
            "hub_port": self.hub_port,
            "proxy_api_port": self.proxy_api_port,
            "workdir": str(self.workdir),
            "proxy_command": [find_proxy()],
            "proxy_token": secrets.token_hex(32),
            "service": SERVICE_NAME,
            "token": self.token,
            "scopes": SERVICE_SCOPES,
            "singleuser": str(singleuser),
            "home_template": str(self.home_root / "{username}"),
            "marker_name": marker_name,
            "marker_value": marker_value,
            "password": secrets.token_hex(16),
        }
        fail_prefix = FAILING_SPAWN_PREFIX
        config = f"""\
# Written by tests/services/jupyterhub.py
import asyncio

settings = {settings!r}
c = get_config()  # noqa: F821
c.JupyterHub.ip = settings["ip"]
c.JupyterHub.port = settings["port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
c.JupyterHub.db_url = "sqlite:///" + settings["workdir"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = settings["workdir"] + "/cookie_secret"
c.JupyterHub.pid_file = settings["workdir"] + "/jupyterhub.pid"
c.ConfigurableHTTPProxy.command = settings["proxy_command"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % settings["proxy_api_port"]
c.ConfigurableHTTPProxy.auth_token = settings["proxy_token"]
c.ConfigurableHTTPProxy.pid_file = settings["workdir"] + "/proxy.pid"
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
# Users exist only in the hub (the health check creates and deletes its own); a random password keeps
# the login form closed.
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = settings["password"]
c.JupyterHub.services = [{{"name": settings["service"], "api_token": settings["token"]}}]
c.JupyterHub.load_roles = [
    {{"name": "hubploy-health-check", "scopes": settings["scopes"], "services": [settings["service"]]}}
]
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = settings["home_template"]
c.Spawner.cmd = [settings["singleuser"]]
c.Spawner.args = ["--allow-root"]
c.Spawner.environment = {{settings["marker_name"]: settings["marker_value"]}}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30
c.Spawner.poll_interval = 5
# As on Kubernetes, where pods take longer than the default 10s: the start and stop requests answer 202 at
# once and the check has to follow the server's progress through the user model.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0.1, "slow_stop_timeout": 0.1}}


async def refuse_some_spawns(spawner):
    # Lets a test see how a failed spawn is reported: users named {fail_prefix}* never get a server; with
    # "late" in the name the refusal comes after the start request has answered 202.
    name = spawner.user.name
    if name.startswith({fail_prefix!r}):
        if "late" in name:
            await asyncio.sleep(1)
        raise RuntimeError("spawn refused by the test hub's pre_spawn_hook")


c.Spawner.pre_spawn_hook = refuse_some_spawns
"""
        (self.workdir / "jupyterhub_config.py").write_text(config)

    def start(self) -> None:
        """Start the hub (which starts its proxy) and wait until `<url>/hub/health` answers through the proxy."""
        if self._process is not None and self._process.poll() is None:
            return
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        name, value = self.marker.split("=", 1)
        env[name] = value
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.workdir / "jupyterhub_config.py")],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                pytest.fail(f"jupyterhub exited with code {code} while starting:\n{self.log_tail()}", pytrace=False)
            try:
                response = httpx.get(f"{self.url}/hub/health", timeout=2)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"jupyterhub did not answer {self.url}/hub/health within {START_TIMEOUT_S:.0f}s ({last}):\n"
            f"{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """Stop the hub (it stops its proxy and single-user servers), then end any process of ours still left."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._end_strays()

    def pids(self) -> list[int]:
        """Live processes (not zombies) carrying this hub's marker: hub, proxy and single-user servers."""
        marker = self.marker.encode()
        return [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and marker in _process_environ(int(entry.name)).split(b"\0")
        ]

    def singleuser_pids(self) -> list[int]:
        """The single-user servers of this hub that run now (a test asserts none is left behind)."""
        found = []
        for pid in self.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"jupyterhub-singleuser" in cmdline:
                found.append(pid)
        return found

    def _end_strays(self) -> None:
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self.pids()
            if not pids:
                return

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def jupyterhub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterHubServer]:
    """A running JupyterHub with the admin service `hubploy-health`; see the module docstring."""
    try:
        import jupyter_server  # noqa: F401
        import jupyterhub  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"test dependency missing: {exc} (pip install -e '.[test]')", pytrace=False)
    hub = JupyterHubServer(tmp_path_factory.mktemp("jupyterhub"))
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
