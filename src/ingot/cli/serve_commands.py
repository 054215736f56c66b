"""`ingot serve` and `ingot token`: the agent with its HTTP API and dashboard, and the API's token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ingot import ledger
from ingot.actor import current_actor
from ingot.cli.output import console
from ingot.spec.models import split_listen

token_app = typer.Typer(help="The bearer token of the HTTP API (ingot serve).", no_args_is_help=True)


def serve_command(
    listen: Annotated[str, typer.Option("--listen", help="Address of the API and dashboard.")] = "127.0.0.1:7070",
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
    watch: Annotated[str | None, typer.Option("--watch", help="Also follow this git repository (GitOps), as "
                                              "'ingot watch' does.")] = None,
    branch: Annotated[str, typer.Option("--branch", "-b", help="With --watch: the branch to follow.")] = "main",
    watch_env: Annotated[str | None, typer.Option("--watch-env", help="With --watch: the environment it "
                                                  "deploys to (default: the spec's first).")] = None,
    interval: Annotated[str, typer.Option("--interval", help="With --watch: time between fetches.")] = "10s",
    path: Annotated[str, typer.Option("--path", help="With --watch: the spec's path in the repo.")] = "ingot.yaml",
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Keep a signed checkpoint of the ledger in this file, updated as the ledger grows "
        "(keep it outside the state: 'ingot audit verify --checkpoint FILE' tells a ledger cut since).")] = None,
) -> None:
    """Run the agent in the foreground with the HTTP API (OpenAPI at /openapi.json) and the dashboard."""
    from ingot.api.server import serve
    from ingot.cli.main import _global, guarded, project_for, spec_path
    from ingot.errors import UserInputError
    from ingot.tokens import load_or_create_token, token_path

    def address() -> tuple[str, int]:
        try:
            return split_listen(listen)
        except ValueError as exc:
            raise UserInputError(f"--listen {listen}: {exc}") from exc

    host, port = guarded(address)
    project = project_for(file)
    load_or_create_token(project.paths.keys)
    watchers = []
    if watch:
        from ingot.gitops import Watcher
        from ingot.spec.durations import parse_duration

        def watcher() -> Watcher:
            try:
                seconds = parse_duration(interval)
            except ValueError as exc:
                raise UserInputError(f"--interval {interval}: {exc}") from None
            found = Watcher(watch, branch, project.environment(watch_env), project.paths, spec_path=path,
                            interval=seconds)
            found.check()
            return found

        watchers.append(guarded(watcher))
    if checkpoint is not None:
        import os

        from ingot.agent.server import CHECKPOINT_ENV

        os.environ[CHECKPOINT_ENV] = str(checkpoint.resolve())  # the agent, run below, keeps it
        console.print(f"keeping a signed checkpoint of the ledger in {checkpoint}", markup=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"ingot serving {project.spec.project} on http://{shown}:{port}/ (API: /api/v1, "
                  f"OpenAPI: /openapi.json, metrics: /metrics)", markup=False)
    console.print(f"the API token is in {token_path(project.paths.keys)} ('ingot token show' prints it)",
                  markup=False)
    for found in watchers:
        console.print(f"watching {found.branch} of {found.url} for {found.environment} every "
                      f"{found.interval:g}s", markup=False)
    guarded(lambda: serve(spec_path(file), _global["state"], (host, port), watchers))


@token_app.command("show")
def token_show(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
) -> None:
    """Print the API token (made now if there is none yet)."""
    from ingot.cli.main import project_for
    from ingot.tokens import load_or_create_token

    typer.echo(load_or_create_token(project_for(file).paths.keys))


@token_app.command("rotate")
def token_rotate(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
) -> None:
    """Replace the API token; the old one stops working at once (recorded in the ledger)."""
    from ingot.cli.main import project_for
    from ingot.tokens import rotate_token, token_path

    project = project_for(file)
    rotate_token(project.paths.keys)
    ledger.record(project.store, actor=current_actor(), action="token.rotate", payload={})
    console.print(f"new API token written to {token_path(project.paths.keys)}; the old one no longer works",
                  markup=False)
