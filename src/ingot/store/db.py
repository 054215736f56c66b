"""Opening the state store and bringing its schema up to date.

Two dialects: SQLite (the default, `state.db` in the state directory) and PostgreSQL, chosen by
`$INGOT_DATABASE_URL` (or the CLI's `--database-url`, which sets it for the agent it starts too). Both keep
the same guarantees: insert-only tables refused UPDATE and DELETE by the database, one writer at a time
(SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock taken as a write transaction
begins, so writers on different machines serialise as processes on one machine do), and one versioned
migration history whose every step says what it does on each dialect (`Migration`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, String, create_engine, event, inspect, select, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.compiler import compiles

from ingot.diskspace import HEADROOM, DiskFull, free_bytes, human
from ingot.errors import OperationFailed, UserInputError
from ingot.store.schema import (
    HISTORY_INDEXES,
    INSERT_ONLY_TABLES,
    PG_GUARD_DDL,
    metadata,
    postgresql_triggers,
    schema_version,
    sqlite_triggers,
)

WRITE = "ingot_write"
DATABASE_URL_ENV = "INGOT_DATABASE_URL"
# pg_advisory_xact_lock keys (any two bigints unlikely to clash with another application's in the database).
WRITER_LOCK = 0x696E676F74  # "ingot": every write transaction, as SQLite's BEGIN IMMEDIATE
LEDGER_LOCK = 0x696E676F74 + 1  # the ledger's head: taken by every append, whatever else the transaction did
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


@compiles(String, "postgresql")
def _unbounded_varchar(element: String, compiler: Any, **kw: Any) -> str:
    """VARCHAR without its length on PostgreSQL: SQLite never enforced the declared lengths, so a value a
    SQLite store kept must fit in PostgreSQL too (`ingot state migrate` copies whatever is there)."""
    return "VARCHAR"


def database_url() -> str | None:
    """The PostgreSQL store's URL from $INGOT_DATABASE_URL; None (empty or unset) for the SQLite default."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if not url:
        return None
    check_url(url, DATABASE_URL_ENV)
    return url


def check_url(url: str, where: str) -> str:
    """`url` as SQLAlchemy takes it (postgresql+psycopg://), refused with a clear message if it is not one."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserInputError(f"{where}: {url!r} is not a database URL; expected "
                             "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE") from None
    if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise UserInputError(f"{where}: {parsed.drivername}:// is not supported; expected "
                             "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (SQLite is the default: leave it "
                             "unset)")
    if not parsed.database:
        raise UserInputError(f"{where}: {shown(url)} names no database; expected "
                             "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def shown(url: str) -> str:
    """The URL as it may be printed or logged: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable database URL)"


class StoreUnreachable(OperationFailed):
    """The PostgreSQL server could not be reached or refused ingot (down, wrong address, credentials)."""


def _postgres_engine(url: str) -> Engine:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy imports it itself; asked here to say what is missing)
    except ImportError:
        raise OperationFailed(f"${DATABASE_URL_ENV} names a PostgreSQL store, and the driver is not installed",
                              details=["pip install 'ingot[postgresql]' (psycopg 3)"]) from None
    engine = create_engine(check_url(url, DATABASE_URL_ENV), pool_pre_ping=True,
                           connect_args={"connect_timeout": 10, "application_name": "ingot"})

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if context.is_pre_ping:  # the pool reconnects by itself
            return
        if context.is_disconnect or context.connection is None:
            original = context.original_exception
            first_line = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
            raise StoreUnreachable(
                f"the state database {shown(url)} cannot be reached: {first_line}",
                details=[f"check the server, the address and the credentials in ${DATABASE_URL_ENV} "
                         "(or --database-url); nothing was changed"]) from original

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers queue for one lock (released as their transaction ends), so that read-then-write (the deploy
        # lock's row, the ledger's head) cannot interleave between processes on any machine. Readers do not:
        # they read committed rows, never waiting for a writer. READ COMMITTED (the default) matters: each
        # statement after the lock sees what the writer before committed.
        if conn.get_execution_options().get(WRITE):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK})")

    return engine


def lock_ledger(conn: Connection) -> None:
    """Serialise appends to the ledger's chain for the rest of `conn`'s transaction (PostgreSQL; SQLite's
    write transactions are serial already)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LEDGER_LOCK})")


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
    columns = {str(column["name"]) for column in inspect(conn).get_columns("ledger")}
    if "signature" not in columns:
        conn.execute(text("ALTER TABLE ledger ADD COLUMN signature VARCHAR(128)"))
    for table in INSERT_ONLY_TABLES:
        for statement in sqlite_triggers(table, ("no_replace",)).values():
            conn.execute(text(statement))


def _migration_7(conn: Connection) -> None:
    # `ingot config unset`: a config version says whether it sets or unsets its key. (Migration 4 makes
    # the table from the current definition, which has the column already.)
    columns = {str(column["name"]) for column in inspect(conn).get_columns("config_values")}
    if "action" not in columns:
        conn.execute(text("ALTER TABLE config_values ADD COLUMN action VARCHAR(8) NOT NULL DEFAULT 'set'"))


def _migration_8(conn: Connection) -> None:
    # Indexes for the newest-first reads (see schema.HISTORY_INDEXES). Only indexes: the insert-only
    # triggers are untouched. (Migration 1 makes the tables from their current definitions, indexes
    # included, so a fresh store has them already.)
    for index in HISTORY_INDEXES:
        index.create(conn, checkfirst=True)


# The tables that name their machine since version 9 (see ingot.machine).
_MACHINE_TABLES = ("instances", "deployments", "activations")


def _migration_9(conn: Connection) -> None:
    # Machine-bound rows, on both dialects: a nullable column added, so rows written before it read NULL
    # ("this machine", as they were in a store one machine used) and no row of an insert-only table is
    # updated (adding a column fires no UPDATE trigger). Tables made from the current definitions (a fresh
    # store's deployments and activations, every PostgreSQL table) have it already.
    for table in _MACHINE_TABLES:
        if "machine" not in {str(column["name"]) for column in inspect(conn).get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN machine VARCHAR(253)"))


def _pg_initial(conn: Connection) -> None:
    """PostgreSQL's version 1: the schema SQLite reaches at version 8, at once (no PostgreSQL store predates
    8, so its steps 2-8 have nothing to do), with the insert-only triggers and privileges."""
    metadata.create_all(conn, tables=[table for name, table in metadata.tables.items() if name != "schema_version"])
    conn.exec_driver_sql(PG_GUARD_DDL)
    for table in INSERT_ONLY_TABLES:
        for statement in postgresql_triggers(table).values():
            conn.exec_driver_sql(statement)
    # Nobody but the owner may change history; the owner still meets the triggers (see schema.runtime_grants
    # for the role ingot runs as).
    conn.exec_driver_sql(f"REVOKE UPDATE, DELETE, TRUNCATE ON {', '.join(INSERT_ONLY_TABLES)} FROM PUBLIC")


def _nothing(conn: Connection) -> None:
    """A step with nothing to do on this dialect (see its migration's note)."""


Step = Callable[[Connection], None]


@dataclass(frozen=True)
class Migration:
    """One schema version: what it does on SQLite and on PostgreSQL. A plain function in MIGRATIONS stands
    for the same step on both (portable SQLAlchemy DDL: `Index.create(conn, checkfirst=True)`, say)."""

    sqlite: Step
    postgresql: Step

    def step(self, dialect: str) -> Step:
        return self.postgresql if dialect == "postgresql" else self.sqlite


# Each migration moves the schema from version N-1 to N on both dialects; they are applied in order and never
# edited. PostgreSQL's migration 1 makes version 8's schema (see `_pg_initial`), so 2-8 are nothing there; a
# step added later runs on both (give PostgreSQL its own DDL where SQLite's does not fit it). Since `_pg_initial`
# makes the current tables, a later step must find its work done on a fresh PostgreSQL store (as 9 does).
MIGRATIONS: list[Migration | Step] = [
    Migration(sqlite=_migration_1, postgresql=_pg_initial),
    *(Migration(sqlite=step, postgresql=_nothing)
      for step in (_migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7, _migration_8)),
    _migration_9,
]


def step_for(migration: Migration | Step, dialect: str) -> Step:
    return migration.step(dialect) if isinstance(migration, Migration) else migration


def migrate(engine: Engine) -> int:
    dialect = engine.dialect.name
    with transaction(engine) as conn:
        # (A write transaction: two processes opening a new store queue, and one makes the schema.)
        current_version = _current_version(conn)
        if current_version < len(MIGRATIONS):
            _apply(conn, dialect, current_version)
        return len(MIGRATIONS)


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        schema_version.create(conn)
        return 0
    row = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc())).first()
    return int(row[0]) if row else 0


def _apply(conn: Connection, dialect: str, version: int) -> None:
    try:
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            step_for(migration, dialect)(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=time.time()))
    except DBAPIError as exc:
        if dialect != "postgresql" or getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise OperationFailed(
            f"the state database's schema is at version {version}, this ingot needs {len(MIGRATIONS)}, and its "
            "role may not change the schema",
            details=["run one ingot command (e.g. 'ingot audit verify') once as the database's owner, which "
                     "migrates it, then grant the role again (README: Running ingot for a team)"]) from exc


def open_engine(state_dir: Path, url: str | None = None) -> Engine:
    """The store's engine, its schema migrated: PostgreSQL at `url`, else SQLite in `state_dir`."""
    if url is not None:
        engine = _postgres_engine(url)
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(state_dir / "state.db")
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed at the end of the block, rolled back on an exception."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            yield conn
