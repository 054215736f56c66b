"""Where ingot keeps its state: `.ingot/<project>/` beside the spec (see ingot.state_layout) unless
--state or INGOT_HOME names a directory.

State at rest is ingot's alone: the state directory is 0700 (`StatePaths.secure()`, on every open), and
every ingot process works under umask 077 (`private_umask()`), so the database, logs, keys, pidfiles and
sockets it creates are 0600 and its directories 0700. Nothing lives under a predictable name in a shared
temporary directory: the one fallback outside the state, the agent's socket when the state's path is
too long for AF_UNIX, is in a private directory (`/run/ingot` as root, `$XDG_RUNTIME_DIR/ingot`, else
`<tmp>/ingot-<uid>`), made 0700, opened without following a symlink, and refused unless it is ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ingot.errors import OperationFailed

OWN_UMASK = 0o077
# AF_UNIX paths are limited to 108 bytes; deep state directories fall back to a short path.
_MAX_SOCKET_PATH = 100
RUNS_HOME_ENV = "INGOT_RUNS_HOME"
RUNS_HOME = Path("/var/lib/ingot/runs")


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
        """Checkouts of artifacts that process instances run from. As root, outside the state directory
        (0700, and perhaps under a private one such as /root), where the instances' own users can reach
        them: `<runs home>/<hash of the state directory>` (see `ingot.runtimes.fence`)."""
        if os.geteuid() == 0:
            return runs_home() / state_tag(self.root)
        return self.root / "runs"

    @property
    def volumes(self) -> Path:
        """Process instances' volumes, `<project>/<environment>/<name>` below. As root, beside the runs (the
        state directory is private, and each volume belongs to its instances' user); else in the state."""
        if os.geteuid() == 0:
            return runs_home() / "volumes" / state_tag(self.root)
        return self.root / "volumes"

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
        return private_dir(_socket_dir()) / f"{state_tag(self.root)}.sock"

    def secure(self) -> StatePaths:
        """Make the state directory private (0700, created so if missing). A state made by an earlier
        version (0755, files 0644) is narrowed: its database, logs, pidfiles and keys to 0600."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(mode=0o700)
        mode = stat.S_IMODE(self.root.stat().st_mode)
        if mode != 0o700:
            os.chmod(self.root, 0o700)
            _narrow(self.root)
        return self

    def instance_log(self, environment: str, service: str, instance_id: str) -> Path:
        return self.logs / environment / service / f"{instance_id}.log"


def private_umask() -> None:
    """Files ingot creates from now on are its own: 0600, directories 0700 (children inherit it)."""
    os.umask(OWN_UMASK)


def private_dir(path: Path) -> Path:
    """`path` as a directory of this user's only: made 0700 if missing, opened without following a
    symlink, refused if someone else owns it (they could read or swap what is in it), narrowed to 0700."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise OperationFailed(f"{path} is not a private directory ingot can use: {exc.strerror}",
                              details=["it may be a symlink; remove it and try again"]) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise OperationFailed(f"{path} belongs to uid {st.st_uid}, not to ingot's user (uid {os.geteuid()}); "
                                  "refusing to use it", details=["someone else made it first: remove it"])
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def _socket_dir() -> Path:
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path("/run/ingot")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "ingot"
    return Path(tempfile.gettempdir()) / f"ingot-{os.geteuid()}"


def _narrow(root: Path) -> None:
    """A state directory made before it was private: its own files (database, agent log, pidfiles) and
    everything under keys/ and logs/ to 0600, directories there 0700. Artifacts and git checkouts keep
    their modes (execute bits are part of an artifact's digest); the 0700 above them fences them."""
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, 0o600)
    for part in ("keys", "logs"):
        for top, _dirs, files in os.walk(root / part):
            with contextlib.suppress(OSError):
                os.chmod(top, 0o700)
            for name in files:
                path = os.path.join(top, name)
                with contextlib.suppress(OSError):
                    if not os.path.islink(path):
                        os.chmod(path, 0o600)


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
