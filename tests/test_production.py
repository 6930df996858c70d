"""Running the orchestrator in production (deploy/): PostgreSQL storage, the code-location image, the Docker run
launcher, and Kubernetes (Dagster's Helm chart values and the deployer's RBAC).

The integration tests use the real PostgreSQL, Docker engine, registry and helm of tests/services/, and the
local control plane (services/cluster.py); the Docker test runs the production topology for real:
a code server container from deploy/Dockerfile's image, `dagster-daemon` with deploy/docker/dagster.yaml, and
the git sensor's run in a container of its own.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dagster as dg
import docker
import docker.errors
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG, DOCKER_IMAGE_TAG
from dagster_k8s import K8sRunLauncher
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from docker.models.containers import Container
from kubernetes import client
from services.cluster import free_port, tool
from services.lab import CANARY, Lab
from services.postgres import PostgresServer
from services.repos import PROJECT_ROOT, new_age_key

from hubploy_dagster.keys import release_key

DEPLOY = PROJECT_ROOT / "deploy"
CODE_IMAGE = "hubploy-dagster/code:test"
PG_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
SHARED_SECTIONS = ("telemetry", "storage", "run_coordinator", "concurrency", "run_retries", "run_monitoring")
RUN_TIMEOUT_S = 300.0


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def instance_home(folder: Path, config: dict[str, Any]) -> Path:
    """A DAGSTER_HOME holding `config` as its dagster.yaml."""
    folder.mkdir(parents=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@pytest.fixture
def dagster_db(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh database for the Dagster storage, named by the DAGSTER_PG_* variables the deploy/ configs read."""
    name = postgres.create_database().rsplit("/", 1)[1].split("?")[0]
    # The test server trusts loopback connections: the password is sent and ignored, as a real one would be used.
    values = (postgres.host, str(postgres.port), postgres.user, "unused-by-trust-auth", name)
    env = dict(zip(PG_VARIABLES, values, strict=True))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# -- the instance configuration ---------------------------------------------------------------------------------


def test_production_configs_keep_the_project_instance_settings():
    """deploy/dagster.yaml, its Docker variant and the chart values queue and retry runs as dagster.yaml does."""
    project = load_yaml(PROJECT_ROOT / "dagster.yaml")
    production = load_yaml(DEPLOY / "dagster.yaml")
    docker_config = load_yaml(DEPLOY / "docker" / "dagster.yaml")
    for section in ("telemetry", "concurrency", "run_retries", "run_monitoring"):
        assert production[section] == project[section], section
    connection = production["storage"]["postgres"]["postgres_db"]
    fields = ("hostname", "port", "username", "password", "db_name")
    assert {connection[field]["env"] for field in fields} == set(PG_VARIABLES)
    assert production["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert production["run_launcher"] == project["run_launcher"]  # workers forked beside the daemon
    assert docker_config["run_launcher"]["class"] == "DockerRunLauncher"
    assert {s: docker_config[s] for s in SHARED_SECTIONS} == {s: production[s] for s in SHARED_SECTIONS}

    values = load_yaml(DEPLOY / "kubernetes" / "values.yaml")
    runs, pools = values["concurrency"]["runs"], values["concurrency"]["pools"]
    assert project["concurrency"] == {
        "runs": {
            "max_concurrent_runs": runs["maxConcurrentRuns"],
            "tag_concurrency_limits": runs["tagConcurrencyLimits"],
        },
        "pools": {"default_limit": pools["defaultLimit"]},
    }
    retries = values["dagsterDaemon"]["runRetries"]
    assert project["run_retries"] == {
        "enabled": retries["enabled"],
        "max_retries": retries["maxRetries"],
        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
    }
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert project["run_monitoring"] == {
        "enabled": monitoring["enabled"],
        "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
    }
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["telemetry"] == {"enabled": False}


@pytest.mark.integration
def test_deploy_history_lands_in_postgres_and_a_second_instance_reads_it(lab: Lab, dagster_db, tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    writer = dg.DagsterInstance.from_config(str(home))
    assert isinstance(writer.run_storage, PostgresRunStorage)
    assert isinstance(writer.event_log_storage, PostgresEventLogStorage)
    assert type(writer.run_coordinator).__name__ == "QueuedRunCoordinator"
    lab.instance = writer
    lab.push_current_image()
    run = lab.materialize()
    assert run.success, run.error()
    writer.dispose()

    reader = dg.DagsterInstance.from_config(str(home))
    try:
        recorded = reader.get_run_by_id(run.result.run_id)
        assert recorded is not None and recorded.status == dg.DagsterRunStatus.SUCCESS
        assert recorded.tags["git_sha"] == lab.builder.repo.head.commit.hexsha
        event = reader.get_latest_materialization_event(release_key("lab", "staging"))
        assert event is not None and event.run_id == run.result.run_id
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        assert metadata["git_sha"] == lab.builder.repo.head.commit.hexsha
        assert (metadata["release"], metadata["namespace"], metadata["helm_revision"]) == (
            "lab-staging",
            lab.namespace,
            1,
        )
    finally:
        reader.dispose()


# -- the code location's image ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def code_image() -> str:
    """deploy/Dockerfile built with the local engine, on the debootstrapped base and the host-built wheelhouse.

    Both helper scripts skip their work when it is done (a fresh machine: about 75 s and 70 s); the build itself
    reuses the engine's layer cache.
    """
    for script in ("make-python-base-image.sh", "make-wheelhouse.sh"):
        subprocess.run([str(PROJECT_ROOT / "scripts" / script)], check=True)
    client = docker.from_env()
    try:
        client.images.build(
            path=str(PROJECT_ROOT), dockerfile="deploy/Dockerfile", tag=CODE_IMAGE, rm=True, forcerm=True
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
        pytest.fail(f"docker build of deploy/Dockerfile failed: {exc.msg}\n{log[-3000:]}", pytrace=False)
    finally:
        client.close()
    return CODE_IMAGE


def in_image(image: str, command: str) -> str:
    client = docker.from_env()
    try:
        return client.containers.run(image, ["sh", "-c", command], remove=True, stderr=True).decode()
    finally:
        client.close()


@pytest.mark.integration
def test_code_image_holds_the_package_and_the_pinned_tools(code_image: str):
    assert "Usage: hubploy" in in_image(code_image, "hubploy --help")
    assert in_image(code_image, "helm version --short").startswith("v3.18.0+")
    client_version = json.loads(in_image(code_image, "kubectl version --client -o json"))["clientVersion"]
    assert client_version["gitVersion"] == "v1.33.0"
    assert in_image(code_image, "sops --version --disable-version-check").startswith("sops 3.11.0")
    assert in_image(code_image, "python -c 'import sys; print(sys.version_info[:2])'").strip() == "(3, 11)"
    listed = in_image(code_image, "pip list --format json 2>/dev/null")
    versions = {p["name"]: p["version"] for p in json.loads(listed)}
    assert (versions["dagster"], versions["dagster-postgres"], versions["dagster-docker"], versions["dagster-k8s"]) == (
        "1.13.27",
        "0.29.27",
        "0.29.27",
        "0.29.27",
    )
    config = docker.from_env().images.get(code_image).attrs["Config"]
    assert config["ExposedPorts"] == {"4000/tcp": {}}
    assert config["Cmd"][:3] == ["dagster", "code-server", "start"] and not config["Entrypoint"]


# -- Docker hosts: DockerRunLauncher ----------------------------------------------------------------------------


@contextlib.contextmanager
def code_server(image: str, environment: dict[str, str], volumes: list[str]) -> Iterator[tuple[int, Container]]:
    """The code location served from the image's own command, on the host network and a free port."""
    client = docker.from_env()
    port = free_port()
    command = [str(port) if arg == "4000" else arg for arg in client.images.get(image).attrs["Config"]["Cmd"]]
    container = client.containers.run(
        image,
        command,
        detach=True,
        network_mode="host",
        environment={**environment, "DAGSTER_CURRENT_IMAGE": image},
        volumes=volumes,
    )
    try:
        yield port, container
    finally:
        container.remove(force=True)
        client.close()


@contextlib.contextmanager
def daemon(home: Path, env: dict[str, str]) -> Iterator[Path]:
    """`dagster-daemon run` with DAGSTER_HOME `home` (its dagster.yaml and workspace.yaml); yields its log file."""
    log_path = home / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
            env={**env, "DAGSTER_HOME": str(home)},
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_finished_run(instance: dg.DagsterInstance, hub: str, diagnostics: Path) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"hub": hub}))
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(2)
    statuses = [(r.run_id, r.status) for r in instance.get_runs(dg.RunsFilter(tags={"hub": hub}))]
    pytest.fail(f"no finished run for {hub} in {RUN_TIMEOUT_S}s (runs: {statuses}); daemon log:\n"
                f"{diagnostics.read_text(errors='replace')[-4000:]}")  # fmt: skip


def run_containers(run_ids: list[str]) -> list[Container]:
    """The containers DockerRunLauncher started for these runs (it leaves them, stopped, when they end)."""
    client = docker.from_env()
    try:
        return [
            container
            for run_id in run_ids
            for container in client.containers.list(all=True, filters={"label": f"dagster/run_id={run_id}"})
        ]
    finally:
        client.close()


@dataclass
class DockerDeploy:
    """A finished run of the production topology, before anything is removed: the instance that recorded it,
    the code server's container (still running), the run containers (stopped) and the daemon's log file."""

    run: dg.DagsterRun
    reader: dg.DagsterInstance
    server: Container
    containers: list[Container]
    daemon_log: Path

    def run_logs(self) -> str:
        return "\n".join(container.logs().decode(errors="replace") for container in self.containers)


@contextlib.contextmanager
def docker_deploy(
    lab: Lab, code_image: str, dagster_db: dict[str, str], chart_cache: Path, tmp_path: Path
) -> Iterator[DockerDeploy]:
    """The production topology on one Docker host: code server container, daemon, one container per run.

    The git sensor (in the code server) requests the staging deploy of the new hub; the queued coordinator and
    the daemon launch it with DockerRunLauncher; the run container deploys with helm to the test cluster and
    records the release in the shared PostgreSQL storage. Yields once the run finished and the daemon stopped;
    the run containers are removed when the block ends.
    """
    lab.push_current_image()  # the run finds the image in the registry: it deploys without a build
    repository = tmp_path / "deployment.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(lab.builder.path), str(repository)], check=True)

    helm_variables = ("KUBECONFIG", "HELM_KUBECONTEXT")
    environment = {
        **dagster_db,
        **{name: os.environ[name] for name in helm_variables},
        "HUBPLOY_REPO": str(repository),
        "SOPS_AGE_KEY_FILE": str(lab.age_key),
        "HUBPLOY_CHART_CACHE": str(chart_cache),
        "HUBPLOY_SENSOR_INTERVAL": "5",
    }
    # Same paths inside: the deployment repository and age key, the kubeconfig, the chart cache.
    folders = (tmp_path, Path(os.environ["KUBECONFIG"]).parent, chart_cache)
    volumes = [f"{folder}:{folder}:ro" for folder in folders]

    config = load_yaml(DEPLOY / "docker" / "dagster.yaml")
    launcher = config["run_launcher"]["config"]
    launcher["env_vars"] = sorted({*launcher["env_vars"], *environment})
    kwargs = launcher["container_kwargs"]
    kwargs["volumes"] = [v for v in kwargs["volumes"] if not v.startswith("/srv/hubploy/")] + volumes
    home = instance_home(tmp_path / "dagster_home", config)
    workspace = load_yaml(DEPLOY / "docker" / "workspace.yaml")

    reader = dg.DagsterInstance.from_config(str(home))
    try:
        with code_server(code_image, environment, volumes) as (port, server):
            workspace["load_from"][0]["grpc_server"]["port"] = port
            (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
            with daemon(home, {**os.environ, **environment}) as log:
                run = wait_for_finished_run(reader, "lab", log)
            run_ids = [r.run_id for r in reader.get_runs(dg.RunsFilter(tags={"hub": "lab"}))]
            yield DockerDeploy(run, reader, server, run_containers(run_ids), log)
    finally:
        try:
            for container in run_containers([r.run_id for r in reader.get_runs(dg.RunsFilter(tags={"hub": "lab"}))]):
                container.remove(force=True)
        finally:
            reader.dispose()


@pytest.mark.integration
def test_docker_run_launcher_deploys_a_hub_from_a_container(
    lab: Lab, code_image: str, dagster_db: dict[str, str], chart_cache: Path, tmp_path: Path
):
    """The production topology on one Docker host (docker_deploy) deploys the new hub and records the release."""
    sha = lab.builder.repo.head.commit.hexsha
    with docker_deploy(lab, code_image, dagster_db, chart_cache, tmp_path) as deploy:
        run, logs = deploy.run, deploy.run_logs()
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"{run.status}; run container:\n{logs[-4000:]}"
        assert run.tags["git_sha"] == sha and run.tags["env"] == "staging"
        assert run.tags[DOCKER_CONTAINER_ID_TAG] and run.tags[DOCKER_IMAGE_TAG] == code_image
        assert f"run {run.run_id} deploys lab: loading only those hubs" in logs, "the worker loads its hub only"

        event = deploy.reader.get_latest_materialization_event(release_key("lab", "staging"))
        assert event is not None and event.run_id == run.run_id
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        assert (metadata["git_sha"], metadata["helm_revision"]) == (sha, 1)
        assert [(h["revision"], h["status"]) for h in lab.history()] == [(1, "deployed")]


# -- Docker hosts: secrets at rest (issue 17, item 4) -----------------------------------------------------------
# The requirement: the code-location image and the run containers hold no decrypted secret on disk after a run;
# the age key and cluster credentials reach containers only as mounted files, never as image layers or as
# variables Dagster prints. The scanners below report where a secret was found by a label ("CANARY", "age private
# key"...) and a place (a file of an image layer, a container's log); never the secret itself.

# Any age private key (X25519 or post-quantum, bech32): the bare prefix "AGE-SECRET-KEY-" is no evidence, the
# sops binary in the image carries it as a format constant.
AGE_KEY_PATTERN = re.compile(rb"AGE-SECRET-KEY-(?:PQ-)?1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{50,}")
# Proof that the scanners read the files inside image layers: the source of hubploy_dagster/secrets.py.
SCANNER_CONTROL = "scanner control (a line of hubploy_dagster/secrets.py)"
CONTROL_NEEDLE = b"class SecretError(HubployError):"
UNREADABLE = "unreadable gzip or tar (could not be scanned)"
SCAN_CHUNK = 1 << 20
SCAN_OVERLAP = 4096  # at least: a needle (or a key the pattern matches) across two chunks is in the next window

Needles = dict[str, bytes | re.Pattern[bytes]]


def found_in(data: bytes, needles: Needles) -> list[str]:
    """The labels of the needles (bytes, or patterns) that occur in `data`."""
    return [
        label
        for label, needle in needles.items()
        if (needle.search(data) if isinstance(needle, re.Pattern) else needle in data)
    ]


class ChunkStream(io.RawIOBase):
    """A readable file over byte chunks, as docker-py's container.export() and image.save() stream them."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = memoryview(chunk)
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


def chunk_reader(chunks: Iterable[bytes]) -> io.BufferedReader:
    return io.BufferedReader(ChunkStream(chunks), buffer_size=SCAN_CHUNK)


def scan_content(file: BinaryIO, needles: Needles) -> list[str]:
    """The labels of the needles in a file's content, read in chunks (a needle across two chunks is found)."""
    overlap = max([SCAN_OVERLAP, *(len(n) for n in needles.values() if isinstance(n, bytes))])
    found: list[str] = []
    tail = b""
    while chunk := file.read(SCAN_CHUNK):
        window = tail + chunk
        found += found_in(window, {label: n for label, n in needles.items() if label not in found})
        tail = window[-overlap:]
    return found


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def _scan_member(file: Any, name: str, needles: Needles) -> dict[str, list[str]]:
    """A file of a tar: a tar itself (an image layer) is scanned member by member, gzip is uncompressed."""
    head = file.peek(512)[:512]
    try:
        if _is_tar(head):
            return scan_tar_for(file, needles, prefix=f"{name}!")
        if head[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=file, mode="rb") as unzipped:
                return _scan_member(unzipped, name, needles)
    except (OSError, EOFError, zlib.error, tarfile.TarError):
        return {UNREADABLE: [name]}  # fail closed: what cannot be read cannot be shown clean
    return {label: [name] for label in scan_content(file, needles)}


def scan_tar_for(stream: BinaryIO, needles: Needles, prefix: str = "") -> dict[str, list[str]]:
    """{label: the regular files of the tar `stream` whose content holds that needle}, read as a stream.

    Nested tars (the layers of a saved image) and gzip files are opened: a file inside a layer is named
    `<layer>!<path>`.
    """
    found: dict[str, list[str]] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            file = tar.extractfile(member)
            assert file is not None
            for label, names in _scan_member(file, prefix + member.name, needles).items():
                found.setdefault(label, []).extend(names)
    return found


def pem_needles(label: str, pem: bytes) -> Needles:
    """A private key's first two base64 lines, and the whole file base64-encoded (as `client-key-data`)."""
    body = [line.strip() for line in pem.splitlines() if line.strip() and not line.startswith(b"-----")]
    needles: Needles = {f"{label}, line {index + 1}": line for index, line in enumerate(body[:2])}
    needles[f"{label}, base64-encoded"] = base64.b64encode(pem)
    return needles


def kubeconfig_credentials(path: Path) -> Needles:
    """The credentials of every user of a kubeconfig: tokens, passwords, client keys inline or in the files it
    names (a relative path is relative to the kubeconfig), labelled by user and field."""
    config = yaml.safe_load(path.read_text())
    needles: Needles = {}
    for entry in config.get("users") or []:
        user, where = entry.get("user") or {}, f"kubeconfig user {entry.get('name')}"
        for field_name in ("token", "password", "client-key-data"):
            if user.get(field_name):
                needles[f"{where}: {field_name}"] = str(user[field_name]).encode()
        if user.get("tokenFile"):
            needles[f"{where}: tokenFile's token"] = (path.parent / user["tokenFile"]).read_bytes().strip()
        if user.get("client-key-data"):
            needles.update(pem_needles(f"{where}: client-key-data", base64.b64decode(user["client-key-data"])))
        if user.get("client-key"):
            needles.update(pem_needles(f"{where}: client-key file", (path.parent / user["client-key"]).read_bytes()))
    return needles


def lab_secrets(lab: Lab, kubeconfig: Path) -> Needles:
    """What must reach no container's metadata, no log and no disk: the lab's decrypted secret (CANARY, also
    base64-encoded as in Kubernetes Secrets), its age private key (and any other), the cluster credentials."""
    key_line = next(line for line in lab.age_key.read_bytes().splitlines() if line.startswith(b"AGE-SECRET-KEY-"))
    assert AGE_KEY_PATTERN.fullmatch(key_line), "the pattern recognises the lab's age key"
    credentials = kubeconfig_credentials(kubeconfig)
    assert credentials, f"{kubeconfig} names no credentials to look for"
    return {
        "CANARY (the decrypted secret)": CANARY.encode(),
        "CANARY base64-encoded": base64.b64encode(CANARY.encode()),
        "the lab's age private key": key_line,
        "an age private key": AGE_KEY_PATTERN,
        **credentials,
    }


def mount_of(container: Container, path: Path) -> dict[str, Any] | None:
    """The container's mount that `path` (a path inside it) is under, the deepest one."""
    mounts = [m for m in container.attrs["Mounts"] if path.is_relative_to(m["Destination"])]
    return max(mounts, key=lambda m: len(m["Destination"]), default=None)


def test_docker_secret_scanners_name_the_place_never_the_secret(tmp_path: Path):
    """The scanners find planted secrets (across chunk boundaries, in nested tars and gzip files, in streamed
    chunks as docker-py gives them) and report labels and file names only."""
    key_file, _ = new_age_key(tmp_path)
    key_line = next(line for line in key_file.read_bytes().splitlines() if line.startswith(b"AGE-SECRET-KEY-"))
    secret = f"planted-{uuid.uuid4().hex}".encode()
    needles: Needles = {"planted": secret, "an age private key": AGE_KEY_PATTERN}

    def tar_of(files: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    layer = tar_of(
        {
            "etc/clean.conf": b"nothing to see",
            # across the boundary between two reads of SCAN_CHUNK bytes
            "tmp/hubploy-secrets-x/0-plain.yaml": b"x" * (SCAN_CHUNK - 5) + secret + b"\n",
        }
    )
    image = tar_of(
        {
            "abc/layer.tar": layer,
            "def/layer.tar.gz": gzip.compress(tar_of({"root/.config/sops/age/keys.txt": key_line + b"\n"})),
            "notes.txt.gz": gzip.compress(b"a note: " + secret),
            "broken.gz": b"\x1f\x8b" + b"not gzip at all",
            "usr/bin/sops": b"constants AGE-SECRET-KEY-1%s and AGE-SECRET-KEY-PQ-1connectStr",
            "manifest.json": b"[]",
        }
    )
    chunks = [image[i : i + 65536] for i in range(0, len(image), 65536)]
    found = scan_tar_for(chunk_reader(chunks), needles)
    assert found == {
        "planted": ["abc/layer.tar!tmp/hubploy-secrets-x/0-plain.yaml", "notes.txt.gz"],
        "an age private key": ["def/layer.tar.gz!root/.config/sops/age/keys.txt"],
        UNREADABLE: ["broken.gz"],
    }
    assert secret not in repr(found).encode() and key_line not in repr(found).encode()
    assert scan_tar_for(chunk_reader([tar_of({"clean": b"clean"})]), needles) == {}

    key = tmp_path / "pki" / "admin.key"
    key.parent.mkdir()
    pem = b"-----BEGIN EC PRIVATE KEY-----\n" + b"\n".join(uuid.uuid4().hex.encode() * 2 for _ in range(3))
    key.write_bytes(pem + b"\n-----END EC PRIVATE KEY-----\n")
    kubeconfig = tmp_path / "kubeconfig.yaml"
    users = [{"name": "admin", "user": {"client-key": "pki/admin.key"}}, {"name": "ci", "user": {"token": "tok-1234"}}]
    kubeconfig.write_text(yaml.safe_dump({"kind": "Config", "users": users}))
    credentials = kubeconfig_credentials(kubeconfig)
    assert found_in(b"Env: TOKEN=tok-1234", credentials) == ["kubeconfig user ci: token"]
    leaked = b"printed " + pem.splitlines()[1]
    assert found_in(leaked, credentials) == ["kubeconfig user admin: client-key file, line 1"]
    assert found_in(b"KUBECONFIG=" + bytes(kubeconfig), credentials) == []


@pytest.mark.integration
def test_docker_runs_leave_no_secret_in_containers_logs_events_or_the_image(
    lab: Lab, code_image: str, dagster_db: dict[str, str], chart_cache: Path, tmp_path: Path
):
    """After a deploy run of the production topology: the age key and the kubeconfig reach the containers as
    paths to read-only mounts; no secret is in `docker inspect`, the run's event log, the containers' and the
    daemon's logs, the stopped run container's filesystem (its /tmp, its Dagster home) or the image's layers."""
    kubeconfig = Path(os.environ["KUBECONFIG"])
    secrets = lab_secrets(lab, kubeconfig)
    with docker_deploy(lab, code_image, dagster_db, chart_cache, tmp_path) as deploy:
        assert deploy.run.status == dg.DagsterRunStatus.SUCCESS, f"{deploy.run.status}:\n{deploy.run_logs()[-4000:]}"
        assert deploy.containers, "the run containers are kept until the block ends"
        for container in deploy.containers:
            container.wait(timeout=60)  # the run is recorded a moment before its process exits
        containers = {"code server container": deploy.server}
        containers.update({f"run container {c.name} ({c.labels['dagster/run_id']})": c for c in deploy.containers})

        # The key and the kubeconfig as paths: environment variables name them, read-only bind mounts bring them.
        for place, container in containers.items():
            container.reload()
            env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
            assert (env["SOPS_AGE_KEY_FILE"], env["KUBECONFIG"]) == (str(lab.age_key), str(kubeconfig)), place
            for path in (lab.age_key, kubeconfig):
                mount = mount_of(container, path)
                assert mount and mount["Type"] == "bind" and not mount["RW"], f"{path} is not mounted read-only in the {place}"  # fmt: skip

        places: dict[str, bytes] = {}
        for place, container in containers.items():
            places[f"docker inspect of the {place}"] = json.dumps(container.attrs).encode()
            places[f"logs of the {place}"] = container.logs()
        for run in deploy.reader.get_runs(dg.RunsFilter(tags={"hub": "lab"})):
            records = deploy.reader.all_logs(run.run_id)
            assert records, f"run {run.run_id} recorded events"
            places[f"event log of run {run.run_id}"] = "\n".join(map(dg.serialize_value, records)).encode()
            places[f"run record of run {run.run_id}"] = dg.serialize_value(run).encode()
        places["daemon log"] = deploy.daemon_log.read_bytes()
        assert all(places.values()), [place for place, data in places.items() if not data]
        leaks = [f"{label} in the {place}" for place, data in places.items() for label in found_in(data, secrets)]
        assert not leaks, f"secrets found: {leaks}"

        # On disk: a stopped run container's filesystem as exported (its layer, /tmp, the compute logs under
        # DAGSTER_HOME; not the read-only mounts), and every layer of the image the containers run.
        disk_needles = {**secrets, SCANNER_CONTROL: CONTROL_NEEDLE}
        for place, container in containers.items():
            if container is deploy.server:
                continue
            found = scan_tar_for(chunk_reader(container.export()), disk_needles)
            assert found.pop(SCANNER_CONTROL, None), f"the scan of the {place}'s filesystem read its files"
            assert not found, f"secrets on the disk of the {place}: {found}"
        client = docker.from_env()
        try:
            found = scan_tar_for(chunk_reader(client.images.get(code_image).save(named=False)), disk_needles)
        finally:
            client.close()
        assert any("!" in name for name in found.pop(SCANNER_CONTROL, [])), "the image scan read inside its layers"
        assert not found, f"secrets in the layers of {code_image}: {found}"


# -- Kubernetes: Dagster's Helm chart and the deployer's RBAC ----------------------------------------------------


def chart_run_launcher_config(values: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The K8sRunLauncher config Dagster's chart renders from these values, released into `namespace`.

    As its template helm/dagster/templates/helpers/instance/_run-launcher.tpl maps them (the parts we set).
    """
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace", namespace),
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [
            {"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"},
            *(c["name"] for c in launcher.get("envConfigMaps", [])),
        ],
        "env_secrets": [s["name"] for s in launcher.get("envSecrets", [])],
    }


def test_kubernetes_run_launcher_config_is_valid_for_dagster(monkeypatch: pytest.MonkeyPatch):
    values = load_yaml(DEPLOY / "kubernetes" / "values.yaml")
    for name, value in {
        "DAGSTER_HOME": "/opt/dagster/dagster_home",
        "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
        "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
        "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env",
    }.items():
        monkeypatch.setenv(name, value)
    config = chart_run_launcher_config(values, "dagster")
    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
    assert result.success, [error.message for error in result.errors or []]
    assert result.value["service_account_name"] == "hubploy-deployer"
    assert result.value["env_secrets"] == ["hubploy-env"]

    rbac = {
        (d["kind"], d["metadata"]["name"])
        for d in yaml.safe_load_all((DEPLOY / "kubernetes/rbac/deployer.yaml").read_text())
    }
    assert ("ServiceAccount", values["global"]["serviceAccountName"]) in rbac
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"][:2] == ["--module-name", "hubploy_dagster.definitions"]
    assert deployment["port"] == 4000 and deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    mounted = {m["mountPath"] for m in deployment["volumeMounts"]}
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert {str(Path(env["KUBECONFIG"]).parent), str(Path(env["SOPS_AGE_KEY_FILE"]).parent)} <= mounted


@pytest.mark.integration
def test_rbac_manifests_render_and_the_api_server_accepts_them(k8s_cluster):
    env = k8s_cluster.kubectl_env()
    kubectl = tool("kubectl")
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: dagster}\n---\n"  # where the chart goes
    rendered = (
        namespace
        + subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "kubernetes" / "rbac")],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    subprocess.run([kubectl, "apply", "-f", "-"], input=rendered, env=env, check=True, capture_output=True, text=True)

    def get(*args: str) -> dict[str, Any]:
        out = subprocess.run([kubectl, "get", *args, "-o", "json"], env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    role = get("clusterrole", "hubploy-deployer")
    granted = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    chart_kinds = {
        ("", "namespaces"), ("", "secrets"), ("", "configmaps"), ("", "services"), ("", "serviceaccounts"),
        ("", "persistentvolumeclaims"), ("", "pods/log"), ("apps", "deployments"), ("apps", "statefulsets"),
        ("apps", "daemonsets"), ("batch", "jobs"), ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"), ("networking.k8s.io", "networkpolicies"),
        ("networking.k8s.io", "ingresses"), ("policy", "poddisruptionbudgets"),
    }  # fmt: skip
    assert chart_kinds <= granted
    binding = get("clusterrolebinding", "hubploy-deployer")
    assert binding["roleRef"]["name"] == "hubploy-deployer"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hubploy-deployer", "namespace": "dagster"}]
    assert get("-n", "dagster", "serviceaccount", "hubploy-deployer")["metadata"]["name"] == "hubploy-deployer"
    kubeconfig = yaml.safe_load(get("-n", "dagster", "configmap", "hubploy-kubeconfig")["data"]["config"])
    assert kubeconfig["users"][0]["user"]["tokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


CHART_ENVIRONMENT = {
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env",
}


def chart_container_context(deployment: dict[str, Any], service_account: str) -> dict[str, Any]:
    """What Dagster's chart hands a user deployment's runs with `includeConfigInLaunchedRuns` (the
    DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT of its code server, as helm/dagster/charts/dagster-user-deployments
    templates/deployment-user.yaml writes it for the keys we set)."""
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
            "env": deployment.get("env", []),
            "volume_mounts": deployment.get("volumeMounts", []),
            "volumes": deployment.get("volumes", []),
            "service_account_name": service_account,
        }
    }


@pytest.mark.integration
def test_kubernetes_run_launcher_creates_the_run_job_on_the_api_server(
    lab: Lab, dagster_split, k8s_cluster, tmp_path: Path
):
    """A real daemon with deploy/kubernetes/values.yaml's K8sRunLauncher launches the sensor's run as a Job.

    The daemon runs outside the cluster here, so the launcher reads the test cluster's kubeconfig instead of
    the in-cluster configuration; everything else is what the chart renders. kwok's node runs no container:
    the Job and its pod are asserted, not the run's result.
    """
    values = load_yaml(DEPLOY / "kubernetes" / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    namespace = "dagster"
    with k8s_cluster.api_client() as api, contextlib.suppress(client.ApiException):
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    launcher = chart_run_launcher_config(values, namespace) | {
        "load_incluster_config": False,
        "kubeconfig_file": str(k8s_cluster.kubeconfig),
    }
    repository = tmp_path / "deployment.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(lab.builder.path), str(repository)], check=True)
    env = {
        **CHART_ENVIRONMENT,
        "HUBPLOY_REPO": str(repository),
        "HUBPLOY_SENSOR_INTERVAL": "2",
        "SOPS_AGE_KEY_FILE": str(lab.age_key),
        "DAGSTER_CURRENT_IMAGE": image,  # what the chart sets on the code server
        "DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT": json.dumps(
            chart_container_context(deployment, values["global"]["serviceAccountName"])
        ),
    }
    instance = {"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher}}
    split = dagster_split.start(env, instance)

    def sensor_run() -> dict[str, Any] | None:
        return next(iter(split.webserver.runs({"hub": "lab", "env": "staging"})), None)

    def run_job(run_id: str) -> Any:
        with k8s_cluster.api_client() as api:
            jobs = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"dagster/run-id={run_id}")
        return next(iter(jobs.items), None)

    run = split.webserver.wait_for("the sensor's run", sensor_run, RUN_TIMEOUT_S)
    job = split.webserver.wait_for("its Job on the API server", lambda: run_job(run["runId"]), RUN_TIMEOUT_S)
    pod = job.spec.template.spec
    [container] = pod.containers
    assert container.image == image and container.image_pull_policy == "IfNotPresent"
    assert pod.service_account_name == "hubploy-deployer"
    assert {"dagster-pipeline-env", "hubploy-env"} <= {
        (e.config_map_ref or e.secret_ref).name for e in container.env_from
    }
    assert {e.secret_ref.name for e in container.env_from if e.secret_ref} == {"hubploy-env"}
    env_vars = {e.name: e.value for e in container.env if e.value is not None}
    assert env_vars["KUBECONFIG"] == "/etc/hubploy/kube/config"
    assert env_vars["SOPS_AGE_KEY_FILE"] == "/etc/hubploy/age/keys.txt"
    postgres_password = next(e for e in container.env if e.name == "DAGSTER_PG_PASSWORD")
    assert postgres_password.value_from.secret_key_ref.name == "dagster-postgresql-secret"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["kubeconfig"] == "/etc/hubploy/kube" and mounts["age-key"] == "/etc/hubploy/age"
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["kubeconfig"].config_map.name == "hubploy-kubeconfig"
    assert volumes["age-key"].secret.secret_name == "hubploy-age-key"
    assert volumes["age-key"].secret.default_mode == 0o400
    assert container.args[:3] == ["dagster", "api", "execute_run"] and run["runId"] in container.args[3]
