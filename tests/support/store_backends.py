"""The store's tests run against both backends: SQLite (the default) and a real PostgreSQL server.

`backend` is parametrised: for "postgresql" it points $INGOT_DATABASE_URL at a fresh database of the session's
server (`pg_server`, started once), so every `Store(...)` the test opens, and every ingot process it starts,
uses it; that database has ingot's schema already (`migrated_database`), so the migrations themselves are
tested where a test opens a database of its own. The fixtures are registered for every test by
tests/conftest.py (`pytest_plugins`), so that one server serves the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Connection, text

from ingot.store.db import DATABASE_URL_ENV
from tests.support.postgres import PostgresServer, running_server

BACKENDS = ["sqlite", "postgresql"]


@dataclass(frozen=True)
class Backend:
    name: str
    url: str | None = None  # the PostgreSQL database's URL
    server: PostgresServer | None = None
    database: str | None = None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with running_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        return Backend("sqlite")
    server: PostgresServer = request.getfixturevalue("pg_server")
    database = server.migrated_database()
    url = server.url(database)
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    return Backend("postgresql", url, server, database)


def drop_trigger(conn: Connection, table: str, kind: str) -> None:
    """What someone with the database's owner rights does to go around an insert-only table's guard."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"DROP TRIGGER {table}_{kind} ON {table}"))
        conn.execute(text(f"GRANT UPDATE, DELETE ON {table} TO CURRENT_USER"))
    else:
        conn.execute(text(f"DROP TRIGGER {table}_{kind}"))
