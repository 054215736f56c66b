"""`ingot serve` and `ingot token`: the agent with its HTTP API and dashboard, and the API's token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ingot import ledger
from ingot.actor import current_actor
from ingot.cli.output import console
from ingot.spec.models import split_listen

token_app = typer.Typer(help="The bearer tokens of the HTTP API (ingot serve): the default one, named ones with "
                        "scopes.", no_args_is_help=True)


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
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM, "
                                                  "chain included); needs --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The private key of --tls-cert (PEM).")] = None,
    max_body: Annotated[str, typer.Option("--max-body", help="Largest request body the API reads (413 past it), "
                                          "e.g. 1MiB, 64KiB.")] = "1MiB",
    auth_delay: Annotated[str, typer.Option("--auth-delay", help="Most a failed authentication is delayed (it "
                                            "doubles from 0.1 s per failure in a row from one address; 0: "
                                            "none).")] = "5s",
) -> None:
    """Run the agent in the foreground with the HTTP API (OpenAPI at /openapi.json, reference at /docs) and the
    dashboard."""
    from ingot.api.guard import Backoff
    from ingot.api.server import ServeOptions, check_tls, is_loopback, serve
    from ingot.cli.main import _global, guarded, project_for, spec_path
    from ingot.errors import UserInputError
    from ingot.spec.durations import parse_duration
    from ingot.tokens import ensure_some_token, token_path

    def address() -> tuple[str, int]:
        try:
            return split_listen(listen)
        except ValueError as exc:
            raise UserInputError(f"--listen {listen}: {exc}") from exc

    def options() -> ServeOptions:
        check_tls(tls_cert, tls_key)
        try:
            delay = parse_duration(auth_delay) if auth_delay.strip() not in ("0", "") else 0.0
        except ValueError as exc:
            raise UserInputError(f"--auth-delay {auth_delay}: {exc}") from None
        return ServeOptions(tls_cert=tls_cert, tls_key=tls_key, max_body=parse_size(max_body, "--max-body"),
                            backoff=Backoff(ceiling=delay))

    host, port = guarded(address)
    served = guarded(options)
    project = project_for(file)
    ensure_some_token(project.paths.keys)
    watchers = []
    if watch:
        from ingot.gitops import Watcher

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
    scheme = "https" if served.tls else "http"
    console.print(f"ingot serving {project.spec.project} on {scheme}://{shown}:{port}/ (API: /api/v1, "
                  f"OpenAPI: /openapi.json, reference: /docs, metrics: /metrics)", markup=False)
    console.print(f"the API token is in {token_path(project.paths.keys)} ('ingot token show' prints it)",
                  markup=False)
    if not served.tls and not is_loopback(host):
        console.print(f"warning: {host}:{port} can be reached from other machines and TLS is off: tokens and "
                      "everything the API answers cross the network in clear. Pass --tls-cert and --tls-key, or "
                      "listen on 127.0.0.1 behind a proxy that terminates TLS.", markup=False, style="yellow")
    for found in watchers:
        console.print(f"watching {found.branch} of {found.url} for {found.environment} every "
                      f"{found.interval:g}s", markup=False)
    guarded(lambda: serve(spec_path(file), _global["state"], (host, port), watchers, served))


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str, flag: str) -> int:
    """`1MiB`, `64KiB`, `500kB`, `1048576` -> bytes."""
    from ingot.errors import UserInputError

    raw = text.strip().lower()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):].strip()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise UserInputError(f"{flag} {text}: expected a size such as 1MiB, 64KiB or 1048576 (bytes)")
    return int(value * _UNITS[unit])


@token_app.command("show")
def token_show(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
) -> None:
    """Print the API token (made now if there is none yet)."""
    from ingot.cli.main import project_for
    from ingot.tokens import load_or_create_token

    typer.echo(load_or_create_token(project_for(file).paths.keys))


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="Who holds it: recorded as the actor of what it does.")],
    scope: Annotated[str, typer.Option("--scope", help="read (reads only), deploy (reads and every action) or "
                                       "admin (all).")] = "read",
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
) -> None:
    """Make a named token and print it, once: only its hash is kept (recorded in the ledger)."""
    from ingot.cli.main import guarded, project_for
    from ingot.tokens import add_token

    project = project_for(file)
    secret = guarded(lambda: add_token(project.paths.keys, name, scope))
    ledger.record(project.store, actor=current_actor(), action="token.add", payload={"name": name, "scope": scope})
    typer.echo(secret)


@token_app.command("list")
def token_list(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The API's tokens: name, scope, when made (never the secrets)."""
    import json

    from ingot.cli.main import guarded, project_for
    from ingot.tokens import list_tokens

    found = guarded(lambda: list_tokens(project_for(file).paths.keys))
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "scope": t.scope, "created": t.created} for t in found], indent=2))
        return
    for t in found:
        console.print(f"{t.name:24} {t.scope:7} {t.created}", markup=False)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name ('default' for the one 'token show' prints).")],
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (default ./ingot.yaml).")] = None,
) -> None:
    """Remove a token; it stops working at once (recorded in the ledger)."""
    from ingot.cli.main import guarded, project_for
    from ingot.tokens import revoke_token

    project = project_for(file)
    guarded(lambda: revoke_token(project.paths.keys, name))
    ledger.record(project.store, actor=current_actor(), action="token.revoke", payload={"name": name})
    console.print(f"token {name} revoked", markup=False)


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
