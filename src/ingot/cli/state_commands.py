"""`ingot state migrate`: move a state's store from its SQLite file into a shared PostgreSQL database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ingot.cli.options import SpecFile, main_module

state_app = typer.Typer(help="The state store itself.", no_args_is_help=True)


@state_app.command("migrate")
def migrate_command(
    to: Annotated[str, typer.Option("--to", help="The PostgreSQL database to copy the state into "
                                    "(postgresql://USER[:PASSWORD]@HOST[:PORT]/DB); it must be empty.")],
    file: SpecFile = None,
) -> None:
    """Copy this state's SQLite store (every table, ids, the ledger's chain and signatures) into PostgreSQL."""
    from ingot.actor import current_actor
    from ingot.cli.output import console, errors
    from ingot.store import Store
    from ingot.store.copy import copy_state
    from ingot.store.db import DATABASE_URL_ENV, check_url, shown

    cli = main_module()
    cli.guarded(lambda: check_url(to, "--to"))
    state: Path | None = cli._global["state"]
    root = state.resolve() if state is not None else cli.project_for(file).paths.root
    if not (root / "state.db").exists():
        errors.print(f"error: no SQLite state in {root} (no state.db): nothing to copy; give --state or -f",
                     markup=False)
        raise typer.Exit(2)
    from ingot.agent.client import AgentClient
    from ingot.paths import StatePaths

    agent = AgentClient(StatePaths(root))
    if agent.alive():
        errors.print(f"error: the agent for {root} runs (pid {agent.pinged.get('pid')}): it would go on writing to "
                     "the SQLite store during and after the copy; stop it first ('ingot down')", markup=False)
        raise typer.Exit(2)
    source = cli.guarded(lambda: Store(root, local=True))
    try:
        target = cli.guarded(lambda: Store(root, url=to))
        try:
            report = cli.guarded(lambda: copy_state(source, target, record=current_actor()))
        finally:
            target.close()
    finally:
        source.close()
    for table, count in report.rows.items():
        console.print(f"  {table:<18} {count:>8} rows", markup=False)
    console.print(f"copied {root / 'state.db'} into {shown(to)}: ledger up to entry {report.ledger_head}, "
                  "chain and signatures as they were (and the copy recorded as the next entry)", markup=False)
    console.print(f"next: set {DATABASE_URL_ENV} (or --database-url) for every ingot that uses this state; keep "
                  f"{root / 'keys'} (signing and secrets keys) with it on every host; 'ingot audit verify' checks "
                  "the copy", markup=False)
