"""Opening the state store and bringing its schema up to date."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text

from ingot.store.schema import metadata, schema_version

WRITE = "ingot_write"


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    # pysqlite's own transaction handling defers BEGIN; take it over so that every write
    # transaction starts with BEGIN IMMEDIATE and two processes appending to the ledger serialise.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (so read-then-append cannot interleave); readers do not,
        # so a read never waits for, or blocks, a writer in another process (WAL).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def _sqlite_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is insert-only: rows are never updated'); END",
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is insert-only: rows are never deleted'); END",
    ]


# Version 1's insert-only tables. Named here, not taken from the schema module, so that migration 1 stays
# what it was when tables are added later (each later migration creates its own tables and triggers).
_V1_TABLES = ("releases", "artifacts", "deployments", "deployment_steps", "activations", "ledger")


def _migration_1(conn: Connection) -> None:
    # Version 1's tables as they were; later tables and columns arrive through later migrations.
    metadata.create_all(conn, tables=[metadata.tables[name] for name in _V1_TABLES])
    conn.execute(text(
        "CREATE TABLE instances (id VARCHAR(40) NOT NULL PRIMARY KEY, environment VARCHAR(64) NOT NULL, "
        "service VARCHAR(64) NOT NULL, release_id VARCHAR(64) NOT NULL, runtime VARCHAR(16) NOT NULL, "
        "pid INTEGER, proc_start VARCHAR(32), host VARCHAR(64) NOT NULL, port INTEGER NOT NULL, "
        "log_path TEXT NOT NULL, started_at FLOAT NOT NULL, stopped_at FLOAT, state VARCHAR(16) NOT NULL, "
        "UNIQUE (id))"
    ))
    for table in _V1_TABLES:
        for statement in _sqlite_triggers(table):
            conn.execute(text(statement))


def _migration_2(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE instances ADD COLUMN handle VARCHAR(128)"))


def _migration_3(conn: Connection) -> None:
    # The locks table as version 3 made it; migration 5 adds the agent's columns.
    conn.execute(text(
        "CREATE TABLE locks (environment VARCHAR(64) NOT NULL, holder VARCHAR(128) NOT NULL, "
        "operation VARCHAR(64) NOT NULL, host VARCHAR(128) NOT NULL, pid INTEGER NOT NULL, "
        "proc_start VARCHAR(32), since FLOAT NOT NULL, PRIMARY KEY (environment))"
    ))


def _migration_4(conn: Connection) -> None:
    # The config store: versioned config values and encrypted secret versions, both insert-only.
    for name in ("config_values", "secret_versions"):
        metadata.tables[name].create(conn)
        for statement in _sqlite_triggers(name):
            conn.execute(text(statement))


def _migration_5(conn: Connection) -> None:
    # A lock handed to the agent with its operation: which operation (token), which agent carries it, and
    # whether the process that took it has let go meanwhile.
    for column in ("token VARCHAR(32)", "agent_pid INTEGER", "agent_proc_start VARCHAR(32)",
                   "caller_left INTEGER NOT NULL DEFAULT 0"):
        conn.execute(text(f"ALTER TABLE locks ADD COLUMN {column}"))


# Each migration moves the schema from version N-1 to N; they are applied in order and never edited.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                   _migration_5]


def migrate(engine: Engine) -> int:
    with transaction(engine) as conn:
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc()))
        row = current.first()
        version = row[0] if row else 0
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=time.time()))
        return len(MIGRATIONS)


def open_engine(state_dir: Path) -> Engine:
    state_dir.mkdir(parents=True, exist_ok=True)
    engine = _sqlite_engine(state_dir / "state.db")
    migrate(engine)
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed at the end of the block, rolled back on an exception."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            yield conn
