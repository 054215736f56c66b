"""Recomputing the ledger's hash chain over many rows at once: the hot loop of `ingot audit verify`.

Standard library only (and ingot.canonical), so that a worker process started for part of the chain
imports nothing else. The rows come in batches from a DBAPI cursor, in the columns of `COLUMNS`; a batch
is checked column-wise (seq numbers, previous-hash links, every entry's hash recomputed) by C-level maps
and comparisons, with no Python statement per entry. A batch that does not pass whole is checked again
entry by entry by `ledger`'s exact rules (`check_row`), which names the first entry that is wrong or
finds none (a payload stored in another spelling than canonical JSON, say): the verdict is the exact
check's, only the common case is faster.

`python -m ingot.chain_scan DB FIRST LAST PREV` (what `ledger.check_chain` starts for part of a long
chain on SQLite) checks entries FIRST..LAST of the database file DB, the first linking to PREV, and
prints the outcome as one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from operator import methodcaller
from typing import Any

from ingot.canonical import canonical_json, sha256_hex

GENESIS = "0" * 64
# What a scan reads of each entry, in order; the last is whether the entry is signed (0/1), not its signature.
COLUMNS = ("seq", "at", "actor", "action", "environment", "service", "subject", "payload_json", "prev_hash",
           "hash")
SELECT = f"SELECT {', '.join(COLUMNS)}, signature IS NOT NULL FROM ledger"
BATCH = 20_000

# An entry's canonical JSON as `ledger.entry_hash` makes it, keys in sorted order, put together as text
# from the stored row (the payload as stored: `append` stores it canonical). Values are JSON-encoded first.
_TEMPLATE = ('{}\n{{"action":{},"actor":{},"at":"{!r}","environment":{},"payload":{},"seq":{},"service":{},'
             '"subject":{}}}')
_format = _TEMPLATE.format
_sha256 = hashlib.sha256
_hexdigest = methodcaller("hexdigest")
_encode = str.encode


class _Encoded(dict[Any, str]):
    """JSON strings of the few values that repeat in every entry (actors, actions, environments, services),
    each encoded once; a lookup is a C-level dict access. A value that is not a string fails (TypeError):
    the batch is then checked entry by entry."""

    def __missing__(self, value: Any) -> str:
        found = "null" if value is None else encode_basestring(value)
        if len(self) < 10_000:
            self[value] = found
        return found


_encoded = _Encoded()


def entry_digest(*, seq: int, at: float, actor: str, action: str, environment: str | None, service: str | None,
                 subject: str | None, payload: Any, prev_hash: str) -> str:
    """An entry's hash: its canonical JSON (with `at` as its repr) after the previous entry's hash."""
    body = canonical_json({"seq": seq, "at": repr(at), "actor": actor, "action": action,
                           "environment": environment, "service": service, "subject": subject,
                           "payload": payload})
    return sha256_hex(prev_hash + "\n" + body)


@dataclass
class Scan:
    """Where a scan stands: the next seq and the hash it must link to, what it checked, the newest entry
    (seq, hash, signed), the first signed entry (once one is signed, every later one must be), and the
    first problem (seq, reason), after which it stops."""
    expected: int
    prev: str
    checked: int = 0
    last: tuple[int, str, bool] | None = None
    signed_since: int | None = None
    problem: tuple[int, str] | None = None


def _batch_holds(batch: Sequence[Sequence[Any]], scan: Scan) -> bool:
    """Whether every entry of `batch` is the next in seq, links to the one before and matches its hash."""
    columns = zip(*batch, strict=True)
    seqs, ats, actors, actions, environments, services, subjects, payloads, prevs, hashes, _signed = columns
    if seqs != tuple(range(scan.expected, scan.expected + len(batch))) or prevs[0] != scan.prev \
            or prevs[1:] != hashes[:-1]:
        return False
    get = _encoded.__getitem__
    quoted = map(encode_basestring, subjects) if None not in subjects else map(get, subjects)
    try:
        digests = map(_hexdigest, map(_sha256, map(_encode, map(
            _format, prevs, map(get, actions), map(get, actors), ats, map(get, environments), payloads, seqs,
            map(get, services), quoted))))
        return list(digests) == list(hashes)
    except (TypeError, ValueError, UnicodeError):  # a value of another type than ingot writes
        return False


def check_row(row: Sequence[Any], scan: Scan) -> tuple[int, str] | None:
    """`row`'s problem by the exact rules (its seq, its link, its hash with the payload decoded and
    re-encoded), or None."""
    seq, at, actor, action, environment, service, subject, payload_json, prev_hash, digest, _signed = row
    if seq != scan.expected:
        return scan.expected, f"entry {scan.expected} is missing (next is {seq})"
    if prev_hash != scan.prev:
        return seq, "its previous-hash link does not match the entry before it"
    try:
        recomputed = entry_digest(seq=seq, at=at, actor=actor, action=action, environment=environment,
                                  service=service, subject=subject, payload=json.loads(payload_json),
                                  prev_hash=scan.prev)
    except (TypeError, ValueError, UnicodeError):
        recomputed = None
    if recomputed != digest:
        return seq, "its content does not match its hash (it was altered)"
    return None


def _signing_problem(seq: int, signed: bool, scan: Scan) -> tuple[int, str] | None:
    if signed:
        if scan.signed_since is None:
            scan.signed_since = seq
    elif scan.signed_since is not None:
        return seq, (f"it is not signed, though entries are signed since {scan.signed_since} (it was "
                     "rewritten or added)")
    return None


def scan_batches(batches: Iterable[Sequence[Sequence[Any]]], scan: Scan, *, signed_matters: bool = True) -> Scan:
    """Check `batches` (rows of COLUMNS and the signed flag, in seq order) from where `scan` stands,
    stopping at the first problem. `signed_matters`: an unsigned entry after a signed one is a problem."""
    for batch in batches:
        if not batch:
            continue
        if _batch_holds(batch, scan):
            flags = [row[-1] for row in batch]
            if signed_matters and (0 in flags if scan.signed_since is not None else
                                   1 in flags and 0 in flags[flags.index(1):]):
                pass  # an unsigned entry after a signed one: named entry by entry below
            else:
                if signed_matters and scan.signed_since is None and 1 in flags:
                    scan.signed_since = batch[flags.index(1)][0]
                last = batch[-1]
                scan.expected, scan.prev, scan.checked = last[0] + 1, last[9], scan.checked + len(batch)
                scan.last = (last[0], last[9], bool(last[-1]))
                continue
        for row in batch:
            problem = check_row(row, scan) or (_signing_problem(row[0], bool(row[-1]), scan) if signed_matters
                                               else None)
            if problem is not None:
                scan.problem = problem
                return scan
            scan.expected, scan.prev, scan.checked = row[0] + 1, row[9], scan.checked + 1
            scan.last = (row[0], row[9], bool(row[-1]))
    return scan


def cursor_batches(cursor: Any, size: int = BATCH) -> Iterable[Sequence[Sequence[Any]]]:
    """A DBAPI cursor's rows, `size` at a time (the chain is read once, never held whole)."""
    while True:
        batch = cursor.fetchmany(size)
        if not batch:
            return
        yield batch


def scan_file(database: str, first: int, last: int, prev: str) -> Scan:
    """Entries first..last of the SQLite database file `database`, read-only, in one read transaction."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN")
        cursor = conn.execute(f"{SELECT} WHERE seq >= ? AND seq <= ? ORDER BY seq", (first, last))
        return scan_batches(cursor_batches(cursor), Scan(first, prev))
    finally:
        conn.close()


def _worker(argv: list[str]) -> None:
    database, first, last, prev = argv
    print(json.dumps(asdict(scan_file(database, int(first), int(last), prev))))


if __name__ == "__main__":
    _worker(sys.argv[1:])
