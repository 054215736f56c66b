"""Terminal output: a live progress display on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.status import Status

from ingot.views import CONSOLE_OPTIONS, console_width, json_text
from ingot.views import short as short  # shared with the agent's renderings for the thin client
from ingot.views import when as when

_WIDTH = console_width(sys.stdout.isatty())
console = Console(width=_WIDTH, **CONSOLE_OPTIONS)
errors = Console(stderr=True, width=_WIDTH, **CONSOLE_OPTIONS)


def pinned_note(path: Path) -> str:
    return f"pinned public key in {path.name}: commit it (releases are checked against it before they start)"


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


class Progress:
    """Renders deploy events: a spinner line for the running step on a terminal, plain lines elsewhere."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self._status: Status | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_spinner()

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _line(self, text: str) -> None:
        self._stop_spinner()
        console.print(text)

    def _running(self, text: str) -> None:
        if not self.live:
            console.print(text)
            return
        self._stop_spinner()
        self._status = console.status(text)
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
            console.print(f"{service}:   | {event.get('line', '')}", markup=False, highlight=False)

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
