"""The lock's hand-off: the caller holds it, the agent carries it while its operation runs, and whoever
is last lets go of it; a lock whose every holder is gone is stale."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from ingot import ledger, locks
from ingot.runtimes.process import process_start_time
from ingot.store import Store
from ingot.store import schema as t
from tests.support.store_backends import Backend


@pytest.fixture
def store(tmp_path: Path, backend: Backend) -> Store:
    """The store on each backend (SQLite, a real PostgreSQL server)."""
    return Store(tmp_path / "state")


def dead_process() -> tuple[int, str]:
    """The pid and start time of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = process_start_time(child.pid)
    assert started is not None
    child.communicate(b"")
    return child.pid, started


def test_the_agent_carries_the_lock_and_gives_it_back_to_a_caller_still_there(store: Store) -> None:
    with locks.hold(store, "staging", "deploy", "alice") as mine:
        with locks.carry(store, "staging", mine.handoff(), "agent"):
            held = locks.current(store, "staging")
            assert held is not None and held.in_agent and held.token == mine.token
            assert "running in the agent" in held.describe() and locks.carried(store, "staging", mine.token)
            refused = r"staging is locked: alice \(deploy, running in the agent"
            with pytest.raises(locks.Locked, match=refused), locks.hold(store, "staging", "rollback", "bob"):
                pass
        held = locks.current(store, "staging")
        assert held is not None and not held.in_agent and held.caller_alive  # the next service, say
    assert locks.current(store, "staging") is None


def test_a_caller_that_leaves_first_leaves_the_lock_to_the_agent(store: Store) -> None:
    hold = locks.hold(store, "staging", "deploy", "alice")
    mine = hold.__enter__()
    carry = locks.carry(store, "staging", mine.handoff(), "agent")
    carry.__enter__()
    hold.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # Ctrl-C: the command ends
    held = locks.current(store, "staging")
    assert held is not None and held.caller_left and held.alive
    carry.__exit__(None, None, None)  # the agent's operation ends
    assert locks.current(store, "staging") is None


def test_an_agent_that_gets_the_request_after_the_caller_left_takes_a_lock_of_its_own(store: Store) -> None:
    with locks.hold(store, "staging", "deploy", "alice") as mine:
        pass  # gone before the agent read the request
    with locks.carry(store, "staging", mine.handoff(), "agent"):
        held = locks.current(store, "staging")
        assert held is not None and held.holder == "alice" and held.in_agent and held.caller_left
    assert locks.current(store, "staging") is None
    with locks.hold(store, "staging", "deploy", "bob"), pytest.raises(locks.Locked), \
            locks.carry(store, "staging", mine.handoff(), "agent"):  # someone else holds it by now
        pass


def test_the_lock_of_a_dead_agent_is_stale_and_cleared_by_the_next_agent(store: Store) -> None:
    pid, started = dead_process()
    with locks.hold(store, "staging", "deploy", "alice") as mine:
        pass
    with locks.carry(store, "staging", mine.handoff(), "agent"):
        with store.begin() as conn:  # as if a process now gone had carried it
            conn.execute(update(t.locks).values(agent_pid=pid, agent_proc_start=started))
        held = locks.current(store, "staging")
        assert held is not None and not held.alive
        with pytest.raises(locks.Locked, match=r"stale lock.*that agent is gone"), \
                locks.hold(store, "staging", "deploy", "bob"):
            pass
        assert [h.holder for h in locks.clear_abandoned(store, "agent")] == ["alice"]
        assert locks.current(store, "staging") is None
    [entry] = ledger.entries(store, actions=("unlock",))
    assert entry.payload["holder_alive"] is False and "interrupted" in entry.payload["reason"]


def test_a_lock_whose_caller_died_before_handing_over_is_not_cleared_by_an_agent(store: Store) -> None:
    pid, started = dead_process()
    with store.begin() as conn:  # as a CLI killed while building leaves it
        conn.execute(insert(t.locks).values(environment="staging", holder="alice", operation="deploy",
                                            host=socket.gethostname(), pid=pid, proc_start=started, since=0.0,
                                            token="t"))
    assert locks.clear_abandoned(store, "agent") == []
    held = locks.current(store, "staging")
    assert held is not None and not held.alive and not held.in_agent
    with pytest.raises(locks.Locked, match="ingot unlock --env staging"), locks.hold(store, "staging", "deploy", "b"):
        pass
