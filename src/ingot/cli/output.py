"""Terminal output: a live progress display on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from ingot.deploy_text import DeployProgress
from ingot.deploy_text import pinned_note as pinned_note  # the CLI's commands print it too
from ingot.views import CONSOLE_OPTIONS, console_width, json_text
from ingot.views import short as short  # shared with the agent's renderings for the thin client
from ingot.views import when as when

_WIDTH = console_width(sys.stdout.isatty())
console = Console(width=_WIDTH, **CONSOLE_OPTIONS)
errors = Console(stderr=True, width=_WIDTH, **CONSOLE_OPTIONS)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


class Progress(DeployProgress):
    """Deploy events on this process's stdout (see ingot.deploy_text)."""

    def __init__(self) -> None:
        super().__init__(console)
