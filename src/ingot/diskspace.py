"""Disk space: checked before ingot copies anything, and said plainly when it runs out.

A copy that fills the disk half-way leaves a partial tree behind and, worse, takes the space the state
database needs to record what happened. So every copy (a build's staging tree, an artifact stored from
another filesystem, a checkout under `runs/`) first checks that the filesystem has room for it plus
`HEADROOM`, which stays free for the database, the ledger and the instance logs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ingot.errors import OperationFailed

# Kept free on top of what a copy needs: the database's writes while a failed deploy is recorded and
# undone, and a little log output. A few MiB, so that small disks are still usable.
HEADROOM = 8 * 1024 * 1024


class DiskFull(OperationFailed):
    """Not enough space on a filesystem ingot writes to; nothing was copied."""


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def tree_size(root: Path) -> int:
    """Bytes the regular files under `root` take (what a copy of it needs), symlinks not followed."""
    total = 0
    for current, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(current, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(current, name)):
                total += st.st_size
    return total


def require_space(path: Path, size: int, what: str) -> None:
    """Refuse, naming the path and the space needed, unless `size` bytes plus the headroom fit at `path`."""
    needed = size + HEADROOM
    free = free_bytes(path)
    if free < needed:
        raise DiskFull(
            f"not enough disk space for {what} at {path}: {human(needed)} needed ({human(size)} to copy, "
            f"plus {human(HEADROOM)} kept free for the state database and logs), {human(free)} free",
            details=["free some space on that filesystem, then run the command again"],
        )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: OSError, what: str) -> DiskFull:
    """The message for a write that ran out of space anyway (something else filled the disk meanwhile)."""
    where = Path(exc.filename) if exc.filename else None
    free = f"; {human(free_bytes(where))} free" if where is not None else ""
    return DiskFull(f"the disk is full: {what} failed writing {where or 'a file'}{free}",
                    details=[f"{exc.strerror}", "free some space on that filesystem, then run the command again"])
