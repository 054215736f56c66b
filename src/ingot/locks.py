"""The deploy lock: one operation at a time changes an environment, and everyone can see who holds it.

The lock is a row in the state store, taken by the process that runs the operation and held for
the whole of it (build, release, deploy). A lock whose process is gone is reported as stale with who
left it and when; `ingot unlock` clears it and the ledger records that.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select

from ingot import ledger
from ingot.errors import OperationFailed, UserInputError
from ingot.runtimes.process import process_start_time
from ingot.store import Store
from ingot.store import schema as t


@dataclass(frozen=True)
class LockInfo:
    environment: str
    holder: str
    operation: str
    host: str
    pid: int
    proc_start: str | None
    since: float

    @property
    def alive(self) -> bool:
        """Whether the holding process still runs (only knowable on its own host; elsewhere assume so)."""
        if self.host != socket.gethostname():
            return True
        return process_start_time(self.pid) == self.proc_start and self.proc_start is not None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.holder} ({self.operation}, pid {self.pid} on {self.host}) since {since}"


def current(store: Store, environment: str) -> LockInfo | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(t.locks).where(t.locks.c.environment == environment)).first()
    return LockInfo(row.environment, row.holder, row.operation, row.host, row.pid, row.proc_start,
                    row.since) if row else None


@contextmanager
def hold(store: Store, environment: str, operation: str, actor: str) -> Iterator[LockInfo]:
    """Hold the environment's lock for the block; refuse at once if someone else holds it."""
    mine = LockInfo(environment, actor, operation, socket.gethostname(), os.getpid(),
                    process_start_time(os.getpid()), time.time())
    with store.begin() as conn:
        row = conn.execute(select(t.locks).where(t.locks.c.environment == environment)).first()
        if row is not None:
            raise _refusal(LockInfo(row.environment, row.holder, row.operation, row.host, row.pid,
                                    row.proc_start, row.since))
        conn.execute(t.locks.insert().values(**mine.__dict__))
    try:
        yield mine
    finally:
        with store.begin() as conn:
            conn.execute(t.locks.delete().where(t.locks.c.environment == environment)
                         .where(t.locks.c.pid == mine.pid).where(t.locks.c.since == mine.since))


class Locked(OperationFailed):
    """Refused because another operation holds the environment's lock; nothing was done."""


def _refusal(holder: LockInfo) -> Locked:
    if holder.alive:
        return Locked(
            f"{holder.environment} is locked: {holder.describe()}",
            details=["wait for it to finish (see 'ingot status' and 'ingot history')"],
        )
    return Locked(
        f"{holder.environment} has a stale lock: {holder.describe()}, and that process is gone",
        details=["check 'ingot history' for the operation it left, then clear the lock with "
                 f"'ingot unlock --env {holder.environment}' (recorded in the ledger)"],
    )


def unlock(store: Store, environment: str, actor: str, *, force: bool = False) -> LockInfo:
    """Clear the environment's lock; a live holder's lock only with `force`."""
    holder = current(store, environment)
    if holder is None:
        raise UserInputError(f"{environment} is not locked")
    if holder.alive and not force:
        raise OperationFailed(f"{environment} is locked by a running process: {holder.describe()}",
                              details=["it releases the lock when it finishes; --force clears it anyway"])
    with store.begin() as conn:
        conn.execute(t.locks.delete().where(t.locks.c.environment == environment))
        ledger.append(conn, actor=actor, action="unlock", environment=environment,
                      payload={"cleared": holder.describe(), "holder_alive": holder.alive, "forced": force})
    return holder
