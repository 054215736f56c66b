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

import hashlib
import itertools
import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from sqlalchemy import Connection, select

from ingot.canonical import canonical_json, sha256_hex
from ingot.signing import sign, signature_valid, signer_for
from ingot.store import Store
from ingot.store import schema as t
from ingot.store.db import lock_ledger

GENESIS = "0" * 64


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
    body = canonical_json(
        {
            "seq": seq,
            "at": repr(at),
            "actor": actor,
            "action": action,
            "environment": environment,
            "service": service,
            "subject": subject,
            "payload": payload,
        }
    )
    return sha256_hex(prev_hash + "\n" + body)


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


# How many rows a verification fetches at a time: the chain is read once, never held whole.
_BATCH = 20_000


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
    """
    prev, expected_seq, checked = GENESIS, 1, 0
    signed_since: int | None = None
    last: tuple[int, str, object] | None = None  # seq, hash, its signature (or whether it has one)
    # Whether an entry is signed, not its signature: only the newest one's is verified (below).
    columns = [*(getattr(t.ledger.c, name) for name in _COLUMNS),
               t.ledger.c.signature if every_signature else t.ledger.c.signature.isnot(None)]
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

        def broken(problem: ChainProblem) -> ChainReport:
            # A signature failing before the break is the earlier problem: the rewrite started there.
            earlier = first_bad_signature(signed_since, last[0]) if signed_since is not None and last else None
            found = earlier or problem
            done = checked if earlier is None else earlier.seq - (start[0] if start else 0) - 1
            return ChainReport(done, last[:2] if last else start, found, start[0] if start else 0)

        if start is not None:
            row = conn.execute(select(t.ledger.c.hash, t.ledger.c.signature)
                               .where(t.ledger.c.seq == start[0])).first()
            if row is None:
                return ChainReport(0, None, ChainProblem(start[0], "it is missing, though it was verified "
                                                                   "before: the ledger was cut"), start[0])
            if row.hash != start[1]:
                return ChainReport(0, None, ChainProblem(start[0], "it differs from when it was verified: "
                                                                   "the ledger was rewritten"), start[0])
            prev, expected_seq = start[1], start[0] + 1
            signed_since = start[0] if row.signature else None
            last = (start[0], start[1], row.signature)
        query = select(*columns).where(t.ledger.c.seq >= expected_seq).order_by(t.ledger.c.seq)
        for seq, at, actor, action, environment, service, subject, payload_json, prev_hash, digest, signature \
                in itertools.chain.from_iterable(conn.execute(query).partitions(_BATCH)):
            if seq != expected_seq:
                return broken(ChainProblem(expected_seq, f"entry {expected_seq} is missing (next is {seq})"))
            if prev_hash != prev:
                return broken(ChainProblem(seq, "its previous-hash link does not match the entry before it"))
            if _fast_hash(seq, at, actor, action, environment, service, subject, payload_json, prev) != digest \
                    and entry_hash(seq=seq, at=at, actor=actor, action=action, environment=environment,
                                   service=service, subject=subject, payload=json.loads(payload_json),
                                   prev_hash=prev) != digest:
                return broken(ChainProblem(seq, "its content does not match its hash (it was altered)"))
            if trusted is not None:
                if signature:
                    if every_signature and not signature_valid(trusted, signature, signed_head(digest)):
                        return broken(ChainProblem(seq, "its signature does not verify against the trusted key "
                                                        "(the ledger was rewritten from here on)"))
                    if signed_since is None:
                        signed_since = seq
                elif signed_since is not None:
                    return broken(ChainProblem(seq, f"it is not signed, though entries are signed since "
                                                    f"{signed_since} (it was rewritten or added)"))
            prev = digest
            expected_seq += 1
            checked += 1
            last = (seq, digest, signature)
        if trusted is not None and signed_since is not None and last is not None and checked:
            bad = first_bad_signature(max(signed_since, (start[0] if start else 0) + 1), last[0])
            if bad is not None:
                return ChainReport(bad.seq - (start[0] if start else 0) - 1, last[:2], bad,
                                   start[0] if start else 0)
    if trusted is not None and require_signed and last is not None and not last[2]:
        return ChainReport(checked, last[:2], ChainProblem(last[0], "no entry up to it is signed, though a key "
                                                                    "is pinned (the signatures were stripped)"),
                           start[0] if start else 0)
    return ChainReport(checked, last[:2] if last else None, None, start[0] if start else 0)


_COLUMNS = ("seq", "at", "actor", "action", "environment", "service", "subject", "payload_json", "prev_hash",
            "hash")


def _signature_holds(conn: Connection, trusted: str, seq: int) -> bool:
    row = conn.execute(select(t.ledger.c.hash, t.ledger.c.signature).where(t.ledger.c.seq == seq)).first()
    return row is not None and signature_valid(trusted, row.signature, signed_head(row.hash))


_sha256 = hashlib.sha256

# JSON of the few values that repeat in every entry (actors, actions, environments, services): encoded once.
_encoded: dict[str | None, str] = {None: "null"}


def _json_string(value: str | None) -> str:
    found = _encoded.get(value)
    if found is None:
        found = encode_basestring(value)  # type: ignore[arg-type]  # None is in the cache
        if len(_encoded) < 10_000:
            _encoded[value] = found
    return found


def _fast_hash(seq: int, at: float, actor: str, action: str, environment: str | None, service: str | None,
               subject: str | None, payload_json: str, prev_hash: str) -> str:
    """`entry_hash` of a stored row without decoding its payload: the row's canonical JSON is put together
    as text (keys in sorted order), the payload as stored (`append` stores it canonical). A payload stored
    otherwise gives another hash here: the caller then computes `entry_hash` the slow way."""
    known = _encoded  # (`or`: a cache miss; no encoded value is empty)
    return _sha256(
        f'{prev_hash}\n{{"action":{known.get(action) or _json_string(action)},'
        f'"actor":{known.get(actor) or _json_string(actor)},"at":"{at!r}",'
        f'"environment":{known.get(environment) or _json_string(environment)},"payload":{payload_json},'
        f'"seq":{seq},"service":{known.get(service) or _json_string(service)},'
        f'"subject":{"null" if subject is None else encode_basestring(subject)}}}'.encode()).hexdigest()
