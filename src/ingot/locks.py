"""The deploy lock: one operation at a time changes an environment, and everyone can see who holds it.

The lock is a row in the state store. The process that runs a command (the CLI, the API, the GitOps
watcher) takes it before building, and the lock belongs to the *operation*, not to that process:

- `hold` takes it for the command's block. Before the deploy is handed to the agent only the caller
  holds it; if the caller goes away then, nothing was handed over, and the lock goes with it.
- From the moment the agent receives the deploy (`carry`), the agent holds it too, until its operation
  ends. A caller that goes away meanwhile (Ctrl-C and detach, a killed terminal) leaves the lock to the
  agent, which lets go of it when the operation ends. The verification window that may follow does not
  hold the service (any later operation ends it first), so the lock is released when the deploy answers.
- A lock is stale when every process that holds it is gone (each known by pid and process start time,
  so a recycled pid does not count). One left by an agent that died is cleared when the agent starts
  again, after it has marked the deployment interrupted (`clear_abandoned`); one left by a caller that
  died before handing anything over is reported with who left it and when, and `ingot unlock` clears it.
  The ledger records both.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from ingot import ledger
from ingot.errors import OperationFailed, UserInputError
from ingot.machine import machine_name
from ingot.runtimes.process import process_alive, process_start_time
from ingot.store import Store
from ingot.store import schema as t


def _running(host: str, pid: int | None, proc_start: str | None) -> bool:
    """Whether that process still runs (only knowable on its own host; elsewhere assume so)."""
    if pid is None:
        return False
    if host != machine_name():
        return True
    return proc_start is not None and process_alive(pid) and process_start_time(pid) == proc_start


@dataclass(frozen=True)
class LockInfo:
    environment: str
    holder: str
    operation: str
    host: str
    pid: int
    proc_start: str | None
    since: float
    token: str | None = None
    agent_pid: int | None = None  # the agent running the operation handed to it, while it runs
    agent_proc_start: str | None = None
    caller_left: bool = False  # the process that took the lock has gone, leaving it to the agent

    @property
    def caller_alive(self) -> bool:
        return not self.caller_left and _running(self.host, self.pid, self.proc_start)

    @property
    def agent_alive(self) -> bool:
        return _running(self.host, self.agent_pid, self.agent_proc_start)

    @property
    def alive(self) -> bool:
        """Whether anyone still holds it: the caller, or the agent running the operation."""
        return self.caller_alive or self.agent_alive

    @property
    def in_agent(self) -> bool:
        return self.agent_pid is not None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        where = (f"running in the agent, pid {self.agent_pid} on {self.host}" if self.in_agent
                 else f"pid {self.pid} on {self.host}")
        return f"{self.holder} ({self.operation}, {where}) since {since}"

    def handoff(self) -> dict[str, Any]:
        """What the deploy request carries so that the agent can take the lock over."""
        return {"token": self.token, "holder": self.holder, "operation": self.operation}


def _info(row: Any) -> LockInfo:
    return LockInfo(row.environment, row.holder, row.operation, row.host, row.pid, row.proc_start, row.since,
                    row.token, row.agent_pid, row.agent_proc_start, bool(row.caller_left))


def _row(conn: Connection, environment: str) -> LockInfo | None:
    row = conn.execute(select(t.locks).where(t.locks.c.environment == environment)).first()
    return _info(row) if row else None


def current(store: Store, environment: str) -> LockInfo | None:
    with store.engine.connect() as conn:
        return _row(conn, environment)


def _me() -> tuple[str, int, str | None]:
    # The machine as the rows name it ($INGOT_MACHINE, else the host name): two clones with one host name are
    # told apart by it, so neither takes the other's live lock for an abandoned one of its own.
    return machine_name(), os.getpid(), process_start_time(os.getpid())


@contextmanager
def hold(store: Store, environment: str, operation: str, actor: str) -> Iterator[LockInfo]:
    """Hold the environment's lock for the block; refuse at once if someone else holds it.

    The agent may take it over inside the block (`carry`); on leaving, a lock the agent still carries
    stays with it, and any other is released.
    """
    host, pid, proc_start = _me()
    mine = LockInfo(environment, actor, operation, host, pid, proc_start, time.time(), uuid.uuid4().hex)
    with store.begin() as conn:
        holder = _row(conn, environment)
        if holder is not None:
            raise _refusal(holder)
        conn.execute(t.locks.insert().values(**mine.__dict__))
    try:
        yield mine
    finally:
        with store.begin() as conn:
            held = _row(conn, environment)
            if held is not None and held.token == mine.token:
                mine_only = t.locks.c.environment == environment
                if held.agent_alive:
                    conn.execute(t.locks.update().where(mine_only).values(caller_left=1))
                else:
                    conn.execute(t.locks.delete().where(mine_only))


# In the agent: how many of its operations carry each lock token now (a deploy of several services hands
# each over with the same lock; the lock is the agent's until the last of them ends). Only the agent's
# event loop thread touches it.
_carriers: dict[str, int] = {}


@contextmanager
def carry(store: Store, environment: str, handoff: dict[str, Any] | None, actor: str) -> Iterator[None]:
    """The agent's side: hold the lock handed over with an operation until the block (the operation) ends.

    A caller that let go before the agent got here (interrupted just after sending) has left no lock: the
    agent takes a fresh one for the operation, unless someone else holds the environment by now.
    Without a hand-off (an older client, the agent's own work) nothing is locked here.
    """
    if not handoff or not handoff.get("token"):
        yield
        return
    token = str(handoff["token"])
    if not _carriers.get(token):  # else one deploy of several services, in parallel: the first took it over
        _take_over(store, environment, token, handoff, actor)
    _carriers[token] = _carriers.get(token, 0) + 1
    try:
        yield
    finally:
        _carriers[token] -= 1
        if not _carriers[token]:
            del _carriers[token]
            _let_go(store, environment, token)


def _take_over(store: Store, environment: str, token: str, handoff: dict[str, Any], actor: str) -> None:
    host, pid, proc_start = _me()
    with store.begin() as conn:
        held = _row(conn, environment)
        if held is None:
            conn.execute(t.locks.insert().values(
                environment=environment, holder=str(handoff.get("holder") or actor),
                operation=str(handoff.get("operation") or "deploy"), host=host, pid=pid, proc_start=proc_start,
                since=time.time(), token=token, agent_pid=pid, agent_proc_start=proc_start, caller_left=1))
        elif held.token == token:
            conn.execute(t.locks.update().where(t.locks.c.environment == environment)
                         .values(agent_pid=pid, agent_proc_start=proc_start))
        else:
            raise _refusal(held)


def _let_go(store: Store, environment: str, token: str) -> None:
    """The agent's last operation carrying lock `token` has ended: the caller keeps the lock, or it goes."""
    with store.begin() as conn:
        held = _row(conn, environment)
        if held is not None and held.token == token:
            only = t.locks.c.environment == environment
            if held.caller_alive:  # it goes on (the next service of the same command, say)
                conn.execute(t.locks.update().where(only).values(agent_pid=None, agent_proc_start=None))
            else:
                conn.execute(t.locks.delete().where(only))


def carried(store: Store, environment: str, token: str | None) -> bool:
    """Whether the agent still runs the operation that the lock `token` was handed over with."""
    held = current(store, environment)
    return held is not None and held.token == token and held.agent_alive


def clear_abandoned(store: Store, actor: str) -> list[LockInfo]:
    """Called by an agent as it starts: clear the locks that an agent which died left behind.

    Their operations died with that agent (one agent runs per state directory, so the one starting now
    is the only one alive), and its deployments have just been marked interrupted. Recorded.
    """
    cleared = []
    with store.begin() as conn:
        for row in conn.execute(select(t.locks).where(t.locks.c.agent_pid.is_not(None))).all():
            held = _info(row)
            if held.alive or held.agent_pid == os.getpid():
                continue
            conn.execute(t.locks.delete().where(t.locks.c.environment == held.environment))
            ledger.append(conn, actor=actor, action="unlock", environment=held.environment,
                          payload={"cleared": held.describe(), "holder_alive": False, "forced": False,
                                   "reason": "the agent that ran the operation stopped; its deployment is "
                                             "marked interrupted"})
            cleared.append(held)
    return cleared


class Locked(OperationFailed):
    """Refused because another operation holds the environment's lock; nothing was done."""


def _refusal(holder: LockInfo) -> Locked:
    if holder.alive:
        follow = "wait for it to finish (see 'ingot status' and 'ingot history')"
        if holder.in_agent:
            follow += f", or stop it with 'ingot abort --env {holder.environment}'"
        return Locked(f"{holder.environment} is locked: {holder.describe()}", details=[follow])
    if holder.in_agent:
        return Locked(
            f"{holder.environment} has a stale lock: {holder.describe()}, and that agent is gone",
            details=["it is cleared when the agent starts again ('ingot agent'), which marks the deployment "
                     "interrupted; the release that was live keeps serving"],
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


def refuse_if_busy(store: Store, environment: str) -> None:
    """Refuse at once, as `hold` would, while a live operation holds the environment: for callers that start
    the operation in the background and would otherwise only learn it there (the API's 202). A stale lock is
    left to `hold`, after the agent starting has had its chance to clear it."""
    holder = current(store, environment)
    if holder is not None and holder.alive:
        raise _refusal(holder)
