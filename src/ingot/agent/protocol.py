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


def deploy_environ(environ: dict[str, str]) -> dict[str, str]:
    """What of a process's environment can change what a deploy does (the state's and keys' places, the
    engines, ingot's own settings): a thin client's no-change deploy is answered only when the agent's
    is the same (ingot.agent.cli_answers). The actor and the spec and state are sent resolved instead."""
    return {k: v for k, v in environ.items()
            if (k.startswith("INGOT_") and k not in _NOT_COMPARED) or k in _DEPLOY_ENVIRON}


_DEPLOY_ENVIRON = ("HOME", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "DOCKER_HOST", "KUBECONFIG")
# Sent resolved (the actor, the spec, the state), or what only says how a process runs (the agent's
# INGOT_DAEMON, a caller's INGOT_FAST_PATH and INGOT_DEBUG).
_NOT_COMPARED = ("INGOT_ACTOR", "INGOT_FILE", "INGOT_HOME", "INGOT_FAST_PATH", "INGOT_DEBUG", "INGOT_DAEMON")
