"""A real PostgreSQL server for integration tests, started once per session.

Used for helm's release storage (`HELM_DRIVER=sql`, see services/cluster.py) and Dagster's PostgreSQL
storage. The server gets its own data folder in a fresh temporary directory, listens only on 127.0.0.1
on a free port (its unix socket stays in the temporary directory, so it never collides with a system
cluster in /var/run/postgresql), trusts loopback connections, and is stopped and removed at the end.

PostgreSQL refuses to run as root. When the tests run as root, initdb and the server run as the
`postgres` user that Debian's postgresql package creates (or, when absent, a dedicated system user
created with useradd); the processes are started with subprocess's `user=`/`group=`, so they are our
own children and can be stopped by pid.

Load with `pytest_plugins = ["services.postgres"]`. Fixture: `postgres` (session scope).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hubploy_dagster.local_cluster import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
SUPERUSER = "postgres"
FALLBACK_SYSTEM_USER = "hubploy-pg"
PROGRAMS = ("initdb", "postgres", "pg_isready")


def find_postgres_bin() -> Path:
    """The folder holding initdb and postgres: $PG_BIN, then PATH, then Debian's /usr/lib/postgresql/N/bin.

    Debian keeps the server programs off PATH; scripts/setup.sh links the newest into .tools/bin. A
    missing server is a failure, never a skip: the storage tests are part of what CI must run.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    project_tools = Path(__file__).resolve().parents[2] / ".tools" / "bin"
    candidates.append(project_tools)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for folder in candidates:
        if all((folder / program).exists() for program in PROGRAMS):
            # .tools/bin holds symlinks: use the real folder, where initdb finds postgres and its share files.
            return (folder / "postgres").resolve().parent
    pytest.fail(
        "PostgreSQL server programs (initdb, postgres, pg_isready) not found in $PG_BIN, on PATH, in .tools/bin "
        "or in /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (scripts/setup.sh does)",
        pytrace=False,
    )


def _service_account() -> tuple[int, int] | None:
    """The uid/gid to run PostgreSQL as: None when we are not root (run as ourselves).

    As root, the `postgres` user (Debian's package creates it); without it, a dedicated system user.
    """
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, FALLBACK_SYSTEM_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot create a non-root user for PostgreSQL: {result.stderr.strip()}", pytrace=False)
    entry = pwd.getpwnam(FALLBACK_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    """A running PostgreSQL server; `dsn()` strings work for psycopg2, SQLAlchemy and helm's sql driver."""

    host: str
    port: int
    user: str
    socket_dir: Path
    data_dir: Path
    log_file: Path
    bin_dir: Path
    _account: tuple[int, int] | None = field(repr=False, default=None)
    _process: subprocess.Popen[bytes] | None = field(repr=False, default=None)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` over TCP on loopback (trust auth, no password, no TLS)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}?sslmode=disable"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a random name when none is given) and return its DSN."""
        import psycopg2
        from psycopg2 import sql

        name = name or f"test_{secrets.token_hex(6)}"
        connection = psycopg2.connect(self.dsn("postgres"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return self.dsn(name)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for failure messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- lifecycle -------------------------------------------------------------------------------

    def _as_service_user(self) -> dict[str, object]:
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": []}

    def init(self) -> None:
        """initdb with trust auth for every local and loopback connection, then a test-friendly config."""
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
            **self._as_service_user(),  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            pytest.fail(f"initdb failed ({result.returncode}): {result.stderr.strip()}", pytrace=False)
        # Only loopback; durability does not matter for a throwaway test cluster.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hubploy-dagster test server\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 64MB\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections on its TCP port."""
        log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **self._as_service_user(),  # type: ignore[arg-type]
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(
                    f"PostgreSQL exited at start ({self._process.returncode}):\n{self.log_tail()}", pytrace=False
                )
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", self.user, "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"PostgreSQL did not accept connections within {START_TIMEOUT_S}s:\n{self.log_tail()}", pytrace=False
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients), SIGKILL if stuck."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; stop it and delete its files on exit."""
    bin_dir = find_postgres_bin()
    account = _service_account()
    # Not pytest's tmp_path: that lives under a root-only (0700) folder the service user cannot enter.
    workdir = Path(tempfile.mkdtemp(prefix="hubploy-pg-"))
    try:
        (workdir / "data").mkdir()
        if account is not None:
            uid, gid = account
            for path in (workdir, workdir / "data"):
                os.chown(path, uid, gid)
        workdir.chmod(0o700)
        server = PostgresServer(
            host="127.0.0.1",
            port=free_port(),
            user=SUPERUSER,
            socket_dir=workdir,
            data_dir=workdir / "data",
            log_file=workdir / "postgres.log",
            bin_dir=bin_dir,
            _account=account,
        )
        server.init()
        if account is not None:
            server.log_file.touch()
            os.chown(server.log_file, *account)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1:<free port>, trust auth, for the whole session."""
    with running_postgres() as server:
        yield server


__all__ = ["PostgresServer", "find_postgres_bin", "free_port", "postgres", "running_postgres"]
