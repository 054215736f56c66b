"""Copying a state store into another database (`ingot state migrate --to postgresql://...`).

Every table is copied row for row, ids kept, in the order of its key (the ledger by `seq`), in one
transaction on the target: a copy interrupted half-way leaves nothing (the target stays empty and the copy
can be run again). Nothing is recomputed: the ledger's hashes and signatures and the releases' signatures
are the source's own bytes, so `ingot audit verify` on the copy checks what was signed. The target must be
empty (refused otherwise: two histories cannot be merged into one chain). The source is only read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Table, func, select, text

from ingot import ledger
from ingot.errors import UserInputError
from ingot.store import schema as t
from ingot.store.db import transaction
from ingot.store.repo import Store

_BATCH = 2_000


@dataclass(frozen=True)
class CopyReport:
    target: str  # the target as it may be printed (a URL's password masked)
    rows: dict[str, int]  # table -> rows copied
    ledger_head: int  # the newest ledger entry copied (0: none)


def data_tables() -> list[Table]:
    """Every table with state, in the order they are created (the schema's version is the target's own)."""
    return [table for name, table in t.metadata.tables.items() if name != "schema_version"]


def non_empty(conn: Connection) -> dict[str, int]:
    """The tables of `conn`'s database that hold rows: name -> count."""
    counts = {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
              for table in data_tables()}
    return {name: count for name, count in counts.items() if count}


def copy_state(source: Store, target: Store, record: str | None = None) -> CopyReport:
    """Copy every row of `source` into `target`, which must be empty; with `record` (an actor), the copy is
    recorded in the target's ledger as its next entry, signed as any other (the chain goes on unbroken)."""
    if source.engine.url == target.engine.url:
        raise UserInputError(f"the target {target.where} is the source itself")
    rows: dict[str, int] = {}
    # A write transaction on the target: no other ingot writes to it until the copy is committed, so the
    # emptiness checked here is still true when the rows land.
    with source.engine.connect() as reading, transaction(target.engine) as writing:
        taken = non_empty(writing)
        if taken:
            held = ", ".join(f"{name} ({count} rows)" for name, count in sorted(taken.items()))
            raise UserInputError(f"the target {target.where} is not empty: {held}",
                                 details=["ingot copies a state only into an empty database (two histories "
                                          "cannot be merged into one chain); give a new database"])
        for table in data_tables():
            order = [column for column in table.primary_key.columns]
            copied = 0
            result = reading.execute(select(table).order_by(*order))
            for batch in result.partitions(_BATCH):
                writing.execute(table.insert(), [dict(row._mapping) for row in batch])
                copied += len(batch)
            rows[table.name] = copied
            _advance_sequences(writing, table)
        head = writing.execute(select(func.max(t.ledger.c.seq))).scalar()
        if record is not None:
            ledger.append(writing, actor=record, action="state.migrate",
                          payload={"from": source.where, "rows": rows, "source_head": int(head or 0)})
    return CopyReport(target.where, rows, int(head or 0))


def _advance_sequences(conn: Connection, table: Table) -> None:
    """Rows copied with their ids leave a PostgreSQL serial behind them: set it past the last id, so the next
    insert gets the next id (as SQLite's rowid would)."""
    if conn.dialect.name != "postgresql":
        return
    for column in table.primary_key.columns:
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:table, :column)"),
                                {"table": table.name, "column": column.name}).scalar()
        if sequence:  # (None: not a serial column, e.g. the ledger's seq, which ingot numbers itself)
            conn.execute(text(f"SELECT setval(:sequence, (SELECT COALESCE(MAX({column.name}), 0) + 1 "
                              f"FROM {table.name}), false)"), {"sequence": sequence})
