"""`ingot volume ls | rm`: a thin layer over `ingot.volumes`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ingot import volumes
from ingot.actor import current_actor
from ingot.cli.options import AsJson, Env, SpecFile, local_project, main_module
from ingot.cli.output import console, print_json
from ingot.project import Project

volume_app = typer.Typer(help="Named volumes: persistent per environment, kept across deploys and rollbacks.",
                         no_args_is_help=True)





def _project(file: Path | None) -> Project:
    return local_project(file, "ingot volume works")


@volume_app.command("ls")
def volume_ls(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """The volumes of every environment (or one): where each is, which services declare it, what uses it."""
    cli = main_module()
    project = _project(file)
    environment = cli.env_name(env)
    if environment is not None:
        environment = cli.guarded(lambda: project.environment(environment))
    found = cli.guarded(lambda: volumes.list_volumes(project, environment))
    if as_json:
        print_json([v.as_dict() for v in found])
        return
    if not found:
        console.print("no volumes: a service declares them with volumes: {NAME: /path/in/instance}", markup=False)
        return
    table = Table(box=None)
    for column in ("environment", "volume", "runtime", "services", "used by", "location"):
        table.add_column(column)
    for v in found:
        state = "" if v.exists else (" (not made yet)" if v.exists is False else " (engine not reachable)")
        table.add_row(v.environment, v.name, v.runtime, ", ".join(v.services) or "- (not declared)",
                      ", ".join(v.used_by) or "-", v.location + state)
    console.print(table)


@volume_app.command("rm")
def volume_rm(name: Annotated[str, typer.Argument(help="The volume's name.")], file: SpecFile = None,
              env: Env = None) -> None:
    """Delete a volume and its data; refused while a live release uses it."""
    cli = main_module()
    project = _project(file)
    environment = cli.guarded(lambda: project.environment(cli.env_name(env)))
    info = cli.guarded(lambda: volumes.remove_volume(project, environment, name, current_actor()))
    console.print(f"{environment}: volume {name} removed ({info.location})", markup=False)
