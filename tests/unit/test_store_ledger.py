"""The store refuses to rewrite history, and the ledger proves when someone did it anyway.

The tests taking `store` (or `backend`) run against both backends: SQLite and a real PostgreSQL server
(tests/support/store_backends.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from ingot import config_store, ledger
from ingot.releases import load_or_create_key, new_release, public_key_text, verify_release
from ingot.secrets_box import load_box
from ingot.store import Store
from ingot.store.schema import INSERT_ONLY_TABLES
from tests.support.store_backends import Backend, drop_trigger


@pytest.fixture
def store(tmp_path: Path, backend: Backend) -> Store:
    return Store(tmp_path / "state")


def _fill(store: Store, tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "keys")
    rel = new_release(key=key, project="p", service="web", artifact_digest="sha256:" + "a" * 64,
                      spec={"command": ["x"]}, config={"values": {}}, actor="tester")
    with store.begin() as conn:
        store.insert_release(conn, rel)
        dep = store.create_deployment(conn, environment="staging", service="web", kind="deploy",
                                      from_release=None, to_release=rel.id, strategy="blue-green",
                                      params={"replicas": 1}, actor="tester")
        store.add_step(conn, dep.id, "start", "started", {})
        store.activate(conn, environment="staging", service="web", release_id=rel.id,
                       deployment_id=dep.id, params={})
        ledger.append(conn, actor="tester", action="deploy.start", subject=dep.id, payload={"n": 1})
    store.record_artifact("sha256:" + "a" * 64, "web", "k")
    config_store.set_config(store, "staging", "FLAG", "on", "tester")
    config_store.set_secret(store, load_box(tmp_path / "keys", create=True), "staging", "KEY", "v", "tester")


@pytest.mark.parametrize("table", INSERT_ONLY_TABLES)
def test_insert_only_tables_refuse_update_and_delete(store: Store, tmp_path: Path, table: str) -> None:
    _fill(store, tmp_path)
    column = {"releases": "created_by", "artifacts": "service", "deployments": "actor",
              "deployment_steps": "name", "activations": "params_json", "ledger": "actor",
              "config_values": "value", "secret_versions": "actor"}[table]
    with pytest.raises((IntegrityError, OperationalError), match="insert-only"), store.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET {column} = 'mallory'"))
    with pytest.raises((IntegrityError, OperationalError), match="insert-only"), store.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() >= 1


def test_migrations_are_versioned_and_idempotent(tmp_path: Path, backend: Backend) -> None:
    from ingot.store import db

    first = Store(tmp_path / "s")
    first.close()
    again = Store(tmp_path / "s")
    with again.engine.connect() as conn:
        versions = conn.execute(text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
        if backend.name == "sqlite":
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    assert versions == list(range(1, len(db.MIGRATIONS) + 1)) and len(versions) >= 4
    assert again.missing_triggers() == []


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from ingot.store import db

    state = tmp_path / "old"
    state.mkdir()
    engine = db._sqlite_engine(state / "state.db")
    with db.transaction(engine) as conn:
        db.schema_version.create(conn)
        db._migration_1(conn)
        conn.execute(db.schema_version.insert().values(version=1, applied_at=0.0))
        conn.execute(text("INSERT INTO instances (id, environment, service, release_id, runtime, host, port, "
                          "log_path, started_at, state) VALUES ('i1', 'e', 's', 'r', 'process', 'h', 1, 'l', 0, "
                          "'running')"))
    engine.dispose()
    store = Store(state)
    [row] = store.live_instances()
    assert row.id == "i1" and row.handle is None


def test_ledger_chain_verifies_and_detects_alteration(store: Store) -> None:
    for number in range(5):
        ledger.record(store, actor="alice", action="build", service="web", payload={"n": number})
    checked, problem = ledger.verify_chain(store)
    assert (checked, problem) == (5, None)
    entries = ledger.entries(store)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))

    # Someone with raw database access drops the guard and rewrites entry 3.
    with store.begin() as conn:
        drop_trigger(conn, "ledger", "no_update")
        conn.execute(text("UPDATE ledger SET actor = 'mallory' WHERE seq = 3"))
    checked, problem = ledger.verify_chain(store)
    assert checked == 2
    assert problem is not None and problem.seq == 3 and "altered" in problem.reason


def test_ledger_detects_a_removed_entry(store: Store) -> None:
    for number in range(4):
        ledger.record(store, actor="alice", action="build", payload={"n": number})
    with store.begin() as conn:
        drop_trigger(conn, "ledger", "no_delete")
        conn.execute(text("DELETE FROM ledger WHERE seq = 2"))
    _checked, problem = ledger.verify_chain(store)
    assert problem is not None and problem.seq == 2 and "missing" in problem.reason


def test_ledger_detects_a_rehashed_entry(store: Store) -> None:
    """Recomputing the altered entry's own hash is not enough: the next link breaks."""
    for number in range(3):
        ledger.record(store, actor="alice", action="build", payload={"n": number})
    second = ledger.entries(store)[1]
    forged = ledger.entry_hash(seq=2, at=second.at, actor="mallory", action=second.action,
                               environment=None, service=None, subject=None, payload=second.payload,
                               prev_hash=second.prev_hash)
    with store.begin() as conn:
        drop_trigger(conn, "ledger", "no_update")
        conn.execute(text("UPDATE ledger SET actor='mallory', hash=:h WHERE seq=2"), {"h": forged})
    _checked, problem = ledger.verify_chain(store)
    assert problem is not None and problem.seq == 3


def test_release_id_is_derived_from_content_and_signature_verifies(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "keys")
    assert (tmp_path / "keys" / "release-signing.ed25519").stat().st_mode & 0o777 == 0o600
    same_key = load_or_create_key(tmp_path / "keys")
    assert public_key_text(same_key) == public_key_text(key)

    args = {"key": key, "project": "p", "service": "web", "artifact_digest": "sha256:" + "b" * 64,
            "spec": {"command": ["python", "app.py"], "port": 8000}, "config": {"values": {}}, "actor": "a"}
    one = new_release(**args)  # type: ignore[arg-type]
    two = new_release(**{**args, "actor": "someone else"})  # type: ignore[arg-type]
    assert one.id == two.id  # who or when does not change what the release is
    changed = new_release(**{**args, "spec": {"command": ["python", "app.py"], "port": 8001}})  # type: ignore[arg-type]
    assert changed.id != one.id
    trusted = public_key_text(key)
    assert verify_release(one, trusted) is None

    from dataclasses import replace

    assert "signature" in (verify_release(replace(one, created_by="mallory"), trusted) or "")
    assert "id does not match" in (verify_release(replace(one, artifact_digest="sha256:" + "c" * 64),
                                                  trusted) or "")
    other = load_or_create_key(tmp_path / "other")
    assert "not this project's" in (verify_release(one, public_key_text(other)) or "")


def test_a_version_5_database_gets_signed_entries_and_the_no_replace_triggers(tmp_path: Path) -> None:
    from ingot.signing import load_key, public_key_text
    from ingot.store import db

    state = tmp_path / "v5"
    state.mkdir()
    engine = db._sqlite_engine(state / "state.db")
    with db.transaction(engine) as conn:
        db.schema_version.create(conn)
        db._migration_1(conn)
        conn.execute(text("ALTER TABLE ledger DROP COLUMN signature"))  # as version 1 made it
        for step in db.MIGRATIONS[1:5]:
            db.step_for(step, "sqlite")(conn)
        conn.execute(db.schema_version.insert().values(version=5, applied_at=0.0))
        conn.execute(text("INSERT INTO ledger (seq, at, actor, action, payload_json, prev_hash, hash) VALUES "
                          f"(1, 1.0, 'old', 'build', '{{}}', '{ledger.GENESIS}', '"
                          + ledger.entry_hash(seq=1, at=1.0, actor="old", action="build", environment=None,
                                              service=None, subject=None, payload={}, prev_hash=ledger.GENESIS)
                          + "')"))
    engine.dispose()
    store = Store(state)
    assert store.missing_triggers() == []
    entry = ledger.record(store, actor="new", action="deploy")
    key = load_key(state / "keys")
    assert key is not None and entry.signature
    trusted = public_key_text(key)
    # The older, unsigned entry is covered by the signed one after it.
    assert ledger.verify_chain(store, trusted, require_signed=True) == (2, None)
    Store(state).close()  # opening again changes nothing (the migration ran once)
    with pytest.raises(IntegrityError, match="insert-only"), store.begin() as conn:
        conn.execute(text("INSERT OR REPLACE INTO ledger (seq, at, actor, action, payload_json, prev_hash, hash) "
                          "VALUES (1, 1.0, 'mallory', 'build', '{}', 'x', 'y')"))
