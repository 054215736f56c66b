"""`ingot scale SERVICE N` and `ingot restart SERVICE`: the live release, without a new one (ingot.plan.scale)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ingot import operations
from ingot.cli.options import AsJson, Env, SpecFile, main_module
from ingot.cli.output import console, print_json

ServiceName = Annotated[str, typer.Argument(help="The service.", show_default=False)]
Batch = Annotated[int | None, typer.Option("--batch", min=1, help="Instances started (scale) or replaced "
                                           "(restart) at a time; default 10 for scale, the strategy's "
                                           "max_surge for restart.")]


def scale_command(service: ServiceName,
                  replicas: Annotated[int, typer.Argument(help="Instances wanted.", show_default=False)],
                  file: SpecFile = None, env: Env = None, batch: Batch = None, as_json: AsJson = False) -> None:
    """Run N instances of the live release: fresh ones through the health gate before they join, or the excess
    drained and stopped. No new release; later deploys keep N while the spec's replicas stay unchanged."""
    cli = main_module()
    began = time.monotonic()
    remote = cli.remote_server()
    if remote is not None:
        outcome = cli.followed(remote, as_json, lambda progress, started: remote.scale(
            cli.env_name(env), service, replicas, batch, progress, started))[0]
    else:
        project = cli.project_for(file)
        environment = cli.guarded(lambda: project.environment(cli.env_name(env)))
        outcome = cli.handed_over(project, lambda progress: operations.scale(
            project, environment, service, replicas, batch=batch, on_event=None if as_json else progress.event))
    seconds = round(time.monotonic() - began, 2)
    if as_json:
        print_json({**outcome.as_dict(), "replicas": replicas, "seconds": seconds})
    elif outcome.nothing_changed:
        console.print(f"{service}: already {replicas} instance(s) of release {outcome.release}", markup=False)
    else:
        console.print(f"{service}: {replicas} instance(s) of release {outcome.release} serve {outcome.url} "
                      f"({seconds:g}s)", markup=False)


def restart_command(service: ServiceName, file: SpecFile = None, env: Env = None, batch: Batch = None,
                    as_json: AsJson = False) -> None:
    """Replace every instance of the live release with a fresh one, rolling: each batch passes the health gate
    and joins the pool before as many old ones drain and stop. A failed gate leaves the old ones serving."""
    cli = main_module()
    began = time.monotonic()
    remote = cli.remote_server()
    if remote is not None:
        outcome = cli.followed(remote, as_json, lambda progress, started: remote.restart(
            cli.env_name(env), service, batch, progress, started))[0]
    else:
        project = cli.project_for(file)
        environment = cli.guarded(lambda: project.environment(cli.env_name(env)))
        outcome = cli.handed_over(project, lambda progress: operations.restart(
            project, environment, service, batch=batch, on_event=None if as_json else progress.event))
    seconds = round(time.monotonic() - began, 2)
    if as_json:
        print_json({**outcome.as_dict(), "seconds": seconds})
    else:
        console.print(f"{service}: restarted: fresh instances of release {outcome.release} serve {outcome.url} "
                      f"({seconds:g}s)", markup=False)
