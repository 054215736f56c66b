"""`ingot edge` (the machine's data plane) and `ingot install` (systemd units for both planes)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from ingot.cli.options import SpecFile
from ingot.cli.output import console, errors, print_json

edge_app = typer.Typer(help="The edge: this machine's data plane, serving every project's routers.",
                       no_args_is_help=True)


@edge_app.command("status")
def edge_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every router the edge serves: project, environment, service, address, kind, weights and pools."""
    from ingot.cli.main import guarded
    from ingot.edge.client import call_sync, edge_alive
    from ingot.edge.home import EdgeHome

    home = EdgeHome.default()
    if not edge_alive(home):
        if as_json:
            print_json({"running": False, "home": str(home.root), "routes": []})
        else:
            console.print(f"the edge is not running ({home.root}); deploys start it on demand")
        return
    listing = guarded(lambda: call_sync(home, "list"))
    if as_json:
        print_json({"running": True, **listing})
        return
    console.print(f"edge pid {listing['pid']} ({listing['home']}), {len(listing['routes'])} router(s)", markup=False)
    front = listing.get("front")
    if front:
        console.print(f"shared listeners ({front['kind']}): http {front['http']}, https {front['https']}", markup=False)
    for route in listing["routes"]:
        weights = ", ".join(f"{r} {w}" for r, w in route["weights"].items()) or "no release"
        where = "shared" if route["listen"] == ":0" else route["listen"]
        console.print(f"  {where}  {route['kind']:<8} {route['name']}  {weights}"
                      + ("" if route["serving"] else "  [not serving: see the edge's log]")
                      + ("  [maintenance: 503]" if route.get("maintenance") else ""), markup=False)
        for served in route.get("routes") or []:
            scheme = "http" if served["tls"] == "off" else "https"
            console.print(f"    {scheme}://{served['host']}{served['path']}  certificate: {served['certificate']}",
                          markup=False)


def install_command(
    file: SpecFile = None,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir", help="Write the units here instead of "
                                                  "/etc/systemd/system, and do not touch systemd.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the units; write nothing.")] = False,
) -> None:
    """Install systemd units that keep this project's agent and the machine's edge running (restart on failure).

    Without systemd, ingot's own supervisor does the same job: agents and the edge it starts on demand are
    started again within a second when they die.
    """
    from ingot.cli.main import guarded, project_for
    from ingot.edge.home import EdgeHome
    from ingot.edge.units import agent_unit, edge_unit, systemd_runs

    project = project_for(file)
    home = EdgeHome.default()
    units = [edge_unit(home), agent_unit(project.spec.project, project.paths.root, home,
                                                 spec=project.spec.path.resolve())]
    if dry_run:
        for unit in units:
            console.print(f"# {unit.name}", markup=False)
            console.print(unit.text, markup=False)
        return
    live = unit_dir is None
    if live and not systemd_runs():
        errors.print("systemd is not running on this machine: nothing to install. ingot's own supervisor "
                     "keeps the agent and the edge up (each is started again within a second when it dies); "
                     "use --unit-dir DIR to write the units for another machine, or --dry-run to see them")
        raise typer.Exit(1)
    target = unit_dir or Path("/etc/systemd/system")
    guarded(lambda: target.mkdir(parents=True, exist_ok=True))
    for unit in units:
        (target / unit.name).write_text(unit.text)
        console.print(f"wrote {target / unit.name}")
    if live:
        for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *[u.name for u in units]]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                errors.print(f"`{' '.join(command)}` failed: {done.stderr.strip()}", markup=False)
                raise typer.Exit(1)
        console.print("enabled and started; an agent already running on demand keeps running until it "
                      "stops (`ingot agent` then reports the systemd one)")
