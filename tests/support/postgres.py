"""A real PostgreSQL server for the store's tests, started by the tests themselves.

Debian's binaries (`/usr/lib/postgresql/<version>/bin`, package `postgresql`; scripts/test installs it):
`initdb` makes a cluster in a temporary directory and `pg_ctl` runs it on a free port, as an unprivileged
user when the tests run as root (PostgreSQL refuses to run as root), with fsync off (a test server loses
nothing that matters on a crash). Its superuser is `ingot_admin`, trusted on 127.0.0.1; every test gets a
database of its own (`new_database`). Without the binaries a test that needs them is skipped with the
reason, except in CI (`CI` set), where that is a failure.

$INGOT_TEST_PG_PORT picks the port (else a free one); under pytest-xdist each worker runs a server of its
own, on that port plus the worker's number.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from tests.support.engines import in_ci
from tests.support.harness import free_port, poll

SUPERUSER = "ingot_admin"
UNPRIVILEGED = "nobody"


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the PostgreSQL store tests have no server: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL (run as root: apt-get install postgresql): {reason}")


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data, socket and log; owned by the user the server runs as
    port: int
    listen: str = "127.0.0.1"
    databases: list[str] = field(default_factory=list)

    @property
    def user(self) -> str | None:
        return UNPRIVILEGED if os.geteuid() == 0 else None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                              user=self.user, cwd=self.root, timeout=120, check=False)

    def start(self) -> None:
        data = self.root / "data"
        made = self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                         "--no-instructions")
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        settings = (f"port = {self.port}\nlisten_addresses = '{self.listen}'\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nmax_connections = 60\nshared_buffers = 16MB\n")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        # Any address may connect (the two-host test reaches it from another network namespace), trusted.
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
        started = self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                            "start")
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log[-2000:]}")
        poll(lambda: self._connect("postgres").close() or True, timeout=30, what="PostgreSQL to accept connections")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    @property
    def host(self) -> str:
        """Where this machine reaches it: the first address it listens on."""
        return self.listen.split(",")[0].strip()

    def url(self, database: str, user: str = SUPERUSER, host: str | None = None) -> str:
        return f"postgresql://{user}@{host or self.host}:{self.port}/{database}"

    def _connect(self, database: str, user: str = SUPERUSER) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, dbname=database, user=user, autocommit=True,
                               connect_timeout=5)

    def sql(self, statement: str, database: str = "postgres", user: str = SUPERUSER) -> list[tuple[object, ...]]:
        """Run one statement (autocommit) and return its rows (none for a statement that returns none)."""
        with contextlib.closing(self._connect(database, user)) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def new_database(self, owner: str = SUPERUSER, *, template: str = "template0") -> str:
        """A new database (a copy of `template`: an empty one by default)."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f'CREATE DATABASE {name} OWNER "{owner}" TEMPLATE {template} STRATEGY FILE_COPY')
        self.databases.append(name)
        return name

    def migrated_database(self) -> str:
        """A new database holding ingot's schema at its current version, made from a template migrated once
        per session (a migration costs more than copying its result)."""
        if not self.sql("SELECT 1 FROM pg_database WHERE datname = 'ingot_template'"):
            from ingot.store import Store

            self.sql("CREATE DATABASE ingot_template TEMPLATE template0")
            Store(self.root, url=self.url("ingot_template")).close()
        return self.new_database(template="ingot_template")


def start_server(listen: str = "127.0.0.1", port: int | None = None) -> PostgresServer:
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("no pg_ctl in /usr/lib/postgresql/*/bin or on PATH")
    root = Path(tempfile.mkdtemp(prefix="ingot-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, UNPRIVILEGED)
    base = int(os.environ.get("INGOT_TEST_PG_PORT") or 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    chosen = port or (base + int(worker) if base and worker.isdigit() else 0) or free_port()
    server = PostgresServer(bin_dir, root, chosen, listen)
    try:
        server.start()
    except Exception:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@contextlib.contextmanager
def running_server(listen: str = "127.0.0.1", port: int | None = None) -> Iterator[PostgresServer]:
    server = start_server(listen, port)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
