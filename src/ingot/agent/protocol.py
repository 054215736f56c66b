"""The agent's local protocol: one JSON request line, then JSON event lines, the last with "done"."""

from __future__ import annotations

import json
from typing import Any

# What rich reads of the environment to decide on colours, terminal-ness and size (rich.console.Console):
# a thin client (ingot.cli.fast) sends these for the agent to render its output as it would have.
TERMINAL_ENVIRON = ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
                    "COLUMNS", "LINES", "JUPYTER_COLUMNS", "JUPYTER_LINES")


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a message must be a JSON object")
    return data
