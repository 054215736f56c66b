"""`ingot watch` (GitOps: deploy each new commit of a branch) and `ingot unpin`."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ingot.cli.options import SpecFile
from ingot.cli.output import console, errors
from ingot.store.db import database_url

if TYPE_CHECKING:
    from ingot.gitops import PollResult

Env = Annotated[str | None, typer.Option("--env", "-e", help="Environment.")]


def watch_command(
    repo: Annotated[str, typer.Argument(help="The repository: a local path or any URL git can fetch "
                                        "(file://, https://, ssh://, user@host:path).")],
    branch: Annotated[str, typer.Option("--branch", "-b", help="The branch to follow.")],
    env: Annotated[str | None, typer.Option("--env", "-e", help="The environment to deploy to.")] = None,
    interval: Annotated[str, typer.Option("--interval", help="Time between fetches (500ms, 10s, 1m).")] = "10s",
    path: Annotated[str, typer.Option("--path", help="The spec's path in the repository.")] = "ingot.yaml",
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit: 0 when the head is applied (or "
                                       "pinned), 1 when it failed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line for each poll result.")] = False,
) -> None:
    """Deploy each new commit of a branch to an environment; a bad commit leaves the previous release serving.

    Every commit deploys into one state directory: --state, else $INGOT_HOME, else ./.ingot/<project> here
    (the project of the spec at the branch's head).

    A manual rollback (or deploy, promote, abort, down) in the environment pins it: the watcher waits for a newer commit or 'ingot unpin'.
    """  # noqa: E501
    from ingot.cli.main import _global, env_name, guarded
    from ingot.errors import UserInputError
    from ingot.gitops import Watcher, watch_state_dir
    from ingot.spec.durations import parse_duration

    environment = env_name(env)
    if not environment:
        errors.print("error: --env is required: the environment the watcher deploys to", markup=False)
        raise typer.Exit(2)

    def every() -> float:
        try:
            return parse_duration(interval)
        except ValueError as exc:
            raise UserInputError(f"--interval {interval}: {exc}") from None

    seconds = guarded(every)
    printer = _Printer(as_json)
    watcher = guarded(lambda: Watcher(repo, branch, environment, watch_state_dir(repo, branch, path, _global["state"]),
                                      spec_path=path, interval=seconds, on_event=printer.event))
    try:
        head = guarded(watcher.check)
        if once:
            result = guarded(watcher.poll_once)
            printer.result(result)
            if not result.ok:
                raise typer.Exit(1)
            return
        printer.say(f"watching {watcher.branch} of {watcher.url} (at {head[:10]}) for {environment}, every "
                    f"{seconds:g}s; state in {watcher.paths.root}; Ctrl-C or SIGTERM stops between polls")
        stop = threading.Event()
        _stop_on_signals(stop, printer)
        guarded(lambda: watcher.run(stop, printer.result))
        printer.say("stopped watching")
    finally:
        watcher.close()


def _stop_on_signals(stop: threading.Event, printer: _Printer) -> None:
    """The first Ctrl-C or SIGTERM stops the watcher after the poll under way; a second one interrupts."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        printer.say(f"{signal.Signals(signum).name}: stopping after the poll under way")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class _Printer:
    """Poll results as lines (a state that does not change is said once), or as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._last: tuple[Any, ...] | None = None

    def say(self, text: str) -> None:
        if self.as_json:
            self._json({"event": "note", "message": text})
        else:
            console.print(text, markup=False)

    def _json(self, data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    def event(self, event: dict[str, Any]) -> None:
        if event.get("event") != "commit":
            return
        if self.as_json:
            self._json(event)
            return
        commit, environment = str(event["commit"])[:10], event["environment"]
        if event["reason"] == "unpinned":
            text = f"{commit}: {environment} was unpinned: applying the head of {event['branch']} again"
        elif str(event["reason"]).startswith("config source"):
            text = f"{commit}: {event['reason']}: deploying to {environment}"
        else:
            text = f"{commit}: new commit on {event['branch']}: deploying to {environment}"
        if event.get("ends_pin"):
            text += f" (this ends the pin of {event['ends_pin']})"
        console.print(text, markup=False)

    @staticmethod
    def _goes_without_saying(result: PollResult, said: tuple[Any, ...] | None) -> bool:
        """A state that goes on being true is said once; that a commit just deployed (or failed) is applied
        (or failed), too."""
        if said is None or result.outcome in ("deployed", "failed"):
            return False
        just_done = result.outcome == "unchanged" and said[:2] in (("deployed", result.commit),
                                                                    ("failed", result.commit))
        return said == (result.outcome, result.commit, result.message) or just_done

    def result(self, result: PollResult) -> None:
        key = (result.outcome, result.commit, result.message)
        said, self._last = self._last, key
        if self._goes_without_saying(result, said):
            return
        if self.as_json:
            self._json({"event": "result", **result.as_dict()})
            return
        commit = (result.commit or "")[:10]
        if result.outcome == "deployed":
            for item in result.deployments:
                if item["nothing_changed"]:
                    console.print(f"{commit}: {item['service']}: release {item['release']} already serves "
                                  f"{item['url']}", markup=False)
                else:
                    console.print(f"{commit}: {item['service']}: release {item['release']} is live at "
                                  f"{item['url']}", markup=False)
            return
        if result.outcome == "failed":
            console.print(f"{commit}: FAILED at {result.phase}: {result.message}", markup=False)
            for line in result.details:
                console.print(f"  {line}", markup=False)
            serving = ", ".join(f"{svc} release {rel}" for svc, rel in result.serving.items() if rel)
            console.print(f"  {result.environment} still serves: {serving or 'nothing'}; recorded in the ledger "
                          "(watch.fail); waiting for the next commit", markup=False)
            return
        console.print(result.message, markup=False)


def unpin_command(file: SpecFile = None, env: Env = None) -> None:
    """Give an environment pinned by a manual rollback back to 'ingot watch' (recorded in the ledger)."""
    from ingot.actor import current_actor
    from ingot.cli.main import _global, env_name, guarded, spec_path
    from ingot.errors import UserInputError
    from ingot.gitops import unpin
    from ingot.paths import explicit_state_dir
    from ingot.project import open_project
    from ingot.state_layout import states_in
    from ingot.store import Store

    def target() -> tuple[Path, str]:
        environment = env_name(env)
        explicit = explicit_state_dir(_global["state"])
        spec = spec_path(file)
        if environment and explicit is not None:
            return explicit.root, environment  # no spec needed to name the state and env
        if environment and not spec.exists():
            found = states_in(Path.cwd())
            if len(found) == 1:
                return found[0], environment
            raise UserInputError(f"no spec at {spec}, and {len(found)} state directories here"
                                 + (f" ({', '.join(str(p) for p in found)})" if found else "")
                                 + ": give the watcher's --state, or -f with its spec")
        project = open_project(spec, _global["state"])
        return project.paths.root, project.environment(environment)

    root, environment = guarded(target)
    if not (root / "state.db").exists() and not database_url():
        errors.print(f"error: no ingot state in {root}: give the watcher's --state (or run beside its spec)",
                     markup=False)
        raise typer.Exit(2)
    store = Store(root)
    try:
        pin = guarded(lambda: unpin(store, environment, current_actor()))
    finally:
        store.close()
    console.print(f"{environment}: unpinned ({pin.describe()}); the watcher applies the head of its branch at "
                  "its next poll", markup=False)
