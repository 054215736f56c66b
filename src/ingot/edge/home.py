"""Where the machine's edge keeps its state: `INGOT_EDGE_HOME`, else `/var/lib/ingot/edge` (root) or
`$XDG_STATE_HOME/ingot/edge` (anyone else, who cannot write /var/lib)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ingot.errors import OperationFailed

HOME_ENV = "INGOT_EDGE_HOME"
# AF_UNIX paths are limited to 108 bytes, and haproxy's admin sockets live under the home too.
_MAX_SOCKET_PATH = 100


def default_home() -> Path:
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/ingot/edge")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ingot" / "edge"


@dataclass(frozen=True)
class EdgeHome:
    root: Path

    @classmethod
    def default(cls) -> EdgeHome:
        return cls(default_home())

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "edge.pid"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def log(self) -> Path:
        return self.root / "edge.log"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def router_dir(self, router_id: str) -> Path:
        """The workdir of one haproxy: short, since its admin socket must fit AF_UNIX."""
        return self.root / "haproxy" / hashlib.sha256(router_id.encode()).hexdigest()[:12]

    def prepare(self) -> None:
        """Create the home 0700, owned by this user; refuse one that someone else owns or can write."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(self.root)
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
            raise OperationFailed(f"the edge's home {self.root} is not a directory owned by this user",
                                  details=[f"set {HOME_ENV} to a directory of your own"])
        if info.st_mode & 0o077:
            os.chmod(self.root, 0o700)
        if len(str(self.control_socket)) > _MAX_SOCKET_PATH or len(str(self.router_dir("x") / "admin.sock")) > 107:
            raise OperationFailed(f"the edge's home {self.root} is too deep for its Unix sockets",
                                  details=[f"set {HOME_ENV} to a shorter path (at most ~70 characters)"])
