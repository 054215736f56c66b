"""The ledger at scale: newest-first reads return what the full reads did, through an index; verify starts
from a signed last-verified point and still tells a rewritten or cut tail; a full verify tells the rest."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from ingot import chain_scan, checkpoint, ledger, views
from ingot.canonical import canonical_json
from ingot.signing import load_or_create_key, public_key_text, sign
from ingot.store import Store, schema
from ingot.store.schema import insert_only_triggers

ENVIRONMENTS = ("production", "staging", "qa", None)
SERVICES = ("web", "api", None)
COUNT = 3000


def _bulk(store: Store, count: int, key: Ed25519PrivateKey | None = None, **fields: Any) -> None:
    """Append `count` chained entries (signed with `key`) in one insert: what `ledger.append` writes, faster."""
    with store.engine.connect() as conn:
        last = conn.execute(text("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")).first()
    seq, prev = (last[0], last[1]) if last else (0, ledger.GENESIS)
    rows = []
    for n in range(seq + 1, seq + count + 1):
        environment = "qa" if n % 97 == 0 else ENVIRONMENTS[n % 2 if n % 5 else 3]
        entry = {"seq": n, "at": 1.7e9 + n / 3, "actor": "ålice", "action": "build", "environment": environment,
                 "service": SERVICES[n % 3], "subject": f"s{n}", **fields}
        payload = {"n": n, "note": "é\"\n"}
        digest = ledger.entry_hash(**entry, payload=payload, prev_hash=prev)
        rows.append({**entry, "payload_json": canonical_json(payload), "prev_hash": prev, "hash": digest,
                     "signature": sign(key, ledger.signed_head(digest)) if key else None})
        prev = digest
    with store.begin() as conn:
        conn.execute(schema.ledger.insert(), rows)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """COUNT entries over a few environments and services (qa rare)."""
    store = Store(tmp_path_factory.mktemp("ledger") / "state")
    _bulk(store, COUNT)
    return store


def _old_read(every: list[int], limit: int, before: int | None) -> list[int]:
    """What `audit log` read before: every matching entry, then the last `limit`."""
    return [seq for seq in every if before is None or seq < before][-limit:]


@pytest.mark.parametrize("environment", ["production", "qa", None])
@pytest.mark.parametrize("service", ["web", None])
def test_newest_first_reads_return_what_the_full_read_did(filled: Store, environment: str | None,
                                                          service: str | None) -> None:
    every = [e.seq for e in ledger.entries(filled, environment=environment, service=service)]
    for limit, before in ((20, None), (1, None), (50, 1500), (7, 3), (5000, None)):
        got = [e.seq for e in ledger.latest(filled, limit=limit, before=before, environment=environment,
                                            service=service)]
        assert got == _old_read(every, limit, before), (limit, before)
    # Paging back from the end with `before`, as the dashboard does, walks every entry once, in order.
    pages: list[int] = []
    page = views.ledger_page(filled, tail=True, limit=300, environment=environment, service=service)
    while True:
        pages = [e["seq"] for e in page["entries"]] + pages
        if not page["older"]:
            break
        page = views.ledger_page(filled, before=pages[0], limit=300, environment=environment, service=service)
    assert pages == every


def test_filtered_newest_first_reads_walk_an_index(filled: Store) -> None:
    """A rare environment's newest entries are an index range, not a scan of the table from its end."""
    plans = {}
    for name, where in (("environment", "environment = 'qa'"), ("service", "service = 'web'"),
                        ("both", "environment = 'qa' AND service = 'web'")):
        with filled.engine.connect() as conn:
            plans[name] = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN SELECT * FROM ledger WHERE {where} ORDER BY seq DESC LIMIT 20"))
    assert "ix_ledger_environment_seq" in plans["environment"] or "ix_ledger_environment_service_seq" in \
        plans["environment"], plans
    assert "ix_ledger_service_seq" in plans["service"], plans
    assert "ix_ledger_environment_service_seq" in plans["both"], plans
    assert all("TEMP B-TREE" not in plan for plan in plans.values()), plans  # no sort: read in index order
    assert filled.missing_triggers() == []


def test_the_batch_check_agrees_with_the_exact_one_entry_by_entry(filled: Store) -> None:
    """A batch that passes column-wise is one whose every entry passes the exact check (payload decoded)."""
    with filled.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"{chain_scan.SELECT} ORDER BY seq LIMIT 500").all()
    whole = chain_scan.scan_batches([rows], chain_scan.Scan(1, ledger.GENESIS))
    assert whole.problem is None and whole.checked == 500 and whole.last == (500, rows[-1][9], False)
    exact = chain_scan.Scan(1, ledger.GENESIS)
    for row in rows:
        assert chain_scan.check_row(row, exact) is None
        exact.expected, exact.prev = row[0] + 1, row[9]


def test_a_version_6_store_gets_the_indexes_and_keeps_its_triggers(tmp_path: Path) -> None:
    from ingot.store import db

    engine = db._sqlite_engine(tmp_path / "state.db")
    with db.transaction(engine) as conn:
        db.schema_version.create(conn)
        for step in db.MIGRATIONS[:6]:
            db.step_for(step, "sqlite")(conn)
        for index in ("ix_ledger_environment_seq", "ix_ledger_service_seq", "ix_ledger_environment_service_seq"):
            conn.execute(text(f"DROP INDEX {index}"))  # as version 1 made the table, without them
        conn.execute(db.schema_version.insert().values(version=6, applied_at=0.0))
    engine.dispose()
    store = Store(tmp_path)
    with store.engine.connect() as conn:
        names = {str(r[0]) for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        version = conn.execute(text("SELECT max(version) FROM schema_version")).scalar_one()
    assert {"ix_ledger_environment_seq", "ix_ledger_service_seq", "ix_deployments_environment_started_at",
            "ix_activations_environment_service_id"} <= names and version == len(db.MIGRATIONS)
    assert store.missing_triggers() == []


# ---- verifying from the last verified point ---------------------------------------------------------
@pytest.fixture
def signed(tmp_path: Path) -> tuple[Store, str, Path]:
    state = tmp_path / "state"
    store = Store(state)
    key = load_or_create_key(state / "keys")
    _bulk(store, 300, key)
    return store, public_key_text(key), state


@contextlib.contextmanager
def _raw(state: Path) -> Iterator[sqlite3.Connection]:
    """The database as an attacker with write access has it: the guards dropped, put back afterwards."""
    db = sqlite3.connect(state / "state.db", isolation_level=None)
    db.execute("DROP TRIGGER ledger_no_update")
    db.execute("DROP TRIGGER ledger_no_delete")
    try:
        yield db
    finally:
        for name in ("ledger_no_update", "ledger_no_delete"):
            db.execute(insert_only_triggers()[name])
        db.close()


def _rewrite_from(db: sqlite3.Connection, seq: int) -> None:
    """Alter entry `seq` and recompute every hash from it on (no key: signatures left as they were)."""
    rows = db.execute("SELECT seq, at, actor, action, environment, service, subject, payload_json, prev_hash "
                      "FROM ledger WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
    prev = rows[0][8]
    for number, at, actor, action, environment, service, subject, payload_json, _ in rows:
        payload = {**json.loads(payload_json), **({"forged": True} if number == seq else {})}
        digest = ledger.entry_hash(seq=number, at=at, actor=actor, action=action, environment=environment,
                                   service=service, subject=subject, payload=payload, prev_hash=prev)
        db.execute("UPDATE ledger SET payload_json = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (canonical_json(payload), prev, digest, number))
        prev = digest


def test_an_incremental_verify_checks_only_the_new_entries_and_tells_a_rewritten_tail(
        signed: tuple[Store, str, Path]) -> None:
    store, trusted, _state = signed
    first = ledger.check_chain(store, trusted, require_signed=True)
    assert first.problem is None and first.checked == 300 and first.head is not None
    with store.begin() as conn:  # through `append`, as ingot does
        for n in range(40):
            ledger.append(conn, actor="bob", action="deploy", environment="staging", payload={"m": n})
    since = ledger.check_chain(store, trusted, require_signed=True, start=first.head)
    assert since.problem is None and since.checked == 40 and since.start == 300
    with _raw(_state) as db:
        _rewrite_from(db, 320)
    broken = ledger.check_chain(store, trusted, require_signed=True, start=first.head)
    assert broken.problem is not None and broken.problem.seq == 320, broken
    assert "signature does not verify" in broken.problem.reason


def test_an_incremental_verify_tells_a_cut_or_rewritten_ledger_at_its_point(signed: tuple[Store, str, Path]) -> None:
    store, trusted, state = signed
    head = ledger.check_chain(store, trusted).head
    assert head is not None
    with _raw(state) as db:
        _rewrite_from(db, 250)  # a consistent rewrite before the point moves the point's hash
    rewritten = ledger.check_chain(store, trusted, start=head)
    assert rewritten.problem is not None and "differs from when it was verified" in rewritten.problem.reason
    with _raw(state) as db:
        db.execute("DELETE FROM ledger WHERE seq >= 280")
    cut = ledger.check_chain(store, trusted, start=head)
    assert cut.problem is not None and cut.problem.seq == 300 and "the ledger was cut" in cut.problem.reason


def test_a_full_verify_tells_an_edit_before_the_point_that_the_incremental_one_does_not_read(
        signed: tuple[Store, str, Path]) -> None:
    store, trusted, state = signed
    head = ledger.check_chain(store, trusted).head
    with _raw(state) as db:
        db.execute("UPDATE ledger SET actor = 'mallory' WHERE seq = 10")  # its hash no longer matches
    assert ledger.check_chain(store, trusted, start=head).problem is None  # not re-read: what --full is for
    full = ledger.check_chain(store, trusted)
    assert full.problem is not None and full.problem.seq == 10 and "altered" in full.problem.reason


def test_a_moved_or_forged_verified_point_is_refused(signed: tuple[Store, str, Path], tmp_path: Path) -> None:
    store, trusted, state = signed
    point = checkpoint.verified_path(state)
    head = ledger.check_chain(store, trusted).head
    assert head is not None and checkpoint.keep_verified(point, state / "keys", "p", head)
    assert checkpoint.last_verified(point, trusted, "p") == (head, None)
    written = json.loads(point.read_text())
    moved = {**written, "seq": 300 + 50, "hash": "f" * 64}  # past entries an attacker would append unchecked
    point.write_text(json.dumps(moved))
    start, refused = checkpoint.last_verified(point, trusted, "p")
    assert start is None and refused is not None and "signature does not verify" in refused
    other = tmp_path / "other"
    load_or_create_key(other)
    assert checkpoint.keep_verified(point, other, "p", (350, "f" * 64))  # signed, with another key
    assert "signature does not verify" in (checkpoint.last_verified(point, trusted, "p")[1] or "")
    point.write_text(json.dumps(written))
    assert "of project 'p', not 'q'" in (checkpoint.last_verified(point, trusted, "q")[1] or "")


# ---- a long chain checked in parts by worker processes ----------------------------------------------
@pytest.fixture
def in_parts(monkeypatch: pytest.MonkeyPatch, signed: tuple[Store, str, Path]) -> tuple[Store, str, Path]:
    """The signed 300-entry ledger, verified in two parts (a worker process for the second) as a long one is."""
    monkeypatch.setattr(ledger, "PARALLEL_MIN", 100)
    monkeypatch.setattr(ledger, "_workers", lambda: 2)
    return signed


def test_a_chain_checked_in_parts_reports_what_one_pass_does(in_parts: tuple[Store, str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, trusted, state = in_parts
    started: list[list[str]] = []
    real_popen = ledger.subprocess.Popen

    def popen(argv: list[str], **kwargs: Any) -> Any:
        started.append(argv)
        return real_popen(argv, **kwargs)

    monkeypatch.setattr(ledger.subprocess, "Popen", popen)
    whole = ledger.check_chain(store, trusted, require_signed=True)
    assert whole.problem is None and whole.checked == 300 and whole.head is not None and whole.head[0] == 300
    assert len(started) == 1 and started[0][-3:-1] == ["151", "300"]  # the second half, by a worker
    # Each kind of break, in the part a worker reads, is named as a single pass names it.
    with _raw(state) as db:
        db.execute("UPDATE ledger SET actor = 'mallory' WHERE seq = 200")
    edited = ledger.check_chain(store, trusted, require_signed=True)
    assert edited.problem is not None and edited.problem.seq == 200 and "altered" in edited.problem.reason
    with _raw(state) as db:
        db.execute("UPDATE ledger SET actor = 'ålice' WHERE seq = 200")
        _rewrite_from(db, 260)
    rewritten = ledger.check_chain(store, trusted, require_signed=True)
    assert rewritten.problem is not None and rewritten.problem.seq == 260, rewritten
    assert "signature does not verify" in rewritten.problem.reason
    with _raw(state) as db:
        db.execute("DELETE FROM ledger WHERE seq = 151")  # the first entry of the worker's part
    gap = ledger.check_chain(store, trusted, require_signed=True)
    assert gap.problem is not None and gap.problem.seq == 151 and "missing (next is 152)" in gap.problem.reason


def test_parts_tell_an_unsigned_entry_after_signing_began_and_a_failing_worker(
        in_parts: tuple[Store, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, trusted, state = in_parts
    with _raw(state) as db:
        db.execute("UPDATE ledger SET signature = NULL WHERE seq = 151")  # its hash still matches
    unsigned = ledger.check_chain(store, trusted, require_signed=True)
    assert unsigned.problem is not None and unsigned.problem.seq == 151
    assert "it is not signed, though entries are signed since 1" in unsigned.problem.reason
    with _raw(state) as db:
        db.execute("UPDATE ledger SET signature = 'x' WHERE seq = 151")  # back to signed (a forged one)
    # A worker that cannot run leaves the verdict to a pass in this process: the same, only slower.
    monkeypatch.setattr(ledger.sys, "executable", "/nonexistent/python")
    assert ledger.check_chain(store, trusted, require_signed=True).problem is None


def test_a_forged_signature_in_the_middle_is_found_only_when_every_signature_is_checked(
        signed: tuple[Store, str, Path]) -> None:
    """The newest entry's signature vouches for the chain; a middle entry's own signature, edited alone
    (its hash and every hash after it intact), is found when each one is verified."""
    store, trusted, state = signed
    with _raw(state) as db:
        good = db.execute("SELECT signature FROM ledger WHERE seq = 299").fetchone()[0]
        db.execute("UPDATE ledger SET signature = ? WHERE seq = 120", (good,))  # another entry's signature
    assert ledger.check_chain(store, trusted, require_signed=True).problem is None
    every = ledger.check_chain(store, trusted, require_signed=True, every_signature=True)
    assert every.problem is not None and every.problem.seq == 120 and "signature does not verify" in \
        every.problem.reason


def test_a_payload_stored_in_another_spelling_or_a_value_of_another_type(signed: tuple[Store, str, Path]) -> None:
    """The batch check fails for both; the exact check accepts the first (same content) and names the second."""
    store, trusted, state = signed
    with _raw(state) as db:
        payload = db.execute("SELECT payload_json FROM ledger WHERE seq = 40").fetchone()[0]
        db.execute("UPDATE ledger SET payload_json = ? WHERE seq = 40", (json.dumps(json.loads(payload), indent=1),))
    assert ledger.check_chain(store, trusted, require_signed=True).problem is None
    with _raw(state) as db:
        db.execute("UPDATE ledger SET actor = 7 WHERE seq = 41")
    typed = ledger.check_chain(store, trusted, require_signed=True)
    assert typed.problem is not None and typed.problem.seq == 41 and "altered" in typed.problem.reason


# ---- history: a page in a fixed number of queries ------------------------------------------------
def _old_history(store: Store, environment: str | None, service: str | None, limit: int) -> list[tuple[Any, ...]]:
    """What `ingot history` read before: per row, its release, its steps and its service's live activation."""
    rows = []
    for dep in store.deployments(environment, service, limit):
        rel = store.get_release(dep.to_release)
        current = store.current_activation(dep.environment, dep.service)
        rows.append((dep.id, rel.commit if rel else None, rel.artifact_digest if rel else None,
                     store.deployment_outcome(dep.id),
                     bool(current and current.release_id == dep.to_release and current.deployment_id == dep.id)))
    return rows


def test_history_reads_what_the_per_row_read_did_in_four_queries(tmp_path: Path) -> None:
    from sqlalchemy import event

    from ingot.releases import new_release

    store = Store(tmp_path / "state")
    key = load_or_create_key(tmp_path / "state" / "keys")
    releases = [new_release(key=key, project="p", service="web", artifact_digest=f"sha256:{n:064d}",
                            spec={"n": n}, config={}, actor="t", commit=f"c{n}" if n else None) for n in range(3)]
    with store.begin() as conn:
        for release in releases:
            store.insert_release(conn, release)
        for n in range(40):
            env, svc = ("production", "staging")[n % 2], ("web", "api", "worker")[n % 3]
            dep = store.create_deployment(conn, environment=env, service=svc, kind="deploy", from_release=None,
                                          to_release=releases[n % 3].id if n != 7 else "gone", strategy="b",
                                          params={}, actor="t")
            store.add_step(conn, dep.id, "start", "started", {})
            if n % 5 == 1:  # two finishes: the last one says the outcome
                store.add_step(conn, dep.id, "finish", "done", {"outcome": "failed"})
            if n % 4:  # every fourth never finished: running
                store.add_step(conn, dep.id, "finish", "done", {"outcome": "succeeded"} if n % 3 else {})
            if n % 6 != 5:  # the newest activation of a service is not always its newest deployment's
                store.activate(conn, environment=env, service=svc, release_id=dep.to_release if n % 9 else None,
                               deployment_id=dep.id, params={})
    queries: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
    for environment, service, limit in (("production", None, 20), ("staging", "web", 5), (None, None, 100),
                                        ("qa", None, 20)):
        queries.clear()
        got = store.deployment_history(environment, service, limit)
        assert len([q for q in queries if q.startswith("SELECT")]) <= 4, queries
        assert [(r.deployment.id, r.commit, r.artifact, r.outcome, r.live) for r in got] == \
            _old_history(store, environment, service, limit)
    outcomes = {r.outcome for r in store.deployment_history(None, None, 100)}
    lives = [r.live for r in store.deployment_history(None, None, 100)]
    assert outcomes == {"succeeded", "failed", "running"} and any(lives) and not all(lives)
