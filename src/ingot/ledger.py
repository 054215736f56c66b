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

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from ingot.canonical import canonical_json, sha256_hex
from ingot.signing import sign, signature_valid, signer_for
from ingot.store import Store
from ingot.store import schema as t

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


def verify_chain(store: Store, trusted: str | None = None, *,
                 require_signed: bool = False) -> tuple[int, ChainProblem | None]:
    """Recompute the chain from the start; return how many entries were checked and the first break.

    With `trusted` (a public key), signatures are checked too: every signed entry's must verify, and
    once one entry is signed every later one must be (unsigned ones can only be older than signing).
    `require_signed` (a key is pinned, so ingot has signed this ledger): the last entry must be signed.
    """
    prev = GENESIS
    expected_seq = 1
    checked = 0
    signed_since: int | None = None
    last: LedgerEntry | None = None
    for entry in entries(store):
        if entry.seq != expected_seq:
            return checked, ChainProblem(expected_seq, f"entry {expected_seq} is missing (next is {entry.seq})")
        if entry.prev_hash != prev:
            return checked, ChainProblem(entry.seq, "its previous-hash link does not match the entry before it")
        recomputed = entry_hash(
            seq=entry.seq,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            environment=entry.environment,
            service=entry.service,
            subject=entry.subject,
            payload=entry.payload,
            prev_hash=entry.prev_hash,
        )
        if recomputed != entry.hash:
            return checked, ChainProblem(entry.seq, "its content does not match its hash (it was altered)")
        if trusted is not None:
            if entry.signature:
                if not signature_valid(trusted, entry.signature, signed_head(entry.hash)):
                    return checked, ChainProblem(entry.seq, "its signature does not verify against the trusted "
                                                            "key (the ledger was rewritten from here on)")
                signed_since = signed_since or entry.seq
            elif signed_since is not None:
                return checked, ChainProblem(entry.seq, f"it is not signed, though entries are signed since "
                                                        f"{signed_since} (it was rewritten or added)")
        prev = entry.hash
        expected_seq += 1
        checked += 1
        last = entry
    if trusted is not None and require_signed and last is not None and not last.signature:
        return checked, ChainProblem(last.seq, "no entry up to it is signed, though a key is pinned "
                                               "(the signatures were stripped)")
    return checked, None
