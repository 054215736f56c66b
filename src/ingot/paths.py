"""Where ingot keeps its state: `.ingot/<project>/` beside the spec (see ingot.state_layout) unless
--state or INGOT_HOME names a directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# AF_UNIX paths are limited to 108 bytes; deep state directories fall back to a short path.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class StatePaths:
    root: Path
    # The project's pinned public key, beside its spec (see ingot.signing); not part of the state, and
    # unknown to an agent started for a bare state directory. Not part of a state's identity either.
    pin: Path | None = field(default=None, compare=False)

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def runs(self) -> Path:
        """Checkouts of artifacts that process instances run from."""
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


def explicit_state_dir(explicit: Path | None = None) -> StatePaths | None:
    """The state directory --state (`explicit`) or $INGOT_HOME names, if either does."""
    if explicit is not None:
        return StatePaths(explicit.resolve())
    from_env = os.environ.get("INGOT_HOME")
    if from_env:
        return StatePaths(Path(from_env).resolve())
    return None
