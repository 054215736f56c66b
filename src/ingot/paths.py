"""Where ingot keeps its state: `.ingot/<project>/` beside the spec (see ingot.state_layout) unless
--state or INGOT_HOME names a directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# AF_UNIX paths are limited to 108 bytes; deep state directories fall back to a short path.
_MAX_SOCKET_PATH = 100
RUNS_HOME_ENV = "INGOT_RUNS_HOME"
RUNS_HOME = Path("/var/lib/ingot/runs")


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def runs(self) -> Path:
        """Checkouts of artifacts that process instances run from. As root, outside the state directory
        (0700, and perhaps under a private one such as /root), where the instances' own users can reach
        them: `<runs home>/<hash of the state directory>` (see `ingot.runtimes.fence`)."""
        if os.geteuid() == 0:
            return runs_home() / state_tag(self.root)
        return self.root / "runs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def agent_pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def supervisor_pid(self) -> Path:
        """ingot's supervisor of the agent, which starts it again when it dies (see `ingot.supervision`)."""
        return self.root / "supervisor.pid"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    @property
    def agent_socket(self) -> Path:
        preferred = self.root / "agent.sock"
        if len(str(preferred)) <= _MAX_SOCKET_PATH:
            return preferred
        tag = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"ingot-{tag}.sock"

    def instance_log(self, environment: str, service: str, instance_id: str) -> Path:
        return self.logs / environment / service / f"{instance_id}.log"


def runs_home() -> Path:
    """Where root's ingot keeps the checkouts process instances run from ($INGOT_RUNS_HOME)."""
    return Path(os.environ.get(RUNS_HOME_ENV) or RUNS_HOME)


def state_tag(root: Path | str) -> str:
    """A short name for a state directory, for the places outside it that belong to it."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def explicit_state_dir(explicit: Path | None = None) -> StatePaths | None:
    """The state directory --state (`explicit`) or $INGOT_HOME names, if either does."""
    if explicit is not None:
        return StatePaths(explicit.resolve())
    from_env = os.environ.get("INGOT_HOME")
    if from_env:
        return StatePaths(Path(from_env).resolve())
    return None
