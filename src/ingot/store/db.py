"""Opening the state store and bringing its schema up to date."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import ExceptionContext

from ingot.diskspace import HEADROOM, DiskFull, free_bytes, human
from ingot.errors import OperationFailed
from ingot.store.schema import HISTORY_INDEXES, INSERT_ONLY_TABLES, metadata, schema_version, sqlite_triggers

WRITE = "ingot_write"
# SQLite's primary result codes (the low byte of an extended code) that are not ingot's bugs.
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 11, 13, 26


class StoreFull(DiskFull):
    """The state database could not be written: its filesystem is full."""


class StoreDamaged(OperationFailed):
    """The state database is corrupt (a damaged page, say): reading or writing it failed."""


def store_error(path: Path, exc: BaseException) -> OperationFailed | None:
    """The message for a SQLite failure that is the machine's, not ingot's: a full disk, a damaged file."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    if code & 0xFF == SQLITE_FULL:
        return StoreFull(
            f"the disk holding the state database is full: {path} could not be written; {human(free_bytes(path))} "
            f"free, at least {human(HEADROOM)} needed (what ingot keeps free for it before it copies anything)",
            details=["free some space on that filesystem, then run the command again; "
                     "what was serving goes on serving"])
    if code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreDamaged(
            f"the state database {path} is damaged: {exc}",
            details=["'ingot audit verify' says what is damaged; 'ingot down' still stops everything it can find",
                     "restore the file from a backup (or move it aside to start afresh)"])
    return None


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A full disk or a damaged file is said as such, with the path, wherever it happens: never as
        # an "internal error: OperationalError" (SQLAlchemy cleans up, then raises this instead).
        translated = store_error(path, context.original_exception)
        if translated is not None:
            raise translated from context.original_exception

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
    """The UPDATE and DELETE triggers migrations 1 and 4 made (the no-replace ones came with migration 6)."""
    return list(sqlite_triggers(table, ("no_update", "no_delete")).values())


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


def _migration_6(conn: Connection) -> None:
    # Signed ledger entries, and inserts that would replace a row of an insert-only table refused.
    # (Migration 1 makes the ledger from the current table definition, which has the column already.)
    columns = {str(row[1]) for row in conn.exec_driver_sql("PRAGMA table_info(ledger)")}
    if "signature" not in columns:
        conn.execute(text("ALTER TABLE ledger ADD COLUMN signature VARCHAR(128)"))
    for table in INSERT_ONLY_TABLES:
        for statement in sqlite_triggers(table, ("no_replace",)).values():
            conn.execute(text(statement))


def _migration_7(conn: Connection) -> None:
    # `ingot config unset`: a config version says whether it sets or unsets its key. (Migration 4 makes
    # the table from the current definition, which has the column already.)
    columns = {str(row[1]) for row in conn.exec_driver_sql("PRAGMA table_info(config_values)")}
    if "action" not in columns:
        conn.execute(text("ALTER TABLE config_values ADD COLUMN action VARCHAR(8) NOT NULL DEFAULT 'set'"))


def _migration_8(conn: Connection) -> None:
    # Indexes for the newest-first reads (see schema.HISTORY_INDEXES). Only indexes: the insert-only
    # triggers are untouched. (Migration 1 makes the tables from their current definitions, indexes
    # included, so a fresh store has them already.)
    for index in HISTORY_INDEXES:
        index.create(conn, checkfirst=True)


# Each migration moves the schema from version N-1 to N; they are applied in order and never edited.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                   _migration_5, _migration_6, _migration_7,
                                                   _migration_8]


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
