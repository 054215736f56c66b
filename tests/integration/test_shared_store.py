"""The shared store for real: a SQLite state deployed, copied into PostgreSQL with `ingot state migrate`,
verified there and deployed on from there; two ingot hosts (network namespaces) on one PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from ingot import ledger
from ingot.store import Store
from ingot.store.copy import data_tables
from ingot.store.db import DATABASE_URL_ENV
from tests.support.harness import ExampleProject, poll
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def _rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    with store.engine.connect() as conn:
        return {table.name: [dict(r._mapping) for r in conn.execute(
            select(table).order_by(*table.primary_key.columns))] for table in data_tables()}


def _agent_gone(example: ExampleProject) -> bool:
    from ingot.agent.client import AgentClient
    from ingot.paths import StatePaths

    return not AgentClient(StatePaths(example.state)).alive()


def test_a_sqlite_state_moves_to_postgresql_with_its_chain_and_goes_on_there(
        example: ExampleProject, pg_server: PostgresServer) -> None:
    example.ingot("deploy", check=True)
    database = pg_server.new_database()
    url = pg_server.url(database)
    refused = example.ingot("state", "migrate", "--to", url)
    assert refused.code == 2 and "the agent for" in refused.err and "ingot down" in refused.err
    example.ingot("down", check=True)
    poll(lambda: _agent_gone(example), timeout=30, what="the agent to stop after down")
    sqlite = Store(example.state, local=True)
    before = _rows(sqlite)
    sqlite.close()

    moved = example.ingot("state", "migrate", "--to", url, check=True)
    assert f"ledger up to entry {len(before['ledger'])}" in moved.out
    shared = Store(example.state, url=url)
    after = _rows(shared)
    # Every row of every table, ids and all, as it was; the ledger has one more entry: the copy itself.
    assert {name: rows for name, rows in after.items() if name != "ledger"} == \
        {name: rows for name, rows in before.items() if name != "ledger"}
    assert after["ledger"][:-1] == before["ledger"] and after["ledger"][-1]["action"] == "state.migrate"
    assert all(entry["signature"] for entry in after["ledger"])

    example.env[DATABASE_URL_ENV] = url
    verified = example.ingot("audit", "verify", check=True)
    assert "ledger intact" in verified.out
    history = example.ingot("history", check=True)
    assert "deploy" in history.out
    # Into a store that holds anything: refused, nothing written.
    again = example.ingot("state", "migrate", "--to", url)
    assert again.code == 2 and "is not empty" in again.err and "Traceback" not in again.err
    assert len(ledger.entries(shared)) == len(after["ledger"])

    # And ingot goes on there: a deploy (its agent on PostgreSQL), the chain still one and signed.
    example.set_version("2")
    example.ingot("deploy", check=True)
    assert example.get()["version"] == "2"
    example.ingot("audit", "verify", check=True)
    deploys = [e for e in ledger.entries(shared) if e.action == "deploy.finish"]
    assert len(deploys) >= 2
    # A command without the URL meets an agent that keeps the state in PostgreSQL: refused, not split in two.
    mixed = example.ingot("deploy", extra_env={DATABASE_URL_ENV: ""})
    assert mixed.code == 1 and f"keeps its state in {url}" in mixed.err, mixed.err
    shared.close()
