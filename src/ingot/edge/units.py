"""systemd units for the two planes, written by `ingot install` where systemd runs.

The edge gets one unit per machine (`ingot-edge.service`), each project's agent one of its own
(`ingot-agent-<project>.service`, named from the project and a digest of its state directory so two
checkouts of one project never share a unit). Both restart on failure within a second; exit code 75
(another one already runs, `AlreadyRunning`) and 0 (stopped on purpose, `ingot down`) are final. The
agent's unit orders itself after the edge's and wants it, but does not require it: the agent starts
an edge on demand if it is missing, and an edge restart never stops an agent (or the reverse).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ingot.edge.home import HOME_ENV, EdgeHome

EDGE_UNIT = "ingot-edge.service"


@dataclass(frozen=True)
class Unit:
    name: str
    text: str


def _exec(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _unit(*, description: str, after: str, environment: dict[str, str], command: list[str], why_kill_mode: str) -> str:
    env = "".join(f"Environment={k}={v}\n" for k, v in environment.items())
    return f"""[Unit]
Description={description}
After={after}
Wants={after}

[Service]
Type=simple
{env}ExecStart={_exec(*command)}
Restart=on-failure
RestartSec=1
RestartPreventExitStatus=75
SuccessExitStatus=75
# {why_kill_mode}
KillMode=process
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def edge_unit(home: EdgeHome, python: str = sys.executable) -> Unit:
    """The edge under ingot's own supervisor even here: the supervisor holds the built-in routers'
    listening sockets across an edge restart (`ingot.fdstore`), which a plain `Restart=` cannot."""
    return Unit(EDGE_UNIT, _unit(
        description="ingot edge: the data plane serving every project's routers on this machine",
        after="network-online.target", environment={HOME_ENV: str(home.root)},
        command=[python, "-m", "ingot.supervision", "--pidfile", str(home.supervisor_pidfile),
                 "ingot.edge.__main__:main", "--", "serve", "--persistent", "--home", str(home.root)],
        why_kill_mode="haproxy outlives an edge restart, for the next edge to adopt; a stop (SIGTERM to the "
                      "supervisor, passed on to the edge) stops it."))


def agent_unit_name(project: str, state_dir: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", project) or "project"
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return f"ingot-agent-{safe}-{tag}.service"


def agent_unit(project: str, state_dir: Path, home: EdgeHome, python: str = sys.executable,
               spec: Path | None = None) -> Unit:
    """With `spec`, the agent checks releases against the public key pinned beside it (see ingot.signing),
    not against the state's own key."""
    pinned = ["-f", str(spec)] if spec is not None else []
    return Unit(agent_unit_name(project, state_dir), _unit(
        description=f"ingot agent of project {project} ({state_dir}): the control plane", after=EDGE_UNIT,
        environment={HOME_ENV: str(home.root), "INGOT_DAEMON": "1"},
        command=[python, "-m", "ingot", "--state", str(state_dir), "agent", *pinned, "--foreground"],
        why_kill_mode="Instances run in their own process groups and outlive the agent: only the agent is "
                      "stopped."))


def systemd_runs() -> bool:
    """Whether systemd is this machine's init (its documented test: /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()
