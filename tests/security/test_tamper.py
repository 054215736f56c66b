"""An attacker with write access to the state database, and what ingot does about it.

They can edit rows (after dropping the insert-only triggers), recompute every hash of the ledger, cut its
end. They cannot sign: the signing key may live outside the state (INGOT_SIGNING_KEY) and its public
half is pinned beside the spec. So an edited release never starts, and a rewritten or cut ledger fails
`ingot audit verify`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot import ledger
from ingot.canonical import canonical_json, content_digest
from ingot.store import Store
from ingot.store.schema import INSERT_ONLY_TABLES, insert_only_triggers
from tests.support.harness import ExampleProject, load, poll

KEY_FILE = "release-signing.ed25519"


@contextlib.contextmanager
def database(example: ExampleProject) -> Iterator[sqlite3.Connection]:
    """The state database as an attacker opens it: sqlite3 directly, no ingot in between."""
    db = sqlite3.connect(example.state / "state.db", timeout=30)
    try:
        yield db
        db.commit()
    finally:
        db.close()


def entries(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    log = example.ingot("audit", "log", "--json", "--limit", "10000", check=True).json
    return [e for e in log if e["action"] == action]


def tamper_release(example: ExampleProject, release: str) -> None:
    """Change what a release runs, consistently (its spec snapshot and that snapshot's digest): first the way
    the triggers refuse (INSERT OR REPLACE), then with the triggers dropped."""
    with database(example) as db:
        row = db.execute("SELECT * FROM releases WHERE id = ?", (release,)).fetchone()
        columns = [c[1] for c in db.execute("PRAGMA table_info(releases)")]
        values = dict(zip(columns, row, strict=True))
        spec = json.loads(values["spec_json"])
        spec["env"] = {**spec.get("env", {}), "GREETING": "owned"}
        values.update(spec_json=json.dumps(spec, sort_keys=True), spec_digest=content_digest(spec))
        marks = ", ".join("?" for _ in columns)
        with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
            db.execute(f"INSERT OR REPLACE INTO releases VALUES ({marks})", list(values.values()))
        with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
            db.execute(f"INSERT INTO releases VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET spec_json = "
                       "excluded.spec_json", list(values.values()))
        assert db.execute("SELECT spec_json FROM releases WHERE id = ?", (release,)).fetchone()[0] == row[6]
        db.execute("DROP TRIGGER releases_no_update")
        db.execute("UPDATE releases SET spec_json = ?, spec_digest = ? WHERE id = ?",
                   (values["spec_json"], values["spec_digest"], release))


def instance_ids(example: ExampleProject) -> set[str]:
    with database(example) as db:
        return {r[0] for r in db.execute("SELECT id FROM instances")}


# ---- the database refuses -------------------------------------------------------------------------
@pytest.mark.parametrize("table", INSERT_ONLY_TABLES)
def test_replace_and_upsert_are_refused_on_every_insert_only_table(tmp_path: Path, table: str) -> None:
    store = Store(tmp_path / "state")
    ledger.record(store, actor="t", action="x")  # rows in ledger; the others get one below
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    columns = [(c[1], c[2], c[3]) for c in db.execute(f"PRAGMA table_info({table})")]
    sample = {"INTEGER": 1, "FLOAT": 1.0}
    values = [sample.get(kind, "x") for _name, kind, _notnull in columns]
    if table != "ledger":
        db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in columns)})", values)
        db.commit()
    row = db.execute(f"SELECT * FROM {table}").fetchone()
    marks = ", ".join("?" for _ in columns)
    for statement in (f"INSERT OR REPLACE INTO {table} VALUES ({marks})", f"REPLACE INTO {table} VALUES ({marks})",
                      f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT DO UPDATE SET {columns[1][0]} = "
                      f"excluded.{columns[1][0]}"):
        changed = list(row)
        changed[1] = "mallory" if isinstance(row[1], str) else 99
        with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
            db.execute(statement, changed)
    assert db.execute(f"SELECT * FROM {table}").fetchall() == [row]


# ---- an edited release never starts -----------------------------------------------------------------
def _two_releases(example: ExampleProject) -> tuple[str, str]:
    example.ingot("deploy", check=True)
    one = example.get()["release"]
    example.set_version("2")
    example.ingot("deploy", check=True)
    two = example.get()["release"]
    assert one != two
    return one, two


def test_an_edited_release_is_refused_on_rollback_and_deploy_while_the_live_one_serves(
        example: ExampleProject, tmp_path: Path) -> None:
    first = example.ingot("deploy", check=True)
    assert "pinned public key in ingot.pub: commit it" in first.out
    one = example.get()["release"]
    example.set_version("2")
    example.ingot("deploy", check=True)
    two = example.get()["release"]
    tamper_release(example, one)
    before = instance_ids(example)

    with load(example.url, tmp_path) as during:
        rolled = example.ingot("rollback")
        example.set_version("1")  # the same artifact and spec as release one: the deploy reuses that release
        redeployed = example.ingot("deploy")
    for result in (rolled, redeployed):
        assert result.code == 1, result.out + result.err
        assert f"release {one} of web was refused: its id does not match its content" in result.err
    assert during["failures"] == [] and set(during["versions"]) == {"2"} and during["requests"] > 50
    assert instance_ids(example) == before  # nothing was even recorded to start, let alone started
    assert example.get()["release"] == two
    refused = entries(example, "release.refused")
    assert [e["subject"] for e in refused] == [one, one]
    assert "pinned key in" in refused[0]["payload"]["trusted"]
    assert [e["action"] for e in entries(example, "rollback.fail")] == ["rollback.fail"]
    verify = example.ingot("audit", "verify")
    assert verify.code == 1
    assert f"release {one}: its id does not match its content" in verify.err
    assert "trigger releases_no_update is missing" in verify.err


def test_an_edited_live_release_is_not_restarted_by_self_heal_or_reconcile(example: ExampleProject,
                                                                         tmp_path: Path) -> None:
    example.env["INGOT_HEAL_INTERVAL"] = "300ms"
    example.ingot("deploy", check=True)
    live = example.get()["release"]
    tamper_release(example, live)
    before = instance_ids(example)
    status = example.ingot("status", "--json", check=True).json
    victim, survivor = status["services"][0]["instances"]
    with load(example.url, tmp_path) as during:
        os.kill(victim["pid"], signal.SIGKILL)
        refused = poll(lambda: entries(example, "release.refused"), timeout=30, what="self-heal's refusal")
        reconciled = example.ingot("reconcile")
    assert refused[0]["subject"] == live and refused[0]["actor"] == "ingot-agent"
    assert reconciled.code == 1 and f"release {live} of web was refused" in reconciled.err
    assert instance_ids(example) == before
    assert during["requests"] > 50 and set(during["versions"]) == {"1"}
    # Only requests in flight on the killed instance may fail; the survivor serves everything after.
    assert len(during["failures"]) <= 4
    rows = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    assert [r["id"] for r in rows if r["state"] == "running"] == [survivor["id"]]


# ---- the ledger ---------------------------------------------------------------------------------------
def _ledger_with_history(example: ExampleProject) -> None:
    """Signed entries without an agent: a build (which pins the key) and a few config changes."""
    built = example.ingot("build", check=True)
    assert "pinned public key in ingot.pub: commit it" in built.out
    for value in ("a", "b", "c", "d"):
        example.ingot("config", "set", "FLAG", value, check=True)


def _rewrite(db: sqlite3.Connection, seq: int, strip: bool = False) -> None:
    """Alter entry `seq`'s payload and recompute every hash from it on, as an attacker with write access
    (and no key) would; signatures are left as they were, or stripped."""
    db.execute("DROP TRIGGER ledger_no_update")
    rows = db.execute("SELECT seq, at, actor, action, environment, service, subject, payload_json, prev_hash "
                      "FROM ledger WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
    prev = rows[0][8]
    for number, at, actor, action, environment, service, subject, payload_json, _prev in rows:
        payload = json.loads(payload_json)
        if number == seq:
            payload["value_note"] = "nothing to see here"
        digest = ledger.entry_hash(seq=number, at=at, actor=actor, action=action, environment=environment,
                                   service=service, subject=subject, payload=payload, prev_hash=prev)
        db.execute("UPDATE ledger SET payload_json = ?, prev_hash = ?, hash = ?" +
                   (", signature = NULL" if strip else "") + " WHERE seq = ?",
                   (canonical_json(payload), prev, digest, number))
        prev = digest


@pytest.mark.parametrize("strip", [False, True], ids=["signatures-kept", "signatures-stripped"])
def test_a_consistently_rewritten_ledger_fails_verify(example: ExampleProject, strip: bool) -> None:
    _ledger_with_history(example)
    assert example.ingot("audit", "verify", check=True).code == 0
    with database(example) as db:
        total = db.execute("SELECT max(seq) FROM ledger").fetchone()[0]
        _rewrite(db, total - 2, strip=strip)
        db.execute(insert_only_triggers()["ledger_no_update"])  # put back, to hide the rewrite
    store = Store(example.state)
    assert ledger.verify_chain(store)[1] is None  # the hash chain alone is consistent again
    store.close()
    verify = example.ingot("audit", "verify")
    assert verify.code == 1
    expected = ("no entry up to it is signed" if strip and total - 2 == 1 else
                "is not signed, though entries are signed since" if strip else "its signature does not verify")
    assert f"ledger entry {total - 2}: " in verify.err and expected in verify.err


def test_a_middle_entry_signature_edited_alone_is_found_by_verify_signatures(example: ExampleProject) -> None:
    """Its hash and the chain are intact, so the newest entry's signature still vouches for every entry's
    content and a plain verify passes (as documented); `--signatures` verifies each entry's own."""
    _ledger_with_history(example)
    with database(example) as db:
        total = db.execute("SELECT max(seq) FROM ledger").fetchone()[0]
        other = db.execute("SELECT signature FROM ledger WHERE seq = ?", (total,)).fetchone()[0]
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger SET signature = ? WHERE seq = ?", (other, total - 2))
        db.execute(insert_only_triggers()["ledger_no_update"])
    assert example.ingot("audit", "verify", "--full").code == 0
    every = example.ingot("audit", "verify", "--full", "--signatures")
    assert every.code == 1 and f"ledger entry {total - 2}: its signature does not verify" in every.err, every.err


def test_a_ledger_cut_at_its_end_fails_verify_against_a_checkpoint(example: ExampleProject, tmp_path: Path) -> None:
    _ledger_with_history(example)
    kept = tmp_path / "elsewhere" / "ledger.checkpoint"
    kept.parent.mkdir()
    written = example.ingot("audit", "checkpoint", "--out", str(kept), check=True)
    mark = json.loads(kept.read_text())
    assert f"checkpoint of entry {mark['seq']} written to" in written.out
    assert example.ingot("audit", "verify", "--checkpoint", str(kept), check=True).code == 0
    example.ingot("config", "set", "FLAG", "e", check=True)  # the ledger may grow past a checkpoint
    assert example.ingot("audit", "verify", "--checkpoint", str(kept), check=True).code == 0
    with database(example) as db:
        db.execute("DROP TRIGGER ledger_no_delete")
        db.execute("DELETE FROM ledger WHERE seq >= ?", (mark["seq"] - 1,))
        db.execute(insert_only_triggers()["ledger_no_delete"])  # and put back, to hide it
    # What is left is a sound, signed chain: the entry the last verify reached is gone, which tells it...
    since = example.ingot("audit", "verify")
    assert since.code == 1 and f"(the last verified, in {example.state / 'ledger.verified'}): it is missing" \
        in since.err, since.err
    # ...and, without it (a full verify), only the checkpoint kept elsewhere does.
    assert example.ingot("audit", "verify", "--full").code == 0
    cut = example.ingot("audit", "verify", "--checkpoint", str(kept))
    assert cut.code == 1
    assert f"the ledger was cut: it ends at entry {mark['seq'] - 2}" in cut.err and str(kept) in cut.err
    # A forged checkpoint (the attacker's own, matching the cut ledger) does not verify.
    forged = {**mark, "seq": mark["seq"] - 2}
    kept.write_text(json.dumps(forged))
    assert "its signature does not verify" in example.ingot("audit", "verify", "--checkpoint", str(kept)).err
    # Nor does a last verified point moved back (to let the entries after it go unchecked): it is refused.
    point = example.state / "ledger.verified"
    assert json.loads(point.read_text())["seq"] == mark["seq"] - 2  # the --full verify above wrote it
    point.write_text(json.dumps({**json.loads(point.read_text()), "seq": 1}))
    moved = example.ingot("audit", "verify")
    assert moved.code == 1 and f"the last verified point {point} is refused: its signature does not verify" \
        in moved.err, moved.err


def test_verify_names_a_missing_trigger(example: ExampleProject) -> None:
    _ledger_with_history(example)
    with database(example) as db:
        db.execute("DROP TRIGGER releases_no_replace")
    verify = example.ingot("audit", "verify")
    assert verify.code == 1
    missing = [line for line in verify.err.splitlines() if "trigger" in line and "is missing" in line]
    assert len(missing) == 1 and "trigger releases_no_replace is missing" in missing[0]


def test_verify_on_a_state_with_no_key_makes_none(example: ExampleProject) -> None:
    example.ingot("config", "set", "FLAG", "x", check=True)  # a state, with a ledger
    key = example.state / "keys" / KEY_FILE
    key.unlink()
    verify = example.ingot("audit", "verify")
    assert not key.exists() and not (example.root / "ingot.pub").exists()
    assert verify.code == 1 and "no pinned key and no signing key" in verify.err
    checkpoint = example.ingot("audit", "checkpoint")
    assert checkpoint.code == 2 and "no signing key" in checkpoint.err and not key.exists()


# ---- the key apart --------------------------------------------------------------------------------------
def test_a_signing_key_outside_the_state_works_end_to_end(example: ExampleProject, tmp_path: Path) -> None:
    outside = tmp_path / "vault"
    outside.mkdir(mode=0o700)
    example.env["INGOT_SIGNING_KEY"] = str(outside / "signing.pem")
    one, _two = _two_releases(example)
    rolled = example.ingot("rollback", check=True)
    assert f"rolled back to release {one}" in rolled.out
    verify = example.ingot("audit", "verify", check=True)
    assert "ledger intact" in verify.out and "pinned key in" in verify.out
    assert (outside / "signing.pem").exists() and (outside / "signing.pem").stat().st_mode & 0o077 == 0
    assert [p for p in example.state.rglob("*") if KEY_FILE in p.name or p.suffix == ".pem"] == []
    with database(example) as db:
        assert db.execute("SELECT count(*) FROM ledger WHERE signature IS NULL").fetchone()[0] == 0
    # Another key than the pinned one is refused, naming both files; nothing changes.
    other = example.ingot("deploy", extra_env={"INGOT_SIGNING_KEY": str(outside / "other.pem")})
    assert other.code == 2
    assert str(outside / "other.pem") in other.err and str(example.root / "ingot.pub") in other.err
    assert example.get()["release"] == one


def test_the_agent_keeps_a_checkpoint_up_to_date(example: ExampleProject, tmp_path: Path) -> None:
    kept = tmp_path / "ledger.checkpoint"
    example.env["INGOT_CHECKPOINT"] = str(kept)  # what `ingot serve --checkpoint FILE` sets for its agent
    example.ingot("agent", check=True)
    example.ingot("config", "set", "FLAG", "z", check=True)

    def head() -> int:
        with database(example) as db:
            return int(db.execute("SELECT max(seq) FROM ledger").fetchone()[0])

    poll(lambda: kept.exists() and json.loads(kept.read_text())["seq"] == head(), timeout=30,
         what="the checkpoint to reach the ledger's head")
    assert example.ingot("audit", "verify", "--checkpoint", str(kept), check=True).code == 0
