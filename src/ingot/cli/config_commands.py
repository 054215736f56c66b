"""`ingot config` and `ingot secret`: a thin layer over `ingot.config_ops`.

A secret's value is never taken from the command line (it would land in shell history and in `ps`):
it is read from stdin, from --from-file, or from a hidden prompt. Nothing here ever prints one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ingot import config_ops
from ingot.cli.options import AsJson, Env, SpecFile, local_project, main_module
from ingot.cli.output import console, print_json, when
from ingot.config_store import ConfigEntry, SecretEntry
from ingot.errors import UserInputError
from ingot.project import Project

config_app = typer.Typer(help="Config values per environment: versioned, snapshotted into each release.",
                         no_args_is_help=True)
secret_app = typer.Typer(help="Secrets per environment: encrypted at rest, passed to instances, never shown.",
                         no_args_is_help=True)





def _target(file: Path | None, env: str | None) -> tuple[Project, str]:
    cli = main_module()
    project = local_project(file, "ingot config and ingot secret work")
    environment: str = cli.guarded(lambda: project.environment(cli.env_name(env)))
    return project, environment


# ---- config --------------------------------------------------------------------------------------
@config_app.command("set")
def config_set(assignments: Annotated[list[str], typer.Argument(
                   help="KEY=VALUE pairs (several at once, set together), or KEY VALUE. Config is not "
                        "secret: use 'ingot secret set' for secrets.", metavar="KEY=VALUE...")],
               file: SpecFile = None, env: Env = None) -> None:
    """Set config values in an environment: a new version each; the next deploy makes a release with them."""
    cli = main_module()
    pairs = cli.guarded(lambda: config_ops.parse_assignments(assignments))
    project, environment = _target(file, env)
    entries = cli.guarded(lambda: config_ops.set_configs(project, environment, pairs))
    for entry in entries:
        console.print(f"{environment}: {entry.key} version {entry.version} set", markup=False)
    console.print("services listing them get them as a new release on their next deploy", markup=False)


@config_app.command("unset")
@config_app.command("rm", hidden=True)  # the same word as 'ingot secret rm'
def config_unset(key: Annotated[str, typer.Argument(help="Variable name.")],
                 file: SpecFile = None, env: Env = None) -> None:
    """Remove a config value: a new version; services listing it are refused a deploy until it is set again."""
    project, environment = _target(file, env)
    entry = main_module().guarded(lambda: config_ops.unset_config(project, environment, key))
    console.print(f"{environment}: {entry.key} unset (version {entry.version}); a deploy of a service listing "
                  "it is refused until it is set again; earlier releases keep their value for rollback",
                  markup=False)


@config_app.command("get")
def config_get(key: Annotated[str, typer.Argument(help="Variable name.")],
               file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Print a config value (the newest version) of an environment."""
    project, environment = _target(file, env)
    entry = main_module().guarded(lambda: config_ops.get_config(project, environment, key))
    if as_json:
        print_json(entry.as_dict())
        return
    sys.stdout.write(entry.value + "\n")


@config_app.command("list")
def config_list(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Every config key of an environment with its newest value, version, who and when."""
    project, environment = _target(file, env)
    entries = main_module().guarded(lambda: config_ops.list_config(project, environment))
    _print_config(entries, as_json, f"no config values in {environment} yet")


@config_app.command("history")
def config_history(key: Annotated[str | None, typer.Argument(help="Only this key.")] = None,
                   file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Every version of the config values of an environment (or of one key), newest first."""
    project, environment = _target(file, env)
    entries = main_module().guarded(lambda: config_ops.config_history(project, environment, key))
    _print_config(entries, as_json, f"no config versions in {environment}" + (f" for {key}" if key else ""))


@config_app.command("diff")
def config_diff(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """What changed in the environment's config source (etcd) since the live release of each service."""
    project, environment = _target(file, env)
    report = main_module().guarded(lambda: config_ops.source_diff(project, environment))
    if as_json:
        print_json(report)
        return
    source = report["source"]
    console.print(f"{environment}: {source['kind']} ({', '.join(source['endpoints'])}) prefix {source['prefix']} "
                  f"at revision {source['revision']}", markup=False)
    table = Table(show_edge=False)
    for column in ("service", "key", "change", "live release", "source now"):
        table.add_column(column, overflow="fold")
    for row in report["services"]:
        for change in row["changes"]:
            if change["status"] != "unchanged":
                table.add_row(row["service"], change["key"], change["status"], _shown(change["live"]),
                              _shown(change["source"]))
        for secret in row["secrets_in_source"]:
            table.add_row(row["service"], secret, "secret in source (refused)", "-", "-")
        made = f" (made at revision {row['release_revision']})" if row["release_revision"] is not None else ""
        console.print(f"{row['service']}: live release {row['release'] or '(none)'}{made}", markup=False)
    if table.row_count:
        console.print(table)
    else:
        console.print("no source keys changed since the live releases")


def _shown(value: str | None) -> str:
    return "(absent)" if value is None else value


def _print_config(entries: list[ConfigEntry], as_json: bool, empty: str) -> None:
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    if not entries:
        console.print(empty)
        return
    table = Table(show_edge=False)
    for column in ("key", "value", "version", "who", "when"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e.key, "(unset)" if e.removed else e.value, str(e.version), e.actor, when(e.at))
    console.print(table)


# ---- secrets -------------------------------------------------------------------------------------
@secret_app.command("set")
def secret_set(name: Annotated[str, typer.Argument(help="Variable name, e.g. API_KEY.")],
               from_file: Annotated[Path | None, typer.Option("--from-file", help="Read the value from this "
                                                              "file (one trailing newline is dropped).")] = None,
               file: SpecFile = None, env: Env = None) -> None:
    """Set a secret in an environment, from stdin, --from-file or a hidden prompt (never an argument)."""
    project, environment = _target(file, env)
    cli = main_module()
    value = cli.guarded(lambda: _read_secret(name, from_file))
    entry = cli.guarded(lambda: config_ops.set_secret(project, environment, name, value))
    console.print(f"{environment}: secret {entry.name} version {entry.version} set (encrypted with key "
                  f"{entry.key_id}); services listing it get it as a new release on their next deploy",
                  markup=False)


def _read_secret(name: str, from_file: Path | None) -> str:
    if from_file is not None:
        try:
            raw = from_file.read_bytes()
        except OSError as exc:
            raise UserInputError(f"--from-file {from_file}: cannot read it: {exc.strerror}") from None
        source = f"--from-file {from_file}"
    elif not sys.stdin.isatty():
        raw = sys.stdin.buffer.read()
        source = "stdin"
    else:
        return str(typer.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True, err=True))
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UserInputError(f"the value from {source} is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


@secret_app.command("list")
def secret_list(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Every secret of an environment: name, newest version, set or removed, who and when (never a value)."""
    project, environment = _target(file, env)
    entries = main_module().guarded(lambda: config_ops.list_secrets(project, environment))
    _print_secrets(entries, as_json, f"no secrets in {environment} yet")


@secret_app.command("history")
def secret_history(name: Annotated[str | None, typer.Argument(help="Only this secret.")] = None,
                   file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Every version and removal of the secrets of an environment (or of one), newest first."""
    project, environment = _target(file, env)
    entries = main_module().guarded(lambda: config_ops.secret_history(project, environment, name))
    _print_secrets(entries, as_json, f"no secret versions in {environment}" + (f" for {name}" if name else ""))


@secret_app.command("rm")
@secret_app.command("unset", hidden=True)  # the same word as 'ingot config unset'
def secret_rm(name: Annotated[str, typer.Argument(help="Secret name.")],
              file: SpecFile = None, env: Env = None) -> None:
    """Remove a secret: new releases can no longer use it; releases made before keep their version."""
    project, environment = _target(file, env)
    entry = main_module().guarded(lambda: config_ops.remove_secret(project, environment, name))
    console.print(f"{environment}: secret {entry.name} removed (version {entry.version}); a deploy of a service "
                  "listing it is refused until it is set again; earlier releases keep their version for "
                  "rollback", markup=False)


def _print_secrets(entries: list[SecretEntry], as_json: bool, empty: str) -> None:
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    if not entries:
        console.print(empty)
        return
    table = Table(show_edge=False)
    for column in ("name", "version", "state", "who", "when"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.name, str(e.version), "removed" if e.removed else "set", e.actor, when(e.at))
    console.print(table)
