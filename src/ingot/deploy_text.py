"""The text of `ingot deploy`: its progress as events come, then a line per service, on a console given by
the caller: the CLI's own, or one the agent makes for a thin client (ingot.cli.fast, a no-change deploy),
so both print the same bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ingot.views import short

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from ingot.operations import DeployOutcome


def pinned_note(path: Path) -> str:
    return f"pinned public key in {path.name}: commit it (releases are checked against it before they start)"


class DeployProgress:
    """Renders deploy events: a spinner line for the running step on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._status: Status | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_spinner()

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _line(self, text: str) -> None:
        self._stop_spinner()
        self.console.print(text)

    def _running(self, text: str) -> None:
        if not self.live:
            self.console.print(text)
            return
        self._stop_spinner()
        self._status = self.console.status(text)
        self._status.start()

    def output(self, line: str) -> None:
        self._line(f"  [dim]│ {line}[/dim]" if self.live else f"  | {line}")

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        service = event.get("service", "")
        if kind == "build":
            self._running(f"{service}: building")
        elif kind == "built":
            how = "unchanged, reused" if event.get("reused") else "built"
            if event.get("replaced_corrupt"):
                how = "built: the stored copy was damaged and has been replaced"
            self._line(f"{service}: artifact {short(event['digest'])} ({how})")
        elif kind == "pinned":
            self._line(pinned_note(Path(event["path"])))
        elif kind == "release":
            how = "new, signed" if event.get("created") else "already exists"
            self._line(f"{service}: release {event['release']} ({how})")
        elif kind == "plan":
            steps = event["plan"]["steps"]
            self._line(f"{service}: deployment {event['deployment']}, {len(steps)} steps")
        elif kind == "waiting":
            self._running(f"{service}: {event['message']}")
        elif kind == "step":
            self._step(service, event)
        elif kind == "release_output":  # the release_command's output, as it runs
            self._stop_spinner()
            self.console.print(f"{service}:   | {event.get('line', '')}", markup=False, highlight=False)

    def _step(self, service: str, event: dict[str, Any]) -> None:
        label = f"[{event['index']}/{event['total']}] {event['step']['description']}"
        if event["status"] == "started":
            self._running(f"{service}: {label}")
        elif event["status"] == "done":
            mark = "[green]✓[/green]" if self.live else "done"
            self._line(f"{service}: {mark} {label} ({event['seconds']:.2f}s)")
            note = (event.get("detail") or {}).get("note")
            if note:
                self._line(f"{service}: {note}")
            warning = (event.get("detail") or {}).get("warning")
            if warning:
                self._line(f"{service}: warning: {warning}")
        else:
            mark = "[red]✗[/red]" if self.live else "FAILED"
            self._line(f"{service}: {mark} {label}: {event.get('error', '')}")


def deploy_outcomes_text(outcomes: Iterable[DeployOutcome], console: Console) -> None:
    """What `ingot deploy` prints once done (without --json): per service, what serves it now."""
    for outcome in outcomes:
        if outcome.nothing_changed:
            console.print(f"{outcome.service}: nothing changed — release {outcome.release} already serves "
                          f"{outcome.url} (no new release)")
        else:
            console.print(f"{outcome.service}: release {outcome.release} is live at {outcome.url}")
        verifying_text(outcome, console)


def verifying_text(outcome: DeployOutcome, console: Console) -> None:
    """The verification window a deploy, rollback or promote left open, if any."""
    window = outcome.verifying
    if window and window.get("previous"):
        console.print(f"  verifying until {window['until']} ({window['seconds']:g}s): release "
                      f"{window['previous']} stays warm meanwhile; 'ingot rollback' before then is a traffic "
                      "switch, a failed verification switches back by itself", markup=False)
