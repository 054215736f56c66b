"""Ctrl-C on `ingot deploy`, `rollback` or `promote` once the agent runs the operation: abort or detach.

Interrupting this process does not stop the agent's operation, and the environment's lock stays with
the agent until it ends. On a terminal the command asks what to do: abort (traffic back to the previous
release, as `ingot abort` does; a second Ctrl-C while asking also means abort) or detach (the operation
goes on; the command says how to follow it). Without a terminal to ask on (stdin not a TTY: scripts, CI,
a SIGINT sent by another process) it detaches, and says so: a signal alone must not undo a deploy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TextIO

import typer

from ingot import operations
from ingot.cli.output import errors
from ingot.project import Project

DETACHED_EXIT = 130  # the shell's code for "ended by SIGINT": the command stopped, its operation did not


def ask(handed: operations.HandedOver, stdin: TextIO, out: TextIO) -> str:
    """Ask abort or detach until answered; "abort", or "detach" (also at the end of input)."""
    back = f"release {handed.previous}" if handed.previous else "nothing (there was no release before)"
    out.write(f"\ninterrupted: {handed.describe()} goes on in the agent, which holds the lock of "
              f"{handed.environment} until it ends.\n"
              f"  a  abort it: traffic back to {back}, its new instances retired (as 'ingot abort')\n"
              f"  d  detach: it goes on; follow it with 'ingot status' and 'ingot history'\n")
    while True:
        out.write("abort or detach? [a/d] (Ctrl-C again aborts) ")
        out.flush()
        try:
            answer = stdin.readline()
        except KeyboardInterrupt:
            out.write("\n")
            return "abort"
        if not answer:
            out.write("\n")
            return "detach"
        choice = answer.strip().lower()
        if choice in ("a", "abort"):
            return "abort"
        if choice in ("d", "detach"):
            return "detach"


def after_interrupt(project: Project, handed: operations.HandedOver,
                    guarded: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]]) -> NoReturn:
    """Ask (or detach without a terminal), do it, say what happened, and exit."""
    if sys.stdin.isatty():
        choice = ask(handed, sys.stdin, sys.stderr)
    else:
        errors.print("interrupted, with no terminal to ask abort or detach on: detached", markup=False)
        choice = "detach"
    not_started = (f"; not started: {', '.join(handed.not_started)}" if handed.not_started else "")
    if choice == "detach":
        errors.print(f"detached: {handed.describe()} goes on in the agent, which holds the lock of "
                     f"{handed.environment} until it ends{not_started}. Follow it with 'ingot status --env "
                     f"{handed.environment}' and 'ingot history --env {handed.environment}'; stop it with "
                     f"'ingot abort --env {handed.environment}'", markup=False)
        raise typer.Exit(DETACHED_EXIT)
    errors.print(f"aborting {handed.describe()} ...", markup=False)
    # A deploy of several services in parallel handed them all over: each is aborted (it is its own deployment),
    # all at once, since the lock they share is let go only when the last of them ends.
    every = [handed, *handed.others]
    with ThreadPoolExecutor(len(every)) as pool:
        codes = list(pool.map(lambda one: _abort(project, one, not_started, guarded), every))
    raise typer.Exit(max(codes))


def _abort(project: Project, handed: operations.HandedOver, not_started: str,
           guarded: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]]) -> int:
    """Abort one handed-over operation and say how it ended; the exit code that outcome calls for."""
    result = guarded(lambda: operations.abort_handed_over(project, handed))
    serving = f"release {result['serving']} serves" if result["serving"] else "nothing serves it"
    if result["outcome"] == "aborted":
        errors.print(f"aborted: {serving} {handed.service} in {handed.environment}; deployment "
                     f"{result['deployment']} is recorded as aborted{not_started}", markup=False)
        return 1
    how = result["outcome"] or "had nothing to do and ended"
    errors.print(f"too late to abort: the {handed.kind} of {handed.service} to release {handed.release} in "
                 f"{handed.environment} {how} first; {serving} {handed.service} now{not_started} "
                 "('ingot rollback' goes back)", markup=False)
    return 0 if result["outcome"] in ("succeeded", None) else 1
