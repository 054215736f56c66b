"""The append-only, hash-chained record of every action: who, what, when, evidence.

Each entry's hash covers its own content and the previous entry's hash, so altering, removing or
reordering any entry breaks every hash after it. The chain is appended inside the caller's
transaction (BEGIN IMMEDIATE), so concurrent writers serialise and cannot fork it.

A hash chain alone stops no one who can write the database: they recompute every hash after the entry
they changed. So each entry's hash (the chain's head at that append) is also signed with the project's
signing key (see ingot.signing), checked against the key pinned outside the store. Entries written
before ingot signed its ledger are covered by the first signed entry after them. Cutting the last
entries is told by a signed checkpoint kept outside the store (see ingot.checkpoint).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from ingot import chain_scan
from ingot.canonical import canonical_json
from ingot.signing import sign, signature_valid, signer_for
from ingot.store import Store
from ingot.store import schema as t
from ingot.store.db import lock_ledger

GENESIS = chain_scan.GENESIS


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: float
    actor: str
    action: str
    environment: str | None
    service: str | None
    subject: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def entry_hash(
    *,
    seq: int,
    at: float,
    actor: str,
    action: str,
    environment: str | None,
    service: str | None,
    subject: str | None,
    payload: dict[str, Any],
    prev_hash: str,
) -> str:
    return chain_scan.entry_digest(seq=seq, at=at, actor=actor, action=action, environment=environment,
                                   service=service, subject=subject, payload=payload, prev_hash=prev_hash)


def signed_head(digest: str) -> bytes:
    """What an entry's signature signs: its hash, which covers every entry up to it."""
    return f"ingot ledger head\n{digest}".encode()


def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    environment: str | None = None,
    service: str | None = None,
    subject: str | None = None,
    payload: dict[str, Any] | None = None,
) -> LedgerEntry:
    # One appender at a time reads the head and links to it, on every machine sharing the store: the chain
    # cannot fork (two entries claiming one seq would also fail its primary key, but only after one lost).
    lock_ledger(conn)
    last = conn.execute(select(t.ledger.c.seq, t.ledger.c.hash).order_by(t.ledger.c.seq.desc()).limit(1)).first()
    seq = (last.seq + 1) if last else 1
    prev_hash = last.hash if last else GENESIS
    body = payload or {}
    # Round-trip through JSON so the hash is computed over exactly what is stored.
    body = json.loads(canonical_json(body))
    at = time.time()
    digest = entry_hash(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        environment=environment,
        service=service,
        subject=subject,
        payload=body,
        prev_hash=prev_hash,
    )
    key = signer_for(conn.engine)
    signature = sign(key, signed_head(digest)) if key is not None else None
    conn.execute(
        t.ledger.insert().values(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            environment=environment,
            service=service,
            subject=subject,
            payload_json=canonical_json(body),
            prev_hash=prev_hash,
            hash=digest,
            signature=signature,
        )
    )
    return LedgerEntry(seq, at, actor, action, environment, service, subject, body, prev_hash, digest, signature)


def record(store: Store, **kwargs: Any) -> LedgerEntry:
    """Append one entry in a transaction of its own."""
    with store.begin() as conn:
        return append(conn, **kwargs)


def entries(
    store: Store,
    *,
    environment: str | None = None,
    service: str | None = None,
    limit: int | None = None,
    after: int = 0,
    actions: Collection[str] | None = None,
) -> list[LedgerEntry]:
    query = select(t.ledger).where(t.ledger.c.seq > after).order_by(t.ledger.c.seq)
    if environment:
        query = query.where(t.ledger.c.environment == environment)
    if service:
        query = query.where(t.ledger.c.service == service)
    if actions is not None:
        query = query.where(t.ledger.c.action.in_(list(actions)))
    if limit:
        query = query.limit(limit)
    with store.engine.connect() as conn:
        return [_entry(r) for r in conn.execute(query)]


def latest(store: Store, *, limit: int, before: int | None = None, environment: str | None = None,
           service: str | None = None) -> list[LedgerEntry]:
    """The newest `limit` entries (older than `before`, if given), in order of `seq`: a ledger read from its end."""
    query = select(t.ledger).order_by(t.ledger.c.seq.desc()).limit(limit)
    if before is not None:
        query = query.where(t.ledger.c.seq < before)
    if environment:
        query = query.where(t.ledger.c.environment == environment)
    if service:
        query = query.where(t.ledger.c.service == service)
    with store.engine.connect() as conn:
        return [_entry(r) for r in reversed(conn.execute(query).all())]


def last_entry(store: Store, *, actions: Collection[str], environment: str | None = None,
               service: str | None = None) -> LedgerEntry | None:
    """The newest entry with one of `actions` (in `environment` and of `service`, if given)."""
    query = select(t.ledger).where(t.ledger.c.action.in_(list(actions)))
    if environment:
        query = query.where(t.ledger.c.environment == environment)
    if service:
        query = query.where(t.ledger.c.service == service)
    with store.engine.connect() as conn:
        row = conn.execute(query.order_by(t.ledger.c.seq.desc()).limit(1)).first()
    return _entry(row) if row else None


def _entry(r: Any) -> LedgerEntry:
    return LedgerEntry(r.seq, r.at, r.actor, r.action, r.environment, r.service, r.subject,
                       json.loads(r.payload_json), r.prev_hash, r.hash, r.signature)


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    reason: str


@dataclass(frozen=True)
class ChainReport:
    """What one verification of the chain found: `checked` entries recomputed after `start` (0: from the
    first), up to `head` (seq, hash of the newest entry seen), and the first break, if any."""
    checked: int
    head: tuple[int, str] | None
    problem: ChainProblem | None
    start: int = 0


def verify_chain(store: Store, trusted: str | None = None, *,
                 require_signed: bool = False) -> tuple[int, ChainProblem | None]:
    """Recompute the chain from the start; return how many entries were checked and the first break."""
    report = check_chain(store, trusted, require_signed=require_signed)
    return report.checked, report.problem


# A chain at least this long (from where a verify starts) is split among worker processes on SQLite.
PARALLEL_MIN = 200_000


def check_chain(store: Store, trusted: str | None = None, *, require_signed: bool = False,
                start: tuple[int, str] | None = None, every_signature: bool = False) -> ChainReport:
    """Recompute the chain from the start, or from `start` (the seq and hash of an entry verified before,
    which must still be there, unchanged); report the first break.

    With `trusted` (a public key), signatures are checked too. An entry's signature signs its hash, which
    covers every entry up to it: so once every hash is recomputed, the newest entry's signature vouches
    for them all, and only that one is verified (each signature costs ~100 times a hash). When it fails,
    a binary search names the first entry whose signature fails: the ledger was rewritten from there
    (a rewrite cannot be signed without the key, so every signature from it on fails). Once one entry is
    signed every later one must be (unsigned ones can only be older than signing); `every_signature`
    verifies each one's too (slow: for a signature column edited alone). `require_signed` (a key is
    pinned, so ingot has signed this ledger): the last entry must be signed.

    The hashes are recomputed a batch of rows at a time (see ingot.chain_scan); a long chain on SQLite is
    split among `_workers()` processes, each checking its part in a read-only transaction of its own up to
    the newest entry when the verify began. Whatever goes wrong there (a break, a worker that fails) is
    checked again in this process from the start, which names the break as a single pass does.
    """
    begun = start[0] if start else 0
    # One connection, one read transaction: the chain is checked as of one moment, however many append.
    with store.engine.connect() as conn:

        def first_bad_signature(low: int, high: int) -> ChainProblem | None:
            """The first entry in [low, high] (all signed) whose signature fails, if the one at high fails."""
            if trusted is None or _signature_holds(conn, trusted, high):
                return None
            while low < high:
                middle = (low + high) // 2
                if _signature_holds(conn, trusted, middle):
                    low = middle + 1
                else:
                    high = middle
            return ChainProblem(low, "its signature does not verify against the trusted key (the ledger was "
                                     "rewritten from here on)")

        initial = chain_scan.Scan(1, GENESIS)
        if start is not None:
            row = conn.execute(select(t.ledger.c.hash, t.ledger.c.signature)
                               .where(t.ledger.c.seq == start[0])).first()
            if row is None:
                return ChainReport(0, None, ChainProblem(start[0], "it is missing, though it was verified "
                                                                   "before: the ledger was cut"), start[0])
            if row.hash != start[1]:
                return ChainReport(0, None, ChainProblem(start[0], "it differs from when it was verified: "
                                                                   "the ledger was rewritten"), start[0])
            initial = chain_scan.Scan(start[0] + 1, start[1], last=(start[0], start[1], bool(row.signature)),
                                      signed_since=start[0] if row.signature and trusted is not None else None)
        newest = conn.execute(select(t.ledger.c.seq).order_by(t.ledger.c.seq.desc()).limit(1)).scalar()
        head = int(newest) if newest is not None else 0
        scan = _scan_in_parts(store, conn, initial, head, trusted is not None)
        if scan is None:
            scan = _scan_here(conn, replace(initial), head, trusted is not None)
        signed_since, last, checked = scan.signed_since, scan.last, scan.checked
        if scan.problem is not None:
            # A signature failing before the break is the earlier problem: the rewrite started there.
            problem = ChainProblem(*scan.problem)
            earlier = first_bad_signature(signed_since, last[0]) if signed_since is not None and last else None
            done = checked if earlier is None else earlier.seq - begun - 1
            return ChainReport(done, last[:2] if last else start, earlier or problem, begun)
        if trusted is not None and every_signature and signed_since is not None and last is not None and checked:
            forged = _first_forged_signature(conn, trusted, max(signed_since, begun + 1), last[0])
            if forged is not None:
                return ChainReport(forged.seq - begun - 1, last[:2], forged, begun)
        if trusted is not None and signed_since is not None and last is not None and checked:
            bad = first_bad_signature(max(signed_since, begun + 1), last[0])
            if bad is not None:
                return ChainReport(bad.seq - begun - 1, last[:2], bad, begun)
    if trusted is not None and require_signed and last is not None and not last[2]:
        return ChainReport(checked, last[:2], ChainProblem(last[0], "no entry up to it is signed, though a key "
                                                                    "is pinned (the signatures were stripped)"),
                           begun)
    return ChainReport(checked, last[:2] if last else None, None, begun)


def _rows_sql(conn: Connection, upper: bool) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return f"{chain_scan.SELECT} WHERE seq >= {mark}{f' AND seq <= {mark}' if upper else ''} ORDER BY seq"


def _scan_here(conn: Connection, scan: chain_scan.Scan, head: int, signed_matters: bool) -> chain_scan.Scan:
    """Entries from `scan.expected` to `head` through this connection's own cursor (its read transaction)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_rows_sql(conn, upper=True), (scan.expected, head))
        return chain_scan.scan_batches(chain_scan.cursor_batches(cursor), scan, signed_matters=signed_matters)
    finally:
        cursor.close()


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _scan_in_parts(store: Store, conn: Connection, initial: chain_scan.Scan, head: int,
                   signed_matters: bool) -> chain_scan.Scan | None:
    """The chain from `initial` to `head` checked in parts at once: the first here, the others each by a
    worker process reading the database file. None when it is not split (short, one core, not SQLite) or
    when any part is not sound (a break, a part not linking to the one before, a worker failing): the
    caller then checks it here in one pass, which names the break."""
    workers = _workers()
    database = conn.engine.url.database
    total = head - initial.expected + 1
    if workers < 2 or total < PARALLEL_MIN or conn.dialect.name != "sqlite" or not database:
        return None
    size = -(-total // workers)
    firsts = [initial.expected + size * k for k in range(workers)]
    # Each part starts from the stored hash of the entry before it; its predecessor must end on that hash.
    links = dict(conn.execute(select(t.ledger.c.seq, t.ledger.c.hash)
                              .where(t.ledger.c.seq.in_([first - 1 for first in firsts[1:]]))).all())
    if len(links) != workers - 1:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(chain_scan.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    started: list[subprocess.Popen[str]] = []
    try:
        for first in firsts[1:]:
            started.append(subprocess.Popen([sys.executable, "-S", "-m", "ingot.chain_scan", database, str(first),
                                             str(min(first + size - 1, head)), str(links[first - 1])],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True))
        scan = _scan_here(conn, replace(initial), firsts[1] - 1, signed_matters)
        parts: list[chain_scan.Scan] = []
        for worker in started:
            out, _ = worker.communicate()
            parts.append(chain_scan.Scan(**json.loads(out)) if worker.returncode == 0 else chain_scan.Scan(0, ""))
    except (OSError, ValueError, TypeError):
        return None
    finally:
        for worker in started:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for first, part in zip(firsts[1:], parts, strict=True):
        if scan.problem is not None or scan.expected != first or part.problem is not None or part.last is None:
            return None
        if signed_matters:
            # Once an entry is signed, every later one is: a part after signing began is signed from its first.
            if scan.signed_since is not None and part.signed_since != first:
                return None
            scan.signed_since = scan.signed_since if scan.signed_since is not None else part.signed_since
        scan.expected, scan.prev, scan.checked = part.expected, part.prev, scan.checked + part.checked
        scan.last = (int(part.last[0]), str(part.last[1]), bool(part.last[2]))
    return scan if scan.problem is None and scan.expected == head + 1 else None


def _first_forged_signature(conn: Connection, trusted: str, low: int, high: int) -> ChainProblem | None:
    """The first entry in [low, high] whose own signature does not verify (each one checked: slow)."""
    rows = conn.execute(select(t.ledger.c.seq, t.ledger.c.hash, t.ledger.c.signature)
                        .where(t.ledger.c.seq >= low, t.ledger.c.seq <= high).order_by(t.ledger.c.seq))
    for seq, digest, signature in itertools.chain.from_iterable(rows.partitions(chain_scan.BATCH)):
        if not signature_valid(trusted, signature, signed_head(digest)):
            return ChainProblem(seq, "its signature does not verify against the trusted key (forged, or the "
                                     "ledger was rewritten from here on)")
    return None


def _signature_holds(conn: Connection, trusted: str, seq: int) -> bool:
    row = conn.execute(select(t.ledger.c.hash, t.ledger.c.signature).where(t.ledger.c.seq == seq)).first()
    return row is not None and signature_valid(trusted, row.signature, signed_head(row.hash))
