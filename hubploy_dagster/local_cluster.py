"""A real Kubernetes control plane on this machine, with kwok nodes that run no containers.

The demo (`make run` without a usable kubeconfig) and the test suite deploy to it. It is not an emulator:
etcd, kube-apiserver (with RBAC on), kube-controller-manager and kube-scheduler are the real programs,
built from Go modules by scripts/build-control-plane.sh; only the kubelet is replaced, by kwok, which
writes the pod status a kubelet would (local_cluster_stages.yaml says which) while nothing runs.

Every component listens on loopback ports picked free at start; certificates are made fresh for each
cluster; a component that does not come up is named with the last lines of its log.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from hubploy_dagster.errors import HubployError
from hubploy_dagster.tools import find_tool

STAGES = Path(__file__).with_name("local_cluster_stages.yaml")
NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
START_TIMEOUT_S = 120.0
BUILT_BY = "the local cluster (`scripts/setup.sh control-plane` builds its programs into .tools/bin)"
LOG_LINES = 30
# The programs, in start order: (component, executable). The build script puts them on PATH (.tools/bin).
COMPONENTS = (
    ("etcd", "etcd"),
    ("kube-apiserver", "kube-apiserver"),
    ("kube-controller-manager", "kube-controller-manager"),
    ("kube-scheduler", "kube-scheduler"),
    ("kwok", "kwok"),
)


class LocalClusterError(HubployError):
    """A component of the local control plane is missing or did not start: names it, with its log's end."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_free(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- certificates ------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Pki:
    """The files of the cluster's certificate authority, API server certificate, admin client and service accounts."""

    folder: Path

    ca_cert = property(lambda self: self.folder / "ca.crt")
    ca_key = property(lambda self: self.folder / "ca.key")
    server_cert = property(lambda self: self.folder / "apiserver.crt")
    server_key = property(lambda self: self.folder / "apiserver.key")
    admin_cert = property(lambda self: self.folder / "admin.crt")
    admin_key = property(lambda self: self.folder / "admin.key")
    service_account_key = property(lambda self: self.folder / "sa.key")
    service_account_pub = property(lambda self: self.folder / "sa.pub")

    def create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key = _key()
        ca = _certificate(_name("hubploy-local-cluster-ca"), ca_key, None, ca=True)
        server_key = _key()
        sans: list[x509.GeneralName] = [
            x509.DNSName(name) for name in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
        ]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
        server = _certificate(_name("kube-apiserver"), server_key, (ca, ca_key), sans=sans)
        admin_key = _key()
        admin = _certificate(_name("hubploy-admin", "system:masters"), admin_key, (ca, ca_key), client=True)
        for cert, key, cert_path, key_path in (
            (ca, ca_key, self.ca_cert, self.ca_key),
            (server, server_key, self.server_cert, self.server_key),
            (admin, admin_key, self.admin_cert, self.admin_key),
        ):
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(key, key_path)
        sa_key = _key()
        _write_key(sa_key, self.service_account_key)
        self.service_account_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


# -- the cluster -------------------------------------------------------------------------------------


@dataclass
class Component:
    """One running program of the control plane and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = LOG_LINES) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalCluster:
    """A control plane under `folder` (certificates, etcd data, logs, kubeconfig), started by `start`.

    `kubeconfig` names the admin (system:masters) in context `context`; `server` is the API server's URL.
    """

    folder: Path
    context: str = "hubploy-local"
    nodes: int = 1
    components: dict[str, Component] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pki(self) -> Pki:
        return Pki(self.folder / "pki")

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig.yaml"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    # -- start and stop --------------------------------------------------------------------------

    def start(self) -> None:
        """Start every component in order and create the nodes; on any failure stop what started."""
        programs = {component: find_tool(program, BUILT_BY) for component, program in COMPONENTS}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        if not self.pki.ca_cert.exists():
            self.pki.create()
        self._choose_ports()
        self._write_kubeconfig()
        try:
            self._start_etcd(programs["etcd"])
            self.start_apiserver(programs["kube-apiserver"])
            self._start_controllers(programs)
            self._create_nodes()
            self._create_default_storage_class()
        except BaseException:
            self.stop()
            raise

    def _choose_ports(self) -> None:
        """The ports of the last start when they are still free (clients keep their address), else new ones."""
        saved = self.folder / "ports.json"
        previous = json.loads(saved.read_text()) if saved.exists() else {}
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler"):
            if name not in self.ports:
                self.ports[name] = previous[name] if _is_free(previous.get(name)) else free_port()
        saved.write_text(json.dumps(self.ports))

    def _launch(self, name: str, args: list[str]) -> Component:
        log = self.folder / "logs" / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        component = Component(name, process, log)
        self.components[name] = component
        return component

    def _wait(self, component: Component, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                raise LocalClusterError(
                    f"{component.name} exited with code {component.process.returncode} before {what}; "
                    f"the end of {component.log}:\n{component.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():
                    return
            time.sleep(0.2)
        raise LocalClusterError(
            f"{component.name} did not report {what} within {START_TIMEOUT_S:.0f} s; "
            f"the end of {component.log}:\n{component.log_tail()}"
        )

    def _start_etcd(self, program: str) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        etcd = self._launch(
            "etcd",
            [
                program,
                "--name=local",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                "--unsafe-no-fsync",  # a throwaway cluster: durability costs seconds per deploy on a slow disk
                "--log-level=warn",
            ],
        )
        self._wait(etcd, lambda: httpx.get(f"{client}/health", timeout=2).json().get("health") == "true", "health")

    def start_apiserver(self, program: str | None = None) -> None:
        """(Re)start kube-apiserver on the cluster's port, with the data etcd keeps."""
        program = program or find_tool("kube-apiserver", BUILT_BY)
        pki = self.pki
        apiserver = self._launch(
            "kube-apiserver",
            [
                program,
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={pki.server_cert}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",  # loopback addresses may not be Endpoints of `kubernetes`
                "--profiling=false",
            ],
        )
        self._wait(apiserver, lambda: self._get("/readyz").status_code == 200, "ready (/readyz)")

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver: clients then get "connection refused", as from an unreachable cluster."""
        self._terminate(self.components.pop("kube-apiserver", None))

    def _start_controllers(self, programs: dict[str, str]) -> None:
        kubeconfig = str(self.kubeconfig)
        common = [f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false"]
        auth = [f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}"]
        pki = self.pki
        controller_manager = self._launch(
            "kube-controller-manager",
            [
                programs["kube-controller-manager"],
                *common,
                *auth,
                f"--secure-port={self.ports['controller-manager']}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                # kube-controller-manager's own hostPath provisioner (single-node clusters only): PVCs such as the
                # hub database's `hub-db-dir` bind through the default StorageClass, as on a cloud cluster.
                "--enable-hostpath-provisioner=true",
            ],
        )
        scheduler = self._launch(
            "kube-scheduler",
            [programs["kube-scheduler"], *common, *auth, f"--secure-port={self.ports['scheduler']}"],
        )
        self._launch(
            "kwok",
            [
                programs["kwok"],
                f"--kubeconfig={kubeconfig}",
                f"--config={STAGES}",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
            ],
        )
        for component, port in ((controller_manager, "controller-manager"), (scheduler, "scheduler")):
            url = f"https://127.0.0.1:{self.ports[port]}/healthz"
            self._wait(component, lambda url=url: httpx.get(url, verify=False, timeout=2).status_code == 200, "healthy")
        # kube-controller-manager's service-account controller must have made `default` before pods can be created.
        self._wait(
            controller_manager,
            lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200,
            "the default ServiceAccount",
        )

    def _create_nodes(self) -> None:
        kwok = self.components["kwok"]
        for index in range(self.nodes):
            name = f"kwok-node-{index}"
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {NODE_ANNOTATION: "fake"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
            }
            self._create("/api/v1/nodes", node, f"node {name}")
            self._wait(kwok, lambda name=name: self._node_ready(name), f"node {name} Ready")

    def _create_default_storage_class(self) -> None:
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "hostpath", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        self._create("/apis/storage.k8s.io/v1/storageclasses", storage_class, "the default StorageClass")

    def _create(self, path: str, body: dict[str, object], what: str) -> None:
        """Create an object as the admin; one kept in etcd from an earlier start is fine."""
        with self._client() as client:
            response = client.post(path, json=body)
        if response.status_code not in (201, 409):
            raise LocalClusterError(f"creating {what} failed: {response.status_code} {response.text}")

    def _node_ready(self, name: str) -> bool:
        conditions = self._get(f"/api/v1/nodes/{name}").json().get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def stop(self) -> None:
        """Stop every component, last started first."""
        for name in reversed(list(self.components)):
            self._terminate(self.components.pop(name))

    @staticmethod
    def _terminate(component: Component | None) -> None:
        if component is None or component.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.process.pid, signal.SIGTERM)
        try:
            component.process.wait(timeout=5)  # kube-apiserver drains its watches for longer than a test should wait
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGKILL)
            component.process.wait(timeout=10)

    def remove(self) -> None:
        """Stop the cluster and delete its folder (etcd data, certificates, logs)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return httpx.Client(base_url=self.server, verify=context, timeout=5)

    def _get(self, path: str) -> httpx.Response:
        with self._client() as client:
            return client.get(path)

    def _write_kubeconfig(self) -> None:
        pki = self.pki
        user = f"{self.context}-admin"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": self.context, "cluster": {"server": self.server, "certificate-authority": str(pki.ca_cert)}}
            ],
            "users": [
                {"name": user, "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}}
            ],
            "contexts": [
                {"name": self.context, "context": {"cluster": self.context, "user": user, "namespace": "default"}}
            ],
            "current-context": self.context,
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)  # helm warns about group/world-readable kubeconfigs


@contextlib.contextmanager
def running_cluster(folder: Path, **options: object) -> Iterator[LocalCluster]:
    """A started LocalCluster under `folder`, stopped (its folder kept) on exit."""
    cluster = LocalCluster(folder, **options)  # type: ignore[arg-type]
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main() -> None:
    """`python -m hubploy_dagster.local_cluster FOLDER`: start the cluster, serve until SIGTERM or Ctrl-C.

    FOLDER keeps etcd's data, so releases survive a restart. `FOLDER/ready` exists while it serves.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder.resolve()
    ready = folder / "ready"
    ready.unlink(missing_ok=True)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with running_cluster(folder) as cluster:
        ready.write_text(cluster.server)
        print(f"local cluster serving at {cluster.server}; KUBECONFIG={cluster.kubeconfig}", flush=True)
        while not stop:
            dead = [c.name for c in cluster.components.values() if c.process.poll() is not None]
            if dead:
                ready.unlink(missing_ok=True)
                raise SystemExit(f"{', '.join(dead)} stopped; logs in {folder / 'logs'}")
            time.sleep(1)
        ready.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
