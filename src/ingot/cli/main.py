"""The `ingot` command line: a thin layer over `ingot.operations`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from ingot import __version__, build_release, ledger, operations, views
from ingot.cli.options import AsJson, Env, SpecFile
from ingot.cli.output import Progress, console, errors, pinned_note, print_json, short, when
from ingot.deploy_text import deploy_outcomes_text, verifying_text
from ingot.diskspace import disk_full_error, is_disk_full
from ingot.errors import IngotError, UserInputError
from ingot.paths import private_umask
from ingot.project import Project, open_project
from ingot.store.db import DATABASE_URL_ENV, check_url, store_error

if TYPE_CHECKING:
    from ingot.remote import Remote

app = typer.Typer(
    name="ingot",
    help="Immutable infrastructure: build signed releases, deploy them by replacement, roll back instantly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="The tamper-evident ledger.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

Service = Annotated[str | None, typer.Option("--service", "-s", help="Only this service.")]

# Options given before the command (`ingot -f x.yaml --env prod deploy`) apply when the command's own
# options are not given, so both orders work.
_global: dict[str, Any] = {"state": None, "file": None, "env": None, "server": None, "token_file": None}
T = TypeVar("T")


@app.callback(invoke_without_command=True)
def main(
    file: SpecFile = None,
    env: Env = None,
    state: Annotated[Path | None, typer.Option("--state", help="State directory (default: $INGOT_HOME, "
                                                "else .ingot/<project> beside the spec).")] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    server: Annotated[str | None, typer.Option("--server", envvar="INGOT_SERVER", help="Drive a remote "
                                               "'ingot serve' at this URL instead of the local agent.")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", envvar="INGOT_TOKEN_FILE",
                                                    help="File holding the server's token (or set "
                                                    "INGOT_TOKEN).")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Keep the state store in this PostgreSQL database (postgresql://USER@HOST/DB; "
        "default: $INGOT_DATABASE_URL, else SQLite in the state directory).")] = None,
) -> None:
    _global.update(state=state, file=file, env=env, server=server, token_file=token_file)
    if database_url is not None:
        # Through the environment, so that the agent this command may start uses the same store.
        guarded(lambda: check_url(database_url, "--database-url"))
        os.environ[DATABASE_URL_ENV] = database_url
    if version:
        console.print(f"ingot {__version__}")
        raise typer.Exit(0)


def guarded(action: Callable[[], T]) -> T:
    """Run `action`, turning ingot's errors into a message and an exit code instead of a traceback."""
    try:
        return action()
    except IngotError as exc:
        _print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        _print_error(disk_full_error(exc, "writing"))
        raise typer.Exit(1) from None
    except operations.HandedOver:
        raise  # for the command to ask abort or detach (see ingot.cli.interrupt)
    except KeyboardInterrupt:
        errors.print("interrupted: an operation already handed to the agent goes on there; "
                     "see 'ingot status' and 'ingot history'")
        raise typer.Exit(130) from None


def _print_error(exc: IngotError) -> None:
    errors.print(f"[bold red]error:[/bold red] {escape(exc.message)}", markup=True, soft_wrap=True)
    for line in exc.details:
        errors.print(f"  {line}", markup=False, soft_wrap=True)


def spec_path(file: Path | None) -> Path:
    return file or _global["file"] or Path(os.environ.get("INGOT_FILE", "ingot.yaml"))


def env_name(env: str | None) -> str | None:
    return env or _global["env"]


def project_for(file: Path | None) -> Project:
    return guarded(lambda: open_project(spec_path(file), _global["state"]))


def remote_server() -> Remote | None:
    """The remote server given by --server (or INGOT_SERVER), with its token; None to work locally."""
    url = _global["server"]
    if not url:
        return None

    def connect() -> Remote:
        from ingot.remote import Remote  # only remote use pays for importing the HTTP client

        token = os.environ.get("INGOT_TOKEN", "").strip()
        path = _global["token_file"]
        if not token and path is not None:
            try:
                token = Path(path).read_text().strip()
            except OSError as exc:
                raise UserInputError(f"--token-file {path}: cannot read it: {exc.strerror}") from exc
        if not token:
            raise UserInputError("--server needs the server's token: set INGOT_TOKEN or --token-file "
                                 "('ingot token show' on the server prints it)")
        return Remote(url, token)

    return guarded(connect)


@app.command()
def validate(file: SpecFile = None, as_json: AsJson = False) -> None:
    """Check the spec; print problems as FILE:LINE: key: what is wrong."""
    project = project_for(file)
    spec = project.spec
    if as_json:
        print_json({"valid": True, "project": spec.project, "services": list(spec.services),
                    "environments": spec.environment_names})
        return
    console.print(f"{spec.path.name}: valid — project {spec.project}, services: {', '.join(spec.services)}; "
                  f"environments: {', '.join(spec.environment_names)}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of ingot.yaml (for editors)."""
    from ingot.spec import json_schema

    print_json(json_schema())


@app.command()
def build(service: Annotated[str | None, typer.Argument(help="Service to build (default: all).")] = None,
          file: SpecFile = None, env: Env = None,
          rebuild: Annotated[bool, typer.Option("--rebuild", help="Build afresh, whatever the build cache "
                                                "holds (a stored copy of the same content is replaced "
                                                "if damaged).")] = False,
          as_json: AsJson = False) -> None:
    """Build immutable artifacts (reused when the input is unchanged and the stored copy verifies)."""
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    pinned = guarded(lambda: build_release.check_pin(project))
    if pinned is not None and not as_json:
        console.print(pinned_note(pinned), markup=False)
    results = []
    for name in guarded(lambda: project.services(service)):
        result = guarded(lambda n=name: build_release.build(project, environment, n,  # type: ignore[misc]
                                                            None if as_json else _pip_line, rebuild=rebuild))
        results.append({"service": name, **result.as_dict()})
        if not as_json:
            how = "unchanged, reused" if result.reused else "built"
            if result.replaced_corrupt:
                how = "built: the stored copy was damaged and has been replaced"
            console.print(f"{name}: {result.digest} ({how})")
            for line in result.replaced_corrupt:
                console.print(f"  | {line}", markup=False, highlight=False)
    if as_json:
        print_json(results)


def _pip_line(line: str) -> None:
    console.print(f"  | {line}", markup=False, highlight=False)


@app.command()
def deploy(file: SpecFile = None, env: Env = None, service: Service = None,
           irreversible: Annotated[bool, typer.Option("--irreversible", help="Mark the releases deployed as not "
                                                      "safe to roll back past (recorded in the ledger).")] = False,
           as_json: AsJson = False) -> None:
    """Build, release and deploy: fresh instances, health gate, traffic switch, drain, retire the old."""
    remote = remote_server()
    if remote is not None:
        outcomes = followed(remote, as_json, lambda progress, started: remote.deploy(
            env_name(env), service, progress, started, irreversible=irreversible))
    else:
        project = project_for(file)
        environment = guarded(lambda: project.environment(env_name(env)))
        names = guarded(lambda: project.services(service))
        outcomes = handed_over(project, lambda progress: operations.deploy(
            project, environment, names,
            on_event=None if as_json else progress.event,
            on_output=None if as_json else progress.output, irreversible=irreversible))
    if as_json:
        print_json([o.as_dict() for o in outcomes])
        return
    deploy_outcomes_text(outcomes, console)


def handed_over(project: Project, action: Callable[[Progress], T]) -> T:
    """Run a deploy, rollback or promote with its progress shown; Ctrl-C once the agent runs it asks
    whether to abort it or detach (see ingot.cli.interrupt)."""
    try:
        with Progress() as progress:
            return guarded(lambda: action(progress))
    except operations.HandedOver as handed:
        from ingot.cli.interrupt import after_interrupt

        after_interrupt(project, handed, guarded)


def followed(remote: Remote, as_json: bool,
             action: Callable[[Progress | None, Callable[[str], None]], T]) -> T:
    """A deploy, rollback or promote on the --server: started there, its event stream shown as a local one
    would be; Ctrl-C detaches (the operation goes on there), saying how to follow it again."""
    started: list[str] = []

    def run(progress: Progress) -> T:
        try:
            return action(None if as_json else progress, started.append)
        except KeyboardInterrupt:
            progress.__exit__()
            if started:
                errors.print(f"detached: operation {started[0]} goes on on the server; follow it again with "
                             f"'ingot --server {remote.url} follow {started[0]}'", markup=False, soft_wrap=True)
            else:
                errors.print("interrupted before the server started the operation", markup=False)
            raise typer.Exit(130) from None

    with Progress() as progress:
        return guarded(lambda: run(progress))


@app.command()
def follow(operation: Annotated[str, typer.Argument(help="The operation's id (printed when it started).")],
           as_json: AsJson = False) -> None:
    """Follow a deploy, rollback or promote running on the --server to its end (exit code from how it ended)."""
    remote = remote_server()
    if remote is None:
        errors.print("error: 'ingot follow' needs --server (or INGOT_SERVER): operations are the API's")
        raise typer.Exit(2)
    kind = str(guarded(lambda: remote.operation(operation))["kind"])
    def again(progress: Progress | None, started: Callable[[str], None]) -> list[operations.DeployOutcome]:
        started(operation)
        return remote.follow(operation, progress)

    outcomes = followed(remote, as_json, again)
    if as_json:
        print_json([o.as_dict() for o in outcomes])
        return
    if kind == "rollback":
        _print_rollbacks(outcomes, as_json)
        return
    for outcome in outcomes:
        how = "already serves" if outcome.nothing_changed else "is live at"
        console.print(f"{outcome.service}: {kind}: release {outcome.release} {how} {outcome.url}")


def _print_window(outcome: operations.DeployOutcome) -> None:
    verifying_text(outcome, console)


@app.command()
def rollback(file: SpecFile = None, env: Env = None, service: Service = None,
             to: Annotated[str | None, typer.Option("--to", help="Release id (or prefix); default: the "
                                                    "previous release.")] = None,
             force: Annotated[bool, typer.Option("--force", help="Roll back even past a release marked "
                                                 "irreversible (recorded in the ledger).")] = False,
             rerun: Annotated[bool, typer.Option("--rerun-release-command", help="Run the target's "
                                                 "release_command again, though it already succeeded.")] = False,
             as_json: AsJson = False) -> None:
    """Go back to the previous release (or --to any earlier one), through the same health gate."""
    remote = remote_server()
    if remote is not None:
        _print_rollbacks(followed(remote, as_json, lambda progress, started: remote.rollback(
            env_name(env), service, to, progress, started, force=force, rerun_release_command=rerun)), as_json)
        return
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    names = guarded(lambda: project.services(service))
    if len(names) > 1 and to:
        errors.print("error: --to needs --service when the spec has several services")
        raise typer.Exit(2)
    def each(progress: Progress) -> list[operations.DeployOutcome]:
        results = []
        for index, name in enumerate(names):
            try:
                results.append(operations.rollback(project, environment, name, to,
                                                   on_event=None if as_json else progress.event,
                                                   force=force, rerun_release_command=rerun))
            except operations.HandedOver as handed:
                handed.not_started = names[index + 1:]
                raise
        return results

    _print_rollbacks(handed_over(project, each), as_json)


def _print_rollbacks(results: list[operations.DeployOutcome], as_json: bool) -> None:
    if as_json:
        print_json([o.as_dict() for o in results])
        return
    for outcome in results:
        if outcome.nothing_changed:
            console.print(f"{outcome.service}: release {outcome.release} already serves {outcome.url}")
        else:
            console.print(f"{outcome.service}: rolled back to release {outcome.release}, live at {outcome.url}")


@app.command()
def promote(source: Annotated[str, typer.Option("--from", help="Environment whose live release to take.")],
            target: Annotated[str, typer.Option("--to", help="Environment to deploy it to.")],
            file: SpecFile = None, service: Service = None,
            force: Annotated[bool, typer.Option("--force", help="Promote even if the source is not healthy "
                                                "and verified (recorded).")] = False,
            rerun: Annotated[bool, typer.Option("--rerun-release-command", help="Run the release_command "
                                                "again, though it already succeeded for this release.")] = False,
            as_json: AsJson = False) -> None:
    """Deploy to one environment exactly the artifact live in another, with the target's own config."""
    remote = remote_server()
    if remote is not None:
        source_env, target_env = source, target
        outcomes = followed(remote, as_json, lambda progress, started: remote.promote(
            source, target, service, force, progress, started, rerun_release_command=rerun))
    else:
        project = project_for(file)
        source_env = guarded(lambda: project.environment(source))
        target_env = guarded(lambda: project.environment(target))
        names = guarded(lambda: project.services(service))
        outcomes = handed_over(project, lambda progress: operations.promote(
            project, source_env, target_env, names, force=force, on_event=None if as_json else progress.event,
            rerun_release_command=rerun))
    if as_json:
        print_json([o.as_dict() for o in outcomes])
        return
    for outcome in outcomes:
        verb = "already serves" if outcome.nothing_changed else "is live at"
        console.print(f"{outcome.service}: promoted {source_env} → {target_env}: release {outcome.release} "
                      f"{verb} {outcome.url}")
        _print_window(outcome)


@app.command("run")
def run_one_off(service: Annotated[str, typer.Argument(help="Service whose release to run the command in.")],
        command: Annotated[list[str] | None, typer.Argument(help="The command, after --.")] = None,
        file: SpecFile = None, env: Env = None,
        release: Annotated[str | None, typer.Option("--release", help="Release id (or prefix); default: the "
                                                    "live one.")] = None,
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Start it and return; its output goes to "
                                             "its log.")] = False,
        as_json: AsJson = False) -> None:
    """Run a command in a fresh one-off instance of the live (or --release) release: same artifact, env,
    config, secrets, user and limits; attached to this terminal. Exits with the command's exit code."""
    if remote_server() is not None:
        errors.print("error: ingot run works on this machine only (it attaches to the terminal); drop --server")
        raise typer.Exit(2)
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    outcome = guarded(lambda: operations.run_command(project, environment, service, release, list(command or []),
                                                     detach=detach, on_line=None if as_json else _run_line))
    if as_json:
        print_json(outcome)
    elif detach:
        console.print(f"{service}: started {outcome['instance']} of release {outcome['release']}; its output goes "
                      f"to {outcome['log']}", markup=False)
    code = outcome["exit_code"]
    raise typer.Exit(0 if detach else (code if isinstance(code, int) and code >= 0 else 1))


def _run_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def on_server_or_here(file: Path | None, remote: Callable[[Remote], T], local: Callable[[Project], T]) -> T:
    """Run on the --server when one is given, else here on the spec's project."""
    server = remote_server()
    if server is not None:
        return guarded(lambda: remote(server))
    project = project_for(file)
    return guarded(lambda: local(project))


def on_environment(file: Path | None, env: str | None, local: Callable[[Project, str], T],
                   remote: Callable[[Remote], T]) -> tuple[str, T]:
    """As `on_server_or_here`, on one environment (the spec's first by default); returns the environment's
    name (as far as it is known here) and the result."""
    def here(project: Project) -> tuple[str, T]:
        environment = project.environment(env_name(env))
        return environment, local(project, environment)

    return on_server_or_here(file, lambda server: (env_name(env) or "the default environment", remote(server)),
                             here)


def chosen_environment(project: Project, env: str | None) -> str | None:
    """The environment --env names, checked against the spec; None when none is named (all of them)."""
    name = env_name(env)
    return project.environment(name) if name else None


def _control(action: str, file: Path | None, env: str | None, service: str | None) -> None:
    environment, result = on_environment(
        file, env, lambda project, environment: operations.control(project, environment, service, action),
        lambda server: server.control(env_name(env), service, action))
    done = {"pause": "paused", "resume": "resumed", "abort": "aborted"}[action]
    console.print(f"{environment}: {done} the rollout of {', '.join(result['services'])}")


@app.command()
def pause(file: SpecFile = None, env: Env = None, service: Service = None) -> None:
    """Hold a rollout in progress before its next step (from any terminal)."""
    _control("pause", file, env, service)


@app.command()
def resume(file: SpecFile = None, env: Env = None, service: Service = None) -> None:
    """Go on with a paused rollout, or end its current manual pause step."""
    _control("resume", file, env, service)


@app.command("promote-step")
def promote_step(file: SpecFile = None, env: Env = None, service: Service = None) -> None:
    """End the current pause step of a rollout now and go to the next step."""
    _control("resume", file, env, service)


@app.command()
def abort(file: SpecFile = None, env: Env = None, service: Service = None) -> None:
    """Abort a rollout in progress: traffic back to the stable release at once, new instances retired."""
    _control("abort", file, env, service)


MAX_PAGE_BYTES = 1 << 20


@app.command()
def maintenance(
    action: Annotated[str, typer.Argument(help="on or off.")],
    file: SpecFile = None, env: Env = None, service: Service = None,
    page: Annotated[Path | None, typer.Option("--page", help="HTML page to answer with (default: a short one).")]
    = None,
    retry_after: Annotated[int, typer.Option("--retry-after", min=0, help="Seconds, in the Retry-After header.")]
    = 120,
    as_json: AsJson = False,
) -> None:
    """Answer every request 503 with Retry-After while the instances keep running (off: serve again at once)."""
    if action not in ("on", "off"):
        _print_error(UserInputError(f"maintenance takes on or off, not {action!r}"))
        raise typer.Exit(2)
    html = None
    if page is not None and action == "on":
        try:
            data = page.read_bytes()
        except OSError as exc:
            _print_error(UserInputError(f"--page {page}: cannot be read ({exc.strerror or exc})"))
            raise typer.Exit(2) from None
        if len(data) > MAX_PAGE_BYTES:
            _print_error(UserInputError(f"--page {page}: {len(data)} bytes; at most {MAX_PAGE_BYTES} are served"))
            raise typer.Exit(2)
        html = data.decode("utf-8", errors="replace")
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    names = guarded(lambda: project.services(service))

    def switch() -> dict[str, Any]:
        try:
            return operations.maintenance(project, environment, names, action == "on", retry_after=retry_after,
                                          page=html)
        except UserInputError as exc:  # an HAProxy router's page limit: said with the file's name
            if page is None or not exc.message.startswith("the page is"):
                raise
            raise UserInputError(f"--page {page}: {exc.message}", details=exc.details) from None

    result = guarded(switch)
    if as_json:
        print_json(result)
        return
    for item in result["services"]:
        if action == "on":
            console.print(f"{environment}/{item['service']}: maintenance on: every request is answered 503 "
                          f"(Retry-After: {retry_after}); instances keep running", markup=False)
        else:
            console.print(f"{environment}/{item['service']}: maintenance off: serving"
                          + ("" if item["was"] else " (it was not on)"), markup=False)


@app.command()
def plan(file: SpecFile = None, env: Env = None, service: Service = None,
         as_json: AsJson = False) -> None:
    """Print the steps a deploy would take, without doing anything."""
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    plans = guarded(lambda: operations.plan(project, environment, guarded(lambda: project.services(service))))
    if as_json:
        print_json(plans)
        return
    for item in plans:
        note = " (needs a build first; the release id is known after it)" if item["needs_build"] else ""
        console.print(f"{item['service']} in {environment}: {item['strategy']} to {item['release']}{note}")
        if not item["steps"]:
            console.print("  nothing to do")
        for number, step in enumerate(item["steps"], start=1):
            console.print(f"  {number}. {step['description']}")
        if item["steps"] and item.get("checks"):
            console.print("  smoke checks before each step that gives the new release traffic: "
                          + ", ".join(item["checks"]), markup=False)


@app.command()
def status(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Per service: live release, instances, health, router URL."""
    report = on_server_or_here(file, lambda server: server.status(env_name(env)),
                               lambda project: operations.status(project, chosen_environment(project, env)))
    if as_json:
        print_json(report)
        return
    views.status_text(report, console, errors)


@app.command()
def history(file: SpecFile = None, env: Env = None, service: Service = None,
            limit: Annotated[int, typer.Option(help="How many deployments.")] = 30,
            as_json: AsJson = False) -> None:
    """Deployments newest first: release, commit, artifact, who, when, outcome."""
    environment, rows = on_environment(
        file, env, lambda project, environment: operations.history(project, environment, service, limit),
        lambda server: server.history(env_name(env), service, limit))
    if as_json:
        print_json(rows)
        return
    views.history_text(environment, rows, console)


@app.command()
def logs(service: Annotated[str, typer.Argument(help="Service.")], file: SpecFile = None,
         env: Env = None, lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
         follow: Annotated[bool, typer.Option(
             "--follow", "-F", help="Then print new lines as they are written, of the instances live now and of "
                                    "those deploys start, each line tagged with its instance, until Ctrl-C. "
                                    "(-f is --file.)")] = False) -> None:
    """The last lines of each running instance's log (with --follow, then every new line)."""
    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    guarded(lambda: project.services(service))
    if follow:
        _follow_logs(project, environment, service, lines)
        return
    views.logs_text(guarded(lambda: operations.logs(project, environment, service, lines)), console)


def _follow_logs(project: Project, environment: str, service: str, lines: int) -> None:
    from ingot import logfollow

    try:
        for item in logfollow.follow(project.store, environment, service, lines):
            if isinstance(item, logfollow.Notice):
                errors.print(f"==> {item.text} <==", markup=False, highlight=False)
            else:
                sys.stdout.write(f"{item.instance} | {item.text}\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        return  # Ctrl-C is how following ends: exit 0
    except BrokenPipeError:
        # The reader went away (`| head`): done, quietly; stdout's final flush must not fail either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@app.command()
def down(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Stop instances and routers (of one environment, or all) and the agent when nothing is left."""
    project = project_for(file)
    environment = guarded(lambda: chosen_environment(project, env))
    result = guarded(lambda: operations.down(project, environment))
    if as_json:
        print_json(result)
    else:
        console.print(f"stopped {len(result['stopped'])} instance(s)" if result["stopped"] else "nothing was running")
        for problem in result["problems"]:
            errors.print(f"warning: {problem}", markup=False, soft_wrap=True)
    if result["problems"]:
        raise typer.Exit(1)


@app.command()
def drift(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Compare what runs with what the live releases say; exit 1 when anything differs."""
    findings = on_server_or_here(file, lambda server: server.drift(env_name(env)),
                                 lambda project: operations.drift(project, chosen_environment(project, env)))
    if as_json:
        print_json(findings)
    else:
        views.drift_text(findings, console)
    if findings:
        raise typer.Exit(1)


@app.command()
def reconcile(file: SpecFile = None, env: Env = None, as_json: AsJson = False) -> None:
    """Repair every drift finding by replacement: fresh instances first, then retire the bad ones."""
    project = project_for(file)
    environment = guarded(lambda: chosen_environment(project, env))
    result = guarded(lambda: operations.reconcile(project, environment))
    if as_json:
        print_json(result)
        return
    if not result["findings"]:
        console.print("no drift: nothing to repair")
        return
    console.print(f"{len(result['findings'])} finding(s); started {len(result['started'])} fresh instance(s), "
                  f"retired {len(result['replaced'])}, stopped {len(result['stopped_strays'])} stray(s)")


@app.command()
def prune(file: SpecFile = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, remove nothing.")] = False,
          as_json: AsJson = False) -> None:
    """Remove old artifacts/images: never one that is live or a rollback target in any environment."""
    project = project_for(file)
    result = guarded(lambda: operations.prune(project, dry_run))
    if as_json:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for artifact, release_ids in sorted(result["remove"].items()):
        console.print(f"{verb} {short(artifact)} (releases {', '.join(release_ids)})")
    for artifact, reasons in sorted(result["keep"].items()):
        console.print(f"keep {short(artifact)}: {'; '.join(reasons)}")
    if not result["remove"]:
        console.print("nothing to prune")
    else:  # images freed in the container engine are its to count; this is the artifact store's share
        console.print(f"{'would free' if dry_run else 'freed'} {result['freed_bytes'] / 1e6:.1f} MB of artifact "
                      "storage")


@app.command()
def unlock(file: SpecFile = None, env: Env = None,
           force: Annotated[bool, typer.Option("--force", help="Clear it even if its holder still runs.")] = False
           ) -> None:
    """Clear an environment's deploy lock left by a process that is gone (recorded in the ledger)."""
    from ingot import locks
    from ingot.actor import current_actor

    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    cleared = guarded(lambda: locks.unlock(project.store, environment, current_actor(), force=force))
    console.print(f"{environment}: cleared the lock of {cleared.describe()}")


@app.command()
def agent(foreground: Annotated[bool, typer.Option("--foreground", help="Run attached to this terminal.")] = False,
          heal_interval: Annotated[str | None, typer.Option(
              "--heal-interval", help="How often the agent looks for drift and repairs it by itself (default "
              "5s, or $INGOT_HEAL_INTERVAL); 0 turns self-healing off. Applies when the agent starts.")] = None,
          file: SpecFile = None) -> None:
    """The long-running process that owns instances and routers (started on demand by other commands)."""
    from ingot.agent.client import ensure_agent
    from ingot.agent.selfheal import INTERVAL_ENV
    from ingot.agent.selfheal import heal_interval as parse_interval
    from ingot.agent.server import run_agent
    from ingot.paths import StatePaths
    from ingot.signing import pin_path

    state = _global["state"]
    spec = spec_path(file)
    # With --state alone the spec may not be at hand; its pin is used when it is (see ingot.signing).
    paths = (StatePaths(state.resolve(), pin=pin_path(spec) if spec.exists() else None) if state is not None
             else project_for(file).paths)
    if heal_interval is not None:
        guarded(lambda: parse_interval(heal_interval, "--heal-interval"))
        os.environ[INTERVAL_ENV] = heal_interval  # the agent, here or in the background, reads it
    if foreground:
        guarded(lambda: run_agent(paths))
        return
    client = guarded(lambda: ensure_agent(paths))
    answer = client.call("ping")
    console.print(f"agent running for {paths.root} (pid {answer['pid']})")
    wanted = parse_interval(heal_interval) if heal_interval is not None else None
    if wanted is not None and answer.get("heal_interval") not in (None, wanted):
        console.print(f"note: it was already running, with a heal interval of {answer['heal_interval']:g}s; "
                      "the new one applies when the agent starts again")


@audit_app.command("log")
def audit_log(file: SpecFile = None, env: Env = None, service: Service = None,
              limit: Annotated[int, typer.Option(help="Show the last N entries.")] = 50,
              as_json: AsJson = False) -> None:
    """The ledger: who did what, when, with the evidence."""
    remote = remote_server()
    if remote is not None:
        entries = [ledger.LedgerEntry(**e) for e in guarded(lambda: remote.ledger(env_name(env), service, limit))]
    else:
        project = project_for(file)
        # Read from the ledger's end: the newest `limit` entries cost `limit` rows, however long it is.
        entries = guarded(lambda: ledger.latest(project.store, limit=limit, environment=env_name(env),
                                                service=service)) if limit > 0 else \
            guarded(lambda: ledger.entries(project.store, environment=env_name(env), service=service))
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    table = Table(show_edge=False)
    for column in ("#", "when", "who", "action", "env", "service", "subject", "details"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(str(entry.seq), when(entry.at), entry.actor, entry.action, entry.environment or "",
                      entry.service or "", entry.subject or "", _summary(entry.payload))
    console.print(table)


def _summary(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


@audit_app.command("verify")
def audit_verify(file: SpecFile = None,
                 checkpoint: Annotated[Path | None, typer.Option(
                     "--checkpoint", help="A checkpoint written by 'ingot audit checkpoint' (kept outside the "
                     "store): fail if the ledger is shorter than it or differs at its entry.")] = None,
                 full: Annotated[bool, typer.Option(
                     "--full", help="Recompute the whole chain from its first entry, not only the entries after "
                     "the last verified one, and run SQLite's full integrity check (indexes against their tables "
                     "too) instead of its quick check.")] = False,
                 signatures: Annotated[bool, typer.Option(
                     "--signatures", help="Verify every checked entry's own signature too, not only the newest "
                     "one's (which covers them all through the chain): finds a signature edited alone. Slow: "
                     "about 100 times the cost of recomputing the chain.")] = False,
                 as_json: AsJson = False) -> None:
    """Check the ledger's hash chain and signatures and every release signature against the pinned key, the
    insert-only triggers, every stored artifact's digest and the database's integrity; exit 1 naming what
    is bad. The chain is checked from the last entry a verify found intact (kept signed beside the store),
    unless --full. Never makes a key."""
    project = project_for(file)
    report = guarded(lambda: operations.audit_verify(project, deep=True, checkpoint_file=checkpoint, full=full,
                                                     every_signature=signatures))
    if as_json:
        print_json({"ok": report.ok, "entries": report.ledger_head, "entries_checked": report.entries_checked,
                    "verified_from": report.verified_from, "releases": report.releases_checked,
                    "artifacts": report.artifacts_checked, "trusted": report.trusted,
                    "checkpoint": report.checkpoint, "problems": report.problems})
    elif report.ok:
        against = f"; the ledger reaches checkpoint {report.checkpoint}" if report.checkpoint else ""
        since = (f" ({report.entries_checked} new since entry {report.verified_from}, verified before)"
                 if report.verified_from else "")
        console.print(f"ledger intact: {report.ledger_head} entries chained and signed{since}; "
                      f"{report.releases_checked} release signatures valid (checked against {report.trusted}); "
                      f"insert-only triggers in place; {report.artifacts_checked} stored artifacts match their "
                      f"digests; database integrity ok ({'full' if full else 'quick'} check){against}",
                      markup=False)
    else:
        for problem in report.problems:
            label = "DAMAGED" if problem.startswith(("database", "artifact", "the ledger and releases")) else "TAMPERED"
            errors.print(f"{label}: {problem}", markup=False)
        errors.print(f"(signatures checked against {report.trusted})", markup=False)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(file: SpecFile = None,
                     out: Annotated[Path | None, typer.Option(
                         "--out", help="Write it to this file (keep it outside the state directory: another "
                         "disk, another machine); default: print it.")] = None,
                     as_json: AsJson = False) -> None:
    """A signed checkpoint of the ledger's head (seq, hash, time): 'audit verify --checkpoint' tells a ledger
    cut or rewritten since."""
    project = project_for(file)
    made = guarded(lambda: operations.audit_checkpoint(project, out))
    if out is None or as_json:
        print_json(made)
    else:
        console.print(f"checkpoint of entry {made['seq']} written to {out}", markup=False)


def _register_command_modules() -> None:
    """Commands kept in their own modules (they import this one lazily, so this comes last)."""
    from ingot.cli import serve_commands

    app.command("serve")(serve_commands.serve_command)
    app.add_typer(serve_commands.token_app, name="token")
    from ingot.cli import config_commands

    app.add_typer(config_commands.config_app, name="config")
    app.add_typer(config_commands.secret_app, name="secret")

    from ingot.cli import scale_commands, volume_commands

    app.command("scale")(scale_commands.scale_command)
    app.command("restart")(scale_commands.restart_command)

    app.add_typer(volume_commands.volume_app, name="volume")

    from ingot.cli import state_commands

    app.add_typer(state_commands.state_app, name="state")

    from ingot.cli import watch_commands

    app.command("watch")(watch_commands.watch_command)
    app.command("unpin")(watch_commands.unpin_command)

    from ingot.cli import kube_commands

    app.command("render")(kube_commands.render_command)
    app.add_typer(kube_commands.kube_app, name="kube")

    from ingot.cli import edge_commands

    app.add_typer(edge_commands.edge_app, name="edge")
    app.command("install")(edge_commands.install_command)


_register_command_modules()


def run() -> None:
    private_umask()  # ingot's own files (state, logs, keys, sockets) are its alone, 0600/0700
    try:
        app()
    except IngotError as exc:  # raised outside a command's guard (opening the store, say): said as such
        _print_error(exc)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: say so plainly
        if os.environ.get("INGOT_DEBUG"):
            raise
        # A full disk or a damaged database is the machine's trouble, not ingot's: said as such, wherever
        # it surfaced (the store translates its own; this catches what got past).
        cause = getattr(exc, "orig", None) or exc
        known = (disk_full_error(exc, "writing") if isinstance(exc, OSError) and is_disk_full(exc)
                 else store_error(Path("state.db"), cause))
        if known is not None:
            _print_error(known)
            sys.exit(1)
        errors.print(f"internal error: {type(exc).__name__}: {exc} (set INGOT_DEBUG=1 for the traceback)",
                     markup=False)
        sys.exit(1)
