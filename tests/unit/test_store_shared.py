"""The store's promises under writers in other processes, on both backends, and PostgreSQL's own guards.

Processes, not threads: on PostgreSQL each writer is its own session (as on another machine), on SQLite its
own connection to the file. The PostgreSQL server is a real one the tests start (tests/support/postgres.py).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ingot import ledger
from ingot.errors import OperationFailed, UserInputError
from ingot.store import Store
from ingot.store.db import MIGRATIONS, StoreUnreachable, check_url
from ingot.store.schema import INSERT_ONLY_TABLES, runtime_grants
from tests.support.postgres import PostgresServer
from tests.support.store_backends import Backend

APPENDS = 60

_APPENDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ingot import ledger
    from ingot.store import Store
    store = Store(Path(sys.argv[1]))
    go = Path(sys.argv[2])
    while not go.exists():  # both start appending at the same moment
        time.sleep(0.005)
    count, me, other = int(sys.argv[3]), sys.argv[4], sys.argv[5]
    for number in range(count - 1):
        ledger.record(store, actor=me, action="build", payload={"n": number})
    # The last one only once the other has appended: the two appended during the same span, by construction.
    while not any(entry.actor == other for entry in ledger.entries(store)):
        time.sleep(0.01)
    ledger.record(store, actor=me, action="build", payload={"n": count - 1})
""")


def _run_together(script: str, tmp_path: Path, *args_per_process: list[str]) -> None:
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "state"), str(go), *args])
                for args in args_per_process]
    go.touch()
    codes = [child.wait(timeout=180) for child in children]
    assert codes == [0] * len(children)


def test_two_processes_appending_at_once_never_fork_the_chain(tmp_path: Path, backend: Backend) -> None:
    Store(tmp_path / "state").close()  # the schema first, so both start appending at once
    _run_together(_APPENDER, tmp_path, [str(APPENDS), "alice", "bob"], [str(APPENDS), "bob", "alice"])
    store = Store(tmp_path / "state")
    entries = ledger.entries(store)
    assert [e.seq for e in entries] == list(range(1, 2 * APPENDS + 1))
    assert sorted(e.actor for e in entries).count("alice") == APPENDS
    assert ledger.verify_chain(store) == (2 * APPENDS, None)
    # Each one's last entry came after the other's first: never one block, then the other.
    assert sum(1 for a, b in itertools.pairwise(entries) if a.actor != b.actor) >= 2


_LOCKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ingot import ledger, locks
    from ingot.store import Store
    store = Store(Path(sys.argv[1]))
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    held = refused = 0
    for _ in range(int(sys.argv[3])):
        try:
            with locks.hold(store, "production", "deploy", sys.argv[4]):
                ledger.record(store, actor=sys.argv[4], action="enter")
                ledger.record(store, actor=sys.argv[4], action="leave")
                held += 1
        except locks.Locked:
            refused += 1
    ledger.record(store, actor=sys.argv[4], action="tally", payload={"held": held, "refused": refused})
""")


def test_the_deploy_lock_admits_one_process_at_a_time(tmp_path: Path, backend: Backend) -> None:
    Store(tmp_path / "state").close()
    _run_together(_LOCKER, tmp_path, ["15", "alice"], ["15", "bob"])
    store = Store(tmp_path / "state")
    inside: str | None = None
    for entry in ledger.entries(store, actions=["enter", "leave"]):
        if entry.action == "enter":
            assert inside is None, f"{entry.actor} entered while {inside} held the lock (entry {entry.seq})"
            inside = entry.actor
        else:
            assert inside == entry.actor
            inside = None
    tallies = {e.actor: e.payload for e in ledger.entries(store, actions=["tally"])}
    assert sum(t["held"] + t["refused"] for t in tallies.values()) == 30
    assert sum(t["held"] for t in tallies.values()) == len(ledger.entries(store, actions=["enter"])) > 0
    assert ledger.verify_chain(store)[1] is None


# PostgreSQL only --------------------------------------------------------------------------------------------
@pytest.fixture
def pg(pg_server: PostgresServer) -> PostgresServer:
    return pg_server


def test_a_new_postgresql_database_is_migrated_with_its_guards(tmp_path: Path, pg: PostgresServer) -> None:
    database = pg.new_database()
    store = Store(tmp_path, url=pg.url(database))
    assert pg.sql("SELECT max(version) FROM schema_version", database) == [(len(MIGRATIONS),)]
    assert store.missing_triggers() == []
    Store(tmp_path, url=pg.url(database)).close()  # opening again applies nothing
    assert pg.sql("SELECT count(*) FROM schema_version", database) == [(len(MIGRATIONS),)]
    # A disabled trigger guards nothing: audit verify names it as missing.
    pg.sql("ALTER TABLE ledger DISABLE TRIGGER ledger_no_update", database)
    assert store.missing_triggers() == ["ledger_no_update"]


def test_postgresql_refuses_update_delete_and_truncate_of_the_ledger(tmp_path: Path, pg: PostgresServer) -> None:
    database = pg.migrated_database()
    store = Store(tmp_path, url=pg.url(database))
    ledger.record(store, actor="alice", action="build")
    for statement, verb in (("UPDATE ledger SET actor = 'mallory'", "updated"), ("DELETE FROM ledger", "deleted"),
                            ("TRUNCATE ledger", "truncated"),
                            ("INSERT INTO ledger SELECT * FROM ledger ON CONFLICT (seq) DO UPDATE SET actor = 'm'",
                             "updated")):
        with pytest.raises(IntegrityError, match=f"ledger is insert-only: rows are never {verb}"), \
                store.begin() as conn:
            conn.execute(text(statement))
    assert pg.sql("SELECT actor FROM ledger", database) == [("alice",)]


def test_a_role_that_does_not_own_the_tables_may_not_change_history(tmp_path: Path, pg: PostgresServer) -> None:
    """ingot as the README sets it up for a team: the owner migrates, ingot's role only reads and appends."""
    role = "ingot_app_" + tmp_path.name[-8:].replace("-", "_")
    pg.sql(f'CREATE ROLE "{role}" LOGIN')
    database = pg.new_database()
    Store(tmp_path / "owner", url=pg.url(database)).close()  # the owner makes the schema
    for grant in runtime_grants(role):
        pg.sql(grant, database)
    store = Store(tmp_path / "app", url=pg.url(database, user=role))
    ledger.record(store, actor="alice", action="build")  # appending works
    with store.begin() as conn:  # and the tables that change do change
        conn.execute(text("INSERT INTO locks (environment, holder, operation, host, pid, since, caller_left) "
                          "VALUES ('e', 'a', 'deploy', 'h', 1, 0, 0)"))
        conn.execute(text("DELETE FROM locks"))
    for table in INSERT_ONLY_TABLES:
        for statement in (f"UPDATE {table} SET id = id" if table not in ("ledger", "artifacts") else
                          f"UPDATE {table} SET {'seq = seq' if table == 'ledger' else 'digest = digest'}",
                          f"DELETE FROM {table}", f"TRUNCATE {table}"):
            with pytest.raises(DBAPIError, match="permission denied"), store.begin() as conn:
                conn.execute(text(statement))
        with pytest.raises(DBAPIError, match="must be owner"), store.begin() as conn:
            conn.execute(text(f"DROP TRIGGER {table}_no_update ON {table}"))
    assert ledger.verify_chain(store) == (1, None)


def test_a_role_that_may_not_migrate_is_told_to_run_as_the_owner(tmp_path: Path, pg: PostgresServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ingot.store import db

    role = "ingot_late_" + tmp_path.name[-8:].replace("-", "_")
    pg.sql(f'CREATE ROLE "{role}" LOGIN')
    database = pg.migrated_database()
    for grant in runtime_grants(role):
        pg.sql(grant, database)
    # An ingot one migration newer than the store, run as the runtime role (no CREATE on the schema).
    newer = db.Migration(sqlite=db._nothing, postgresql=lambda conn: conn.exec_driver_sql("CREATE TABLE extra (x int)"))
    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, newer])
    with pytest.raises(OperationFailed, match=f"schema is at version {len(MIGRATIONS)}, this ingot needs "
                                              f"{len(MIGRATIONS) + 1}") as refused:
        Store(tmp_path, url=pg.url(database, user=role))
    assert "as the database's owner" in " ".join(refused.value.details)
    assert pg.sql("SELECT max(version) FROM schema_version", database) == [(len(MIGRATIONS),)]


def test_a_bad_or_unreachable_database_url_is_said_plainly(tmp_path: Path, pg: PostgresServer) -> None:
    for url, expected in (("mysql://db/ingot", "mysql:// is not supported"), ("postgresql://db", "names no database"),
                          ("not a url", "is not a database URL")):
        with pytest.raises(UserInputError, match=expected):
            check_url(url, "INGOT_DATABASE_URL")
    closed = f"postgresql://ingot:s3cret@127.0.0.1:{pg.port + 1 if pg.port < 65535 else 1}/ingot"
    with pytest.raises(StoreUnreachable, match="cannot be reached") as refused:
        Store(tmp_path, url=closed)
    assert "s3cret" not in refused.value.message and "***" in refused.value.message


def test_the_metrics_read_the_ledger_on_both_backends(tmp_path: Path, backend: Backend) -> None:
    """The one query written in SQL text (a JSON field of the payload) has each dialect's spelling."""
    from types import SimpleNamespace

    from ingot.api.metrics import _Snapshot

    store = Store(tmp_path / "state")
    for verdict in ("fail", "pass", "fail"):
        ledger.record(store, actor="a", action="deploy.analysis", payload={"decision": {"action": verdict}})
    ledger.record(store, actor="a", action="rollback.start")
    actions, failed = _Snapshot(SimpleNamespace(store=store))._ledger_counts()  # type: ignore[arg-type]
    assert (actions["deploy.analysis"], actions["rollback.start"], failed) == (3, 1, 2)


def test_an_agent_keeping_another_store_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingot.agent.client import AgentClient, _same_store
    from ingot.paths import StatePaths

    paths = StatePaths(tmp_path)
    client = AgentClient(paths)
    shared = "postgresql://ingot:s3cret@db:5432/ingot"
    monkeypatch.delenv("INGOT_DATABASE_URL", raising=False)
    for running in ({}, {"database": None}):  # an older agent, a SQLite one: the same as this command's
        client.pinged = running
        _same_store(client, paths)
    client.pinged = {"database": "postgresql://ingot:***@db:5432/ingot"}
    with pytest.raises(OperationFailed, match=r"keeps its state in postgresql://ingot:\*\*\*@db:5432/ingot, and "
                                              "this command's is the SQLite file"):
        _same_store(client, paths)
    monkeypatch.setenv("INGOT_DATABASE_URL", shared)
    _same_store(client, paths)  # the same URL (the password never compared in the clear, nor shown)
    client.pinged = {"database": None}
    with pytest.raises(OperationFailed, match="keeps its state in the SQLite file"):
        _same_store(client, paths)
