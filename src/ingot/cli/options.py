"""The options most commands share, declared once for every command module."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ingot.project import Project

SpecFile = Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")]
Env = Annotated[str | None, typer.Option("--env", "-e", help="Environment (default: the spec's first).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def main_module() -> ModuleType:
    """ingot.cli.main, imported when a command runs: it registers the command modules' apps, so they
    cannot import it at their top."""
    from ingot.cli import main

    return main


def local_project(file: Path | None, what: str) -> Project:
    """The spec's project, for a command (`what`, e.g. "ingot volume works") that reads and writes this
    machine's state directly: refused with exit 2 under --server, which could only reach it through an API."""
    from ingot.cli.output import errors

    cli = main_module()
    if cli._global.get("server"):
        errors.print(f"error: {what} on the local state only; run the command where the state is "
                     "(without --server)",
                     markup=False)
        raise typer.Exit(2)
    project: Project = cli.project_for(file)
    return project
