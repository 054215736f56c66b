"""Tables and versioned migrations of ingot's state store.

Insert-only tables (releases, deployments, deployment_steps, activations, ledger, artifacts, config_values,
secret_versions) are protected by database triggers: an UPDATE, a DELETE, or an INSERT that would replace a
row (`INSERT OR REPLACE`, `REPLACE`, an UPSERT) fails in the database itself, whoever issues it. The
triggers are defined here, once per dialect (`insert_only_triggers`); `ingot audit verify` checks every one
is there. On PostgreSQL they are PL/pgSQL triggers refusing UPDATE, DELETE and TRUNCATE (a replacing insert
is a unique violation there, or an UPDATE: `ON CONFLICT DO UPDATE` fires the UPDATE trigger), and ingot's
role is granted no UPDATE or DELETE on those tables when it is not their owner (`runtime_grants`).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

releases = Table(
    "releases",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("artifact_digest", String(80), nullable=False),
    Column("config_digest", String(80), nullable=False),
    Column("spec_digest", String(80), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("config_json", Text, nullable=False),
    Column("commit", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("public_key", String(128), nullable=False),
    Column("signature", String(256), nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("digest", String(80), primary_key=True),
    Column("service", String(64), nullable=False),
    Column("input_key", String(80), nullable=False),
    Column("created_at", Float, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("environment", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # deploy | rollback | scale
    Column("from_release", String(64), nullable=True),
    Column("to_release", String(64), nullable=False),
    Column("strategy", String(16), nullable=False),
    Column("params_json", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("started_at", Float, nullable=False),
    # Since schema 9: the machine that ran it (INGOT_MACHINE, else the host name); NULL before (see ingot.machine).
    Column("machine", String(253), nullable=True),
)

deployment_steps = Table(
    "deployment_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", String(40), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # started | done | failed
    Column("detail_json", Text, nullable=False),
    Column("at", Float, nullable=False),
)

# Which release takes traffic in an environment, as an append-only history: the newest row wins.
# A row with release_id NULL means the service was taken down.
activations = Table(
    "activations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("release_id", String(64), nullable=True),
    Column("deployment_id", String(40), nullable=True),
    Column("params_json", Text, nullable=False),
    Column("at", Float, nullable=False),
    # Since schema 9: the machine the service runs on from this row on; NULL before (see ingot.machine).
    Column("machine", String(253), nullable=True),
)

ledger = Table(
    "ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("environment", String(64), nullable=True),
    Column("service", String(64), nullable=True),
    Column("subject", String(128), nullable=True),
    Column("payload_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # Since schema 6: the signing key's signature of `hash`, which covers the chain up to this entry.
    Column("signature", String(128), nullable=True),
)

# Bookkeeping of running replicas. Unlike the history tables this one changes (an instance stops),
# but an instance's identity (release, command, port) is never changed: it is replaced instead.
instances = Table(
    "instances",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("environment", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("release_id", String(64), nullable=False),
    Column("runtime", String(16), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("proc_start", String(32), nullable=True),
    Column("host", String(64), nullable=False),
    Column("port", Integer, nullable=False),
    Column("log_path", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
    # spawning (recorded, not known to run yet) | starting | running | exited | stopped | failed | replaced
    Column("state", String(16), nullable=False),
    Column("handle", String(128), nullable=True),  # the runtime's own id (a container ID)
    # Since schema 9: the machine it runs on, whose agent alone supervises it; NULL before (see ingot.machine).
    Column("machine", String(253), nullable=True),
    UniqueConstraint("id"),
)

# Who is changing an environment right now. One row per environment while an operation runs.
locks = Table(
    "locks",
    metadata,
    Column("environment", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("proc_start", String(32), nullable=True),
    Column("since", Float, nullable=False),
    # Since schema 5: the lock passes to the agent for the operation handed to it (see ingot.locks).
    Column("token", String(32), nullable=True),
    Column("agent_pid", Integer, nullable=True),
    Column("agent_proc_start", String(32), nullable=True),
    Column("caller_left", Integer, nullable=False, default=0),
)

# Config values per environment, versioned: every `ingot config set` appends a version; the newest wins.
config_values = Table(
    "config_values",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(64), nullable=False),
    Column("key", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("value", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("at", Float, nullable=False),
    # set | unset: an unset is a version too (its value empty), so history says who removed a key and when.
    Column("action", String(8), nullable=False, server_default="set"),
    UniqueConstraint("environment", "key", "version"),
)

# Secret versions per environment. A value is only ever stored encrypted (`ciphertext`, with the id of
# the key that sealed it); a removal is a version of its own (action "rm", no ciphertext), so releases
# made before it keep the version they snapshotted.
secret_versions = Table(
    "secret_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("action", String(8), nullable=False),  # set | rm
    Column("ciphertext", Text, nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("actor", String(128), nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("environment", "name", "version"),
)

# Since schema 7: what the newest-first reads walk (`ingot history`, `ingot audit log --limit N`, the
# dashboard's ledger pages), so that they cost the N rows they return, not the table. Each ends with the
# column the read is ordered by: a filtered read is then one index range walked from its end.
HISTORY_INDEXES = (
    Index("ix_ledger_environment_seq", ledger.c.environment, ledger.c.seq),
    Index("ix_ledger_service_seq", ledger.c.service, ledger.c.seq),
    Index("ix_ledger_environment_service_seq", ledger.c.environment, ledger.c.service, ledger.c.seq),
    Index("ix_deployments_started_at", deployments.c.started_at),
    Index("ix_deployments_environment_started_at", deployments.c.environment, deployments.c.started_at),
    Index("ix_deployments_environment_service_started_at", deployments.c.environment, deployments.c.service,
          deployments.c.started_at),
    Index("ix_activations_environment_service_id", activations.c.environment, activations.c.service,
          activations.c.id),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

# Each insert-only table with the keys that identify a row (its primary key, its unique constraints).
INSERT_ONLY_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "releases": (("id",),),
    "artifacts": (("digest",),),
    "deployments": (("id",),),
    "deployment_steps": (("id",),),
    "activations": (("id",),),
    "ledger": (("seq",),),
    "config_values": (("id",), ("environment", "key", "version")),
    "secret_versions": (("id",), ("environment", "name", "version")),
}
INSERT_ONLY_TABLES = tuple(INSERT_ONLY_KEYS)
TRIGGER_KINDS = ("no_update", "no_delete", "no_replace")


def sqlite_triggers(table: str, kinds: tuple[str, ...] = TRIGGER_KINDS) -> dict[str, str]:
    """The insert-only triggers of `table` (name -> SQLite DDL).

    `no_replace` is needed beside `no_delete`: SQLite's REPLACE conflict resolution deletes the row in the
    way without firing DELETE triggers (unless recursive_triggers is on). A BEFORE INSERT trigger fires
    before conflict resolution, so refusing an insert whose key is taken catches REPLACE and UPSERT alike.
    """
    found = {}
    for kind in kinds:
        name = f"{table}_{kind}"
        if kind == "no_update":
            found[name] = (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE UPDATE ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is insert-only: rows are never updated'); END")
        elif kind == "no_delete":
            found[name] = (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE DELETE ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is insert-only: rows are never deleted'); END")
        else:
            taken = " OR ".join("(" + " AND ".join(f"{c} = NEW.{c}" for c in key) + ")"
                                for key in INSERT_ONLY_KEYS[table])
            found[name] = (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE INSERT ON {table} "
                           f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {taken}) "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is insert-only: rows are never replaced'); END")
    return found


def insert_only_triggers(dialect: str = "sqlite") -> dict[str, str]:
    """Every trigger that keeps the insert-only tables insert-only in `dialect`: name -> DDL."""
    return {name: ddl for table in INSERT_ONLY_TABLES for name, ddl in triggers_of(dialect, table).items()}


# PostgreSQL ------------------------------------------------------------------------------------------------
PG_TRIGGER_KINDS = ("no_update", "no_delete", "no_truncate")
PG_GUARD_FUNCTION = "ingot_insert_only"

# One function raises for every insert-only table (no '%' in it: the driver would read it as a placeholder).
# Its SQLSTATE (restrict_violation, class 23) makes the refusal an integrity error, as SQLite's RAISE(ABORT) is.
PG_GUARD_DDL = f"""CREATE OR REPLACE FUNCTION {PG_GUARD_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = TG_TABLE_NAME || ' is insert-only: rows are '
    || 'never ' || CASE TG_OP WHEN 'UPDATE' THEN 'updated' WHEN 'DELETE' THEN 'deleted' ELSE 'truncated' END;
END
$$"""


def postgresql_triggers(table: str, kinds: tuple[str, ...] = PG_TRIGGER_KINDS) -> dict[str, str]:
    """The insert-only triggers of `table` on PostgreSQL (name -> DDL).

    Statement-level: any UPDATE, DELETE or TRUNCATE statement on the table is refused, even one matching no
    row, and an `INSERT ... ON CONFLICT DO UPDATE` (which fires the UPDATE statement trigger) with it.
    """
    operation = {"no_update": "UPDATE", "no_delete": "DELETE", "no_truncate": "TRUNCATE"}
    return {f"{table}_{kind}": (f"CREATE TRIGGER {table}_{kind} BEFORE {operation[kind]} ON {table} "
                                f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_GUARD_FUNCTION}()")
            for kind in kinds}


def triggers_of(dialect: str, table: str) -> dict[str, str]:
    """The insert-only triggers of `table` in `dialect` ("sqlite" or "postgresql"): name -> DDL."""
    return postgresql_triggers(table) if dialect == "postgresql" else sqlite_triggers(table)


def runtime_grants(role: str) -> list[str]:
    """What a database owner grants the role ingot runs as, when that role does not own the tables: read
    and append everywhere, change only the tables that change (instances, locks). No UPDATE, DELETE or
    TRUNCATE on an insert-only table: PostgreSQL refuses them by privilege before any trigger runs."""
    quoted = '"' + role.replace('"', '""') + '"'
    mutable = [name for name in metadata.tables if name not in INSERT_ONLY_KEYS and name != "schema_version"]
    return [f"GRANT USAGE ON SCHEMA public TO {quoted}",
            f"GRANT SELECT, INSERT ON {', '.join([*INSERT_ONLY_TABLES, 'schema_version'])} TO {quoted}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(mutable)} TO {quoted}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}"]
