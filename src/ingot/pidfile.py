"""One daemon per state: an exclusive lock on a pidfile, held for the daemon's whole life (agent, edge)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ingot.errors import AlreadyRunning


@contextlib.contextmanager
def holding(path: Path, what: str) -> Iterator[None]:
    """Hold `path` (created 0600) with this process's pid in it; `AlreadyRunning` names the holder if taken.

    The lock goes with the process, however it ends: a killed daemon never leaves a stale one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        holder = path.read_text().strip() or "?"
        raise AlreadyRunning(f"{what} is already running (pid {holder})") from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Emptied before the lock goes, so that a reader never takes this pid for the next daemon's.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
