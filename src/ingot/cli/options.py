"""The options most commands share, declared once for every command module."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

SpecFile = Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")]
Env = Annotated[str | None, typer.Option("--env", "-e", help="Environment (default: the spec's first).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def main_module() -> ModuleType:
    """ingot.cli.main, imported when a command runs: it registers the command modules' apps, so they
    cannot import it at their top."""
    from ingot.cli import main

    return main
