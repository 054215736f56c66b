"""The agent's side of the thin client (ingot.cli.fast): `ingot status`, `history`, `logs`, `drift` and a
no-change `ingot deploy` answered here.

The agent has ingot's heavy modules loaded already, so it opens the spec, runs the same operation the full
CLI runs and renders the same text (ingot.views) onto a console made to behave as the caller's would: its
stdout's and stderr's being a terminal or not, its size, encoding and the environment variables rich reads.
The answer is the text to print, in order, on stdout and stderr. Whatever this cannot answer as the full
CLI would (an error, another state, another time zone) is answered `served: false`, and the caller runs
the full CLI, which says it its own way.

A deploy is answered only when it would change nothing (ingot.deploy_check says; anything else is for the
full CLI to deploy), with what the full CLI records for it (the reused builds, under the caller's actor) and
prints (its progress lines and outcome, or its JSON).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from ingot import deploy_check, deploy_text, operations, views
from ingot.actor import acting_as
from ingot.agent.protocol import TERMINAL_ENVIRON, deploy_environ
from ingot.artifacts.fingerprint import TreeCache
from ingot.errors import IngotError
from ingot.project import Project, open_project
from ingot.store import Store


class _Stream:
    """What a console prints, kept in order with the other stream's (`chunks`: (1 or 2, text)); a
    terminal or not, in the caller's encoding, as the caller's stdout or stderr is."""

    def __init__(self, fd: int, tty: bool, encoding: str, chunks: list[list[Any]]) -> None:
        self._fd, self._tty, self.encoding, self._chunks = fd, tty, encoding, chunks

    def isatty(self) -> bool:
        return self._tty

    def flush(self) -> None:
        return None

    def write(self, text: str) -> int:
        if self._chunks and self._chunks[-1][0] == self._fd:
            self._chunks[-1][1] += text
        else:
            self._chunks.append([self._fd, text])
        return len(text)


SPEC_SETTLE = 2.0  # seconds a spec must have been unchanged for its parse to be kept


@dataclass
class _Opened:
    signature: tuple[int, int, int, int]
    project: Project


class CliAnswers:
    """Answers `cli` requests for the agent of state `root`, whose store it shares."""

    def __init__(self, root: Path, store: Store, *, trees: TreeCache | None = None,
                 deploy_unchanged: deploy_check.AgentVerdict | None = None) -> None:
        """`trees`: the agent's listings of stored artifacts; `deploy_unchanged`: its verdict on a deploy."""
        self.root = root
        self.store = store
        self.deploys = deploy_check.DeployCheck(trees if trees is not None else TreeCache())
        self._deploy_unchanged = deploy_unchanged
        # The spec, parsed once per version of its file: the thin client's whole point is not to pay for it.
        self._opened: dict[tuple[str, str | None], _Opened] = {}
        self.served = 0  # answers given (in `ping`'s answer: tests tell the fast path from the full CLI by it)
        self.deploys_served = 0  # of which no-change deploys

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("tz") != os.environ.get("TZ"):
            return _not_served("the caller's time zone differs from the agent's (times would print differently)")
        try:
            project = self._project(str(request["spec"]), request.get("state"))
            if project.paths.root != self.root:
                return _not_served(f"the spec's state is {project.paths.root}, not this agent's")
            answer = self._run(project, request)
            self.served += answer["served"]
            return answer
        except (IngotError, OSError) as exc:
            return _not_served(str(getattr(exc, "message", exc)))

    def _project(self, spec: str, state: str | None) -> Project:
        taken_ns = time.time_ns()
        stat = os.stat(spec)
        signature = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
        known = self._opened.get((spec, state))
        if known is not None and known.signature == signature:
            return known.project
        project = open_project(Path(spec), Path(state) if state else None)
        project.__dict__["store"] = self.store  # the agent's own (same state): no second engine
        # Kept only once the file has been still for a while: two writes of the same size in one tick of
        # the filesystem's clock look the same to stat (a deploy must never miss an edit of the spec).
        if max(stat.st_mtime_ns, stat.st_ctime_ns) < taken_ns - int(SPEC_SETTLE * 1e9):
            self._opened[(spec, state)] = _Opened(signature, project)
        return project

    def _run(self, project: Project, request: dict[str, Any]) -> dict[str, Any]:
        terminal = dict(request.get("terminal") or {})
        chunks: list[list[Any]] = []
        out, err = _console(terminal, chunks, stderr=False), _console(terminal, chunks, stderr=True)
        command, env, as_json = request.get("command"), request.get("env"), bool(request.get("json"))
        if command == "status":
            report = operations.status(project, project.environment(env) if env else None)
            if as_json:
                return _served([[1, views.json_text(report)]])
            views.status_text(report, out, err)
        elif command == "history":
            environment = project.environment(env)
            rows = operations.history(project, environment, request.get("service"), int(request["limit"]))
            if as_json:
                return _served([[1, views.json_text(rows)]])
            views.history_text(environment, rows, out)
        elif command == "logs":
            environment = project.environment(env)
            service = str(request["service"])
            project.services(service)
            views.logs_text(operations.logs(project, environment, service, int(request["lines"])), out)
        elif command == "deploy":
            return self._deploy(project, request, out, chunks)
        elif command == "drift":
            findings = operations.drift(project, project.environment(env) if env else None)
            code = 1 if findings else 0  # as the full CLI: exit 1 when anything differs
            if as_json:
                return _served([[1, views.json_text(findings)]], code)
            views.drift_text(findings, out)
            return _served(chunks, code)
        else:
            return _not_served(f"unknown command {command!r}")
        return _served(chunks)

    def _deploy(self, project: Project, request: dict[str, Any], out: Any, chunks: list[list[Any]]) -> dict[str, Any]:
        """A deploy that would change nothing, as the full CLI records and prints it; else not served."""
        if self._deploy_unchanged is None:
            return _not_served("no agent to ask whether the services' plans are empty")
        if request.get("python") != sys.executable:
            return _not_served("the caller's python is not the agent's (builds are keyed by the interpreter)")
        if dict(request.get("environ") or {}) != deploy_environ(dict(os.environ)):
            return _not_served("the caller's environment differs from the agent's where a deploy reads it")
        environment = project.environment(request.get("env"))
        names = project.services(request.get("service"))
        actor = str(request.get("actor") or "")
        if not actor:
            return _not_served("no actor")
        with acting_as(actor):
            try:
                found = self.deploys.unchanged(project, environment, names, self._deploy_unchanged)
            except deploy_check.Changed as changed:
                return _not_served(f"a deploy would act: {changed}")
            deploy_check.record(project, environment, found)
        self.deploys_served += 1
        outcomes = [operations.DeployOutcome(service=item.service, release=item.release.id, release_created=False,
                                             nothing_changed=True, url=item.params.url, deployment=None)
                    for item in found]
        if request.get("json"):
            return _served([[1, views.json_text([o.as_dict() for o in outcomes])]])
        with deploy_text.DeployProgress(out) as progress:
            for item in found:
                progress.event({"event": "build", "service": item.service})
                progress.event({"event": "built", "service": item.service, "digest": item.built.digest,
                                "reused": True, "replaced_corrupt": []})
                progress.event({"event": "release", "service": item.service, "release": item.release.id,
                                "created": False})
        deploy_text.deploy_outcomes_text(outcomes, out)
        return _served(chunks)


def _console(terminal: dict[str, Any], chunks: list[list[Any]], *, stderr: bool) -> Any:
    from rich.console import Console

    environ = {k: str(v) for k, v in dict(terminal.get("environ") or {}).items() if k in TERMINAL_ENVIRON}
    stream = _Stream(2 if stderr else 1, bool(terminal.get("stderr_tty" if stderr else "stdout_tty")),
                     str(terminal.get("encoding") or "utf-8"), chunks)
    width, height = views.console_width(bool(terminal.get("stdout_tty"))), None
    size = terminal.get("size")
    if width is None and size and environ.get("TERM", "").lower() not in ("dumb", "unknown"):
        # The caller's terminal size (this process has none), overridden by COLUMNS/LINES as rich does.
        columns, lines = environ.get("COLUMNS", ""), environ.get("LINES", "")
        width = int(columns) if columns.isdigit() else int(size[0])
        height = int(lines) if lines.isdigit() else int(size[1])
    return Console(file=cast("IO[str]", stream), width=width, height=height, legacy_windows=False,
                   _environ=environ, **views.CONSOLE_OPTIONS)


def _served(output: list[list[Any]], code: int = 0) -> dict[str, Any]:
    """`output`: what to write, in order: [1 (stdout) or 2 (stderr), text]; `code`: the command's exit code."""
    return {"served": True, "output": output, "code": code}


def _not_served(why: str) -> dict[str, Any]:
    return {"served": False, "why": why}
