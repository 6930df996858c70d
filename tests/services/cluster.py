"""An emulated Kubernetes cluster for integration tests: kmock behind a real HTTP port and a kubeconfig.

No Kubernetes API server can be installed on these machines (DESIGN.md §5). The tests run real helm,
kubectl and the kubernetes Python client against the `kmock` emulator (PyPI, pinned in the test extras)
with the fixes and API-server behaviour in services/kmock_fixes.py. The emulator runs on its own event loop
in a background thread of the test process, serving http://127.0.0.1:PORT; a kubeconfig file names it.

What differs from a real cluster, and how the tests deal with it:
- helm stores releases in Secrets sent as protobuf, which the emulator cannot read: helm's release storage
  is SQL on a real PostgreSQL instead (`helm_env(dsn)` sets HELM_DRIVER=sql). Typed client-go writes
  (`kubectl create deployment`, `kubectl scale`) are protobuf too and get 415; `kubectl create/apply -f`,
  helm's manifests and the Python client send JSON and work.
- the OpenAPI document served is empty (kmock has none; helm and kubectl refuse to work without one), so
  client-side schema validation checks nothing; `--disable-openapi-validation` (`HELM_EXTRA_ARGS`) is
  accepted but not needed. helm's `--create-namespace` works; `create_namespace` uses the API as hubploy does.
- nothing runs: workloads become ready only when a test says so (`mark_ready`, or `auto_ready` while a
  `helm upgrade --wait` runs), and can be made to crash-loop (`mark_crashloop`, `crash_image`).

Load with `pytest_plugins = ["services.cluster"]` (it needs no other plugin; helm tests also use
`services.postgres`). Fixtures: `k8s_cluster` (session) and `k8s_namespace` (a fresh namespace per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import kmock
import pytest
import yaml

from services.kmock_fixes import DEPLOYMENTS, PODS, EmulatedApiServer, run_locked

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = PROJECT_ROOT / ".tools" / "bin"
CONTEXT = "kmock-emulator"
# Extra helm flags the tests pass like a product configuration would: harmless on a real cluster, and what
# an emulator without an OpenAPI document needed (this one serves an empty one, so it works without too).
HELM_EXTRA_ARGS = ("--disable-openapi-validation",)
CALL_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """The project's pinned helm/kubectl (.tools/bin) first, then PATH; /usr/bin/kubectl may be another one."""
    pinned = TOOLS_BIN / name
    if pinned.exists():
        return str(pinned)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (scripts/setup.sh puts the pinned one in .tools/bin)", pytrace=False)
    return found


class KubernetesCluster:
    """The emulated cluster: API server on 127.0.0.1:`port`, a kubeconfig, and controller helpers.

    Attributes: `kubeconfig` (Path), `server` (URL), `context` (kubeconfig context name), `port`,
    `emulator` (the EmulatedApiServer, for assertions on stored objects).
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.server = f"http://127.0.0.1:{self.port}"
        self.context = CONTEXT
        self.kubeconfig = workdir / "kubeconfig.yaml"
        self.helm_home = workdir / "helm"
        self.emulator: EmulatedApiServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock-emulator", daemon=True)
        self._http: kmock.Server | None = None
        self._names = itertools.count(1)
        self._write_kubeconfig()

    # -- lifecycle -------------------------------------------------------------------------------

    def _call(self, coroutine: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def _locked(self, action: Callable[[], T]) -> T:
        """Run `action` on the emulator's loop with the emulator's lock held (its state is not thread-safe)."""
        assert self.emulator is not None
        return self._call(run_locked(self.emulator, action))

    def boot(self) -> None:
        """Start the loop thread, the emulator (its state lives until `shutdown`) and the HTTP server."""
        self._thread.start()

        async def enter() -> EmulatedApiServer:
            emulator = EmulatedApiServer()
            await emulator.__aenter__()
            return emulator

        self.emulator = self._call(enter())
        self.start()

    def start(self) -> None:
        """(Re)start serving on the same port: the cluster is reachable again, with all its objects."""
        if self._http is not None:
            return
        assert self.emulator is not None

        async def serve() -> kmock.Server:
            http = kmock.Server(self.emulator, host="127.0.0.1", port=self.port)
            await http.__aenter__()
            return http

        self._http = self._call(serve())

    def stop(self) -> None:
        """Stop serving: clients get "connection refused" from `server`, as with an unreachable cluster."""
        http, self._http = self._http, None
        if http is not None:
            emulator = self.emulator

            async def close() -> None:
                if emulator is not None:
                    emulator.close_watches()  # aiohttp would wait for open watch streams to end
                    await asyncio.sleep(0)
                await http.__aexit__(None, None, None)

            self._call(close())

    @property
    def running(self) -> bool:
        return self._http is not None

    def shutdown(self) -> None:
        """Stop the server, the emulator and the loop thread."""
        self.stop()
        if self.emulator is not None:
            self._call(self.emulator.__aexit__(None, None, None))
            self.emulator = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.server}}],
            "users": [{"name": f"{CONTEXT}-admin", "user": {"token": "emulator-has-no-auth"}}],
            "contexts": [
                {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": f"{CONTEXT}-admin", "namespace": "default"}}
            ],
            "current-context": CONTEXT,
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)  # helm warns about group/world-readable kubeconfigs

    # -- clients ---------------------------------------------------------------------------------

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster (the official Python client)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig), context=self.context)

    def new_namespace_name(self, prefix: str = "test") -> str:
        """A namespace name no test used before in this session (DNS-1123, at most 63 characters)."""
        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        return f"{base}-{next(self._names)}-{os.getpid() % 10000}"

    def create_namespace(self, name: str) -> str:
        """Create a namespace through the API (the kubernetes client), as hubploy does; returns its name."""
        from kubernetes import client

        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def helm_env(self, dsn: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for running helm against this cluster, releases stored in PostgreSQL at `dsn`.

        HELM_DRIVER=sql because helm's default Secret storage sends protobuf the emulator cannot read;
        helm's cache/config/data homes are private to the session so no user's repositories leak in.
        """
        env = dict(os.environ if base is None else base)
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "HELM_KUBECONTEXT": self.context,
                "HELM_DRIVER": "sql",
                "HELM_DRIVER_SQL_CONNECTION_STRING": dsn,
                "HELM_CACHE_HOME": str(self.helm_home / "cache"),
                "HELM_CONFIG_HOME": str(self.helm_home / "config"),
                "HELM_DATA_HOME": str(self.helm_home / "data"),
                "PATH": f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        return env

    def kubectl_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for kubectl against this cluster (KUBECONFIG, pinned tools first on PATH)."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- controllers -----------------------------------------------------------------------------

    def mark_ready(self, namespace: str) -> list[str]:
        """Roll out every workload in `namespace` now; returns what was reconciled ("kind/name").

        Deployments get a ReplicaSet per pod template and Running+Ready pods; StatefulSets, DaemonSets,
        ReplicaSets and Jobs get pods and a finished status (observedGeneration, replicas, ready/updated/
        available counts, conditions, revisions); PVCs are Bound; Services get Endpoints and LoadBalancers
        an address. Workloads whose pod template was marked as crashing stay not ready.
        """
        assert self.emulator is not None
        emulator = self.emulator
        return self._locked(lambda: emulator.reconcile(namespace))

    @contextlib.contextmanager
    def auto_ready(self, namespace: str) -> Iterator[None]:
        """While inside, every write to `namespace` is followed by a rollout of its workloads.

        The emulator reconciles in the same request that changed something, so `helm upgrade --wait`
        finds its workloads ready at its first check (no polling delay, no background thread to race).
        """
        assert self.emulator is not None
        emulator = self.emulator
        self._locked(lambda: emulator.auto_ready_namespaces.add(namespace))
        try:
            self.mark_ready(namespace)
            yield
        finally:
            if self.emulator is not None:
                self._locked(lambda: emulator.auto_ready_namespaces.discard(namespace))

    def mark_crashloop(self, namespace: str, deployment: str) -> list[str]:
        """Make the current pods of a Deployment crash-loop; returns their names.

        The pods show `CrashLoopBackOff` (containerStatuses[].state.waiting.reason, restartCount 5,
        Ready=False) and the Deployment loses availability. It lasts for this pod template: a new
        template (an upgrade or a rollback) rolls out normally.
        """
        assert self.emulator is not None
        emulator = self.emulator

        def crash() -> list[str]:
            obj = emulator.get(DEPLOYMENTS, namespace, deployment)
            if obj is None:
                raise LookupError(f"no Deployment {namespace}/{deployment} in the emulated cluster")
            template_hash = emulator.template_hash(obj["spec"].get("template") or {})
            emulator.crash_templates.add((namespace, deployment, template_hash))
            emulator.reconcile_deployment(obj)
            return [
                pod["metadata"]["name"]
                for pod in emulator.items(PODS, namespace)
                if pod["metadata"].get("labels", {}).get("pod-template-hash") == template_hash
            ]

        return self._locked(crash)

    @contextlib.contextmanager
    def crash_image(self, pattern: str) -> Iterator[None]:
        """While inside, pods of any workload using an image matching `pattern` (fnmatch) crash-loop.

        For "an upgrade to a broken image never becomes ready" (helm --wait times out, --atomic rolls
        back to the previous template, which rolls out normally again).
        """
        assert self.emulator is not None
        emulator = self.emulator
        self._locked(lambda: emulator.crash_images.append(pattern))
        try:
            yield
        finally:
            if self.emulator is not None:
                self._locked(lambda: emulator.crash_images.remove(pattern))

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects of a resource ("apps/v1/deployments", "v1/pods"), read without the HTTP API."""
        assert self.emulator is not None
        emulator = self.emulator
        parsed = kmock.resource(resource)
        return self._locked(lambda: emulator.items(parsed, namespace))


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[KubernetesCluster]:
    """The emulated Kubernetes cluster for the whole session (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-k8s-"))
    cluster = KubernetesCluster(workdir)
    try:
        cluster.boot()
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def k8s_namespace(k8s_cluster: KubernetesCluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace, created through the API, named after the test."""
    if not k8s_cluster.running:
        k8s_cluster.start()  # a test that stopped the cluster and failed before starting it again
    name = k8s_cluster.new_namespace_name(request.node.name.split("[")[0].removeprefix("test_").replace("_", "-"))
    return k8s_cluster.create_namespace(name)


__all__ = ["HELM_EXTRA_ARGS", "KubernetesCluster", "k8s_cluster", "k8s_namespace", "tool"]
