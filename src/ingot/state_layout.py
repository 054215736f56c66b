"""Where a project's state lives by default: `.ingot/<project>/` beside its spec, one per project.

Two spec files in one directory are two projects (the bundled example's `ingot.yaml` and
`ingot.container.yaml`), and each gets its own store, artifacts, keys, agent (socket and pidfile) and
routers, so deploying or taking down one never touches the other.

Earlier versions kept the state in `.ingot/` itself, shared by every spec in the directory. Such a
*legacy* state belongs to one project:

- the one its ownership marker names (`.ingot/project`, written when a project first claims it);
- else the project of the release that went live last in it (when two projects shared it, the one
  whose release runs there now: the other's was stopped by it);
- else the project of its newest release; else (nothing was ever released from it: only config,
  secrets or keys) the first project that opens it claims it.

The owner's state is moved into `.ingot/<owner>/` (every entry renamed, within the same file system),
but only while nothing uses it: no agent runs for it, no instance is recorded as running, and no other
ingot process has it open. Until then the owner keeps using `.ingot/` in place and the move happens at
a later command (after `ingot down`, say). A move interrupted half-way is finished by the next command.
Other projects never touch it. `--state` and `$INGOT_HOME` name a state directory as they always did.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ingot.errors import UserInputError
from ingot.paths import StatePaths

STATE_DIR = ".ingot"
MARKER = "project"
LAYOUT_LOCK = ".layout.lock"
# What a legacy state directory holds; only these are moved (anything else stays where it is).
LEGACY_ENTRIES = ("artifacts", "runs", "keys", "logs", "routers", "gitops", "agent.pid", "agent.log",
                  "agent.sock", MARKER, "state.db-wal", "state.db-shm", "state.db")
_held: list[int] = []  # shared locks on legacy states this process uses in place, kept for its life


@dataclass(frozen=True)
class Resolved:
    paths: StatePaths
    moved_from: Path | None = None  # the legacy state was moved here just now
    claimed: bool = False  # ... and it named no project: this one claimed it


def project_state(spec_dir: Path, project: str) -> Resolved:
    """The default state of `project` whose spec is in `spec_dir`, moving a legacy state it owns."""
    base = spec_dir / STATE_DIR
    own = base / project
    if _finish_move(base, project):
        return Resolved(StatePaths(own), moved_from=base)
    if not (base / "state.db").exists() or (own / "state.db").exists():
        return Resolved(StatePaths(own))
    owner = legacy_owner(base)
    if owner is not None and owner != project:
        if project in LEGACY_ENTRIES:
            raise UserInputError(f"project {project!r}: {base} still holds the state of project {owner!r} in "
                                 f"the older layout, where {project!r} names one of its parts; run an ingot "
                                 f"command for {owner!r} once nothing of it runs (after 'ingot down'), which "
                                 "moves it to its own directory")
        return Resolved(StatePaths(own))
    return _take_or_share(base, project, claimed=owner is None)


def legacy_owner(base: Path) -> str | None:
    """The project a legacy state directory belongs to (see the module's docstring); None if unclaimed."""
    with contextlib.suppress(OSError):
        named = (base / MARKER).read_text().strip()
        if named:
            return named
    queries = (
        # The release that went live last (activations are append-only; the newest row per service counts).
        "SELECT r.project FROM activations a JOIN releases r ON r.id = a.release_id WHERE a.id IN "
        "(SELECT max(id) FROM activations GROUP BY environment, service) ORDER BY a.id DESC LIMIT 1",
        "SELECT project FROM releases ORDER BY created_at DESC LIMIT 1",
    )
    try:
        with contextlib.closing(sqlite3.connect(base / "state.db", timeout=30)) as db:
            for query in queries:
                row = db.execute(query).fetchone()
                if row:
                    return str(row[0])
    except sqlite3.Error:
        return None  # no tables yet (a store being created): nothing names a project
    return None


def _take_or_share(base: Path, project: str, *, claimed: bool) -> Resolved:
    """Move the legacy state at `base`, which belongs to `project`, if nothing uses it; else use it in place."""
    fd = os.open(base / LAYOUT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # another process uses it in place (or is moving it: wait for that)
        if not (base / "state.db").exists():  # it was just moved
            os.close(fd)
            return Resolved(StatePaths(base / project))
        if claimed:
            _claim(base, project)
        _held.append(fd)
        return Resolved(StatePaths(base))
    if claimed:
        _claim(base, project)
    if _idle(base):
        try:
            _move(base, project)
        finally:
            os.close(fd)
        return Resolved(StatePaths(base / project), moved_from=base, claimed=claimed)
    fcntl.flock(fd, fcntl.LOCK_SH)  # in use: this process uses it in place too, and keeps it from moving
    _held.append(fd)
    return Resolved(StatePaths(base))


def _claim(base: Path, project: str) -> None:
    with contextlib.suppress(FileExistsError):
        fd = os.open(base / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as marker:
            marker.write(project + "\n")


def _idle(base: Path) -> bool:
    """No agent runs for this state (its pidfile is not locked) and no instance is recorded as running."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(base / "agent.pid", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    try:
        with contextlib.closing(sqlite3.connect(base / "state.db", timeout=30)) as db:
            running = db.execute("SELECT count(*) FROM instances WHERE state IN ('starting', 'running')").fetchone()
            # Everything into the database file itself, so that it moves whole.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        return False
    return not running or running[0] == 0


def _move(base: Path, project: str) -> None:
    """Rename the legacy entries into `.moving-<project>`, then that to `<project>`: a move interrupted
    anywhere is finished by `_finish_move` (the database goes last, so its presence says "not yet")."""
    staging = base / f".moving-{project}"
    staging.mkdir(exist_ok=True)
    for name in LEGACY_ENTRIES:
        with contextlib.suppress(FileNotFoundError):
            os.rename(base / name, staging / name)
    os.rename(staging, base / project)


def _finish_move(base: Path, project: str) -> bool:
    staging = base / f".moving-{project}"
    if not staging.is_dir():
        return False
    if (base / "state.db").exists():
        _move(base, project)  # interrupted before the database went: take the rest along
    elif not (base / project).exists():
        os.rename(staging, base / project)
    return True


def states_in(spec_dir: Path) -> list[Path]:
    """Every state directory under `spec_dir/.ingot`: per project, and a legacy one not moved yet."""
    base = spec_dir / STATE_DIR
    found = [base] if (base / "state.db").exists() else []
    with contextlib.suppress(OSError):
        found += sorted(p for p in base.iterdir() if (p / "state.db").exists())
    return found
