"""Instances as local OS processes started from a read-only artifact.

Each instance is a fresh process in its own process group (so it outlives an agent restart and can
be stopped as a whole), with a clean environment built only from the release. Its output goes through
a pipe to a small logger process (`logpipe.py`) that writes the instance's log file, capped and rotated
by size: `LOG_MAX_BYTES` per file (10 MiB, or $INGOT_LOG_MAX_BYTES) and `LOG_BACKUPS` rotated files
(`.1`, `.2`). So one instance's log takes at most about 30 MiB, and `ingot logs` still has a tail of
several hundred thousand lines to show.

As root, each service's instances run as a user of their own, from a checkout only that user can read,
with no_new_privs, rlimits and (where cgroup v2 allows) their `resources`: see `ingot.runtimes.fence`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

from ingot import volumes
from ingot.errors import OperationFailed
from ingot.paths import runs_home, state_tag
from ingot.runtimes import fence, logpipe, ports
from ingot.runtimes.base import LOG_BACKUPS, InstanceRequest, Observation, log_max_bytes
from ingot.spec.models import expand_own
from ingot.store import InstanceRow

log = logging.getLogger("ingot.agent")

# The interpreter ingot runs on is the one an artifact's dependencies were installed for.
PYTHON_ALIASES = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`: tells a live instance from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    return stat.rsplit(")", 1)[1].split()[19]


def resolve_command(command: tuple[str, ...], python: str = sys.executable) -> list[str]:
    first, *rest = command
    if first in PYTHON_ALIASES:
        return [python, *rest]
    return [first, *rest]


class ProcessRuntime:
    name = "process"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._loggers: list[subprocess.Popen[bytes]] = []
        # (pid, start time) -> exit code of our children once reaped, so every later observe says it too.
        self._exit_codes: dict[tuple[int, str | None], int] = {}

    def start(self, request: InstanceRequest) -> InstanceRow:
        if request.artifact_path is None or not request.command:
            raise OperationFailed(
                f"instance {request.instance_id}: the process runtime needs an artifact and a command"
            )
        if not request.artifact_path.is_dir():
            raise OperationFailed(f"instance {request.instance_id}: its checkout {request.artifact_path} is missing")
        identity = fence.identity_for(request.project, request.service)
        if identity is not None:
            if runs_home() in request.artifact_path.parents:
                fence.open_runs_dir(request.artifact_path.parent)
            fence.hand_over(request.artifact_path, identity)
            if not fence.may(request.artifact_path, identity, os.R_OK | os.X_OK):
                raise OperationFailed(f"instance {request.instance_id}: its user {identity.user} cannot reach its "
                                      f"checkout {request.artifact_path} (a directory above it is private)",
                                      details=[f"checkouts belong under {runs_home()}"])
        for volume in request.volumes:
            fence.own_volume(Path(volume.source), identity)
        # Bound as the instance's user: a port above 1024, free now, outside the range outgoing connections
        # take theirs from (see ingot.runtimes.ports). A worker has none.
        port = 0 if request.worker else ports.instance_port()
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        if identity is not None:
            env["HOME"] = fence.NO_HOME  # ingot's home (/root) is not its to read
            if "TMPDIR" in env and not fence.may(Path(env["TMPDIR"]), identity, os.W_OK | os.X_OK):
                del env["TMPDIR"]
        env.update(request.env)
        env.update(
            {
                **({} if request.worker else {"PORT": str(port)}),
                **volumes.variables(request.volumes, "process"),
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
                "INGOT_RELEASE": request.release_id,
                "INGOT_SERVICE": request.service,
                "INGOT_ENVIRONMENT": request.environment,
                "INGOT_INSTANCE": request.instance_id,
                "INGOT_PROJECT": request.project,
                "INGOT_STATE": request.state_dir,
            }
        )
        # ${PORT} and ingot's other variables in the arguments, now that their values are known.
        command = resolve_command(tuple(expand_own(request.command, env)), fence.interpreter_for(identity))
        deps = request.artifact_path / ".ingot-deps"
        if deps.is_dir():
            env["PYTHONPATH"] = str(deps)
        request.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        group = fence.cgroups().create(f"{state_tag(request.state_dir)}-{request.instance_id}", request.resources)
        setup = fence.preexec(identity, fence.rlimits(identity is not None),
                              str(group / "cgroup.procs") if group is not None else None)
        read_end, write_end = os.pipe()
        try:
            if not request.attach:
                self._start_logger(request, read_end)
            try:
                child = subprocess.Popen(
                    command,
                    cwd=request.artifact_path,
                    env=env,
                    stdin=None if request.attach else subprocess.DEVNULL,
                    stdout=None if request.attach else write_end,
                    stderr=None if request.attach else subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=setup,  # safe with threads: see fence, it only makes prepared, lock-free calls
                )
            except (OSError, subprocess.SubprocessError) as exc:
                if group is not None:
                    fence.cgroups().remove(group)
                user = f" as {identity.user}" if identity is not None else ""
                raise OperationFailed(
                    f"instance {request.instance_id} of {request.service} could not start{user}: {exc}",
                    details=[f"command: {' '.join(request.command)}", f"its log: {request.log_path}"],
                ) from exc
        finally:
            # The children hold their ends; the logger sees end of output once the instance is gone.
            os.close(read_end)
            os.close(write_end)
        self._children[child.pid] = child
        return InstanceRow(
            id=request.instance_id,
            environment=request.environment,
            service=request.service,
            release_id=request.release_id,
            runtime=self.name,
            pid=child.pid,
            proc_start=process_start_time(child.pid),
            host="127.0.0.1",
            port=port,
            log_path=str(request.log_path),
            started_at=time.time(),
            stopped_at=None,
            state="starting",
            handle=str(request.artifact_path),
        )

    def _start_logger(self, request: InstanceRequest, read_end: int) -> None:
        try:
            # Isolated (-I) and without site (-S): it imports only the standard library, in milliseconds.
            logger = subprocess.Popen(
                [sys.executable, "-I", "-S", logpipe.__file__, str(request.log_path), str(log_max_bytes()),
                 str(LOG_BACKUPS)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env={},
                start_new_session=True,
            )
        except OSError as exc:
            raise OperationFailed(f"instance {request.instance_id}: its logger could not start: {exc}") from exc
        self._loggers.append(logger)
        self._loggers = [p for p in self._loggers if p.poll() is None]  # reap the ones that have ended

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        for pid, env in labelled_processes(state_dir):
            if env.get("INGOT_INSTANCE") == instance.id:
                port = env.get("PORT", "")
                return replace(instance, pid=pid, proc_start=process_start_time(pid),
                               port=int(port) if port.isdigit() else 0,
                               handle=process_cwd(pid) or instance.handle, state="starting")
        return None

    def observe(self, instance: InstanceRow) -> Observation:
        pid = instance.pid
        if pid is None:
            return Observation(alive=False, detail="never started (or not known to have started)")
        if pid <= 1:
            # A row that says so was written by someone else: signalling group 1 would signal every process.
            return Observation(alive=False, detail=f"pid {pid} is not an instance")
        code = self._exit_codes.get((pid, instance.proc_start))
        child = self._children.get(pid)
        if code is None and child is not None:
            code = child.poll()
            if code is None:
                return Observation(alive=True)
            self._children.pop(pid, None)
            self._exit_codes[(pid, instance.proc_start)] = code
        if code is not None:
            return Observation(alive=False, exit_code=code, detail=f"exited with code {code}")
        # Not our child (adopted after an agent restart): trust the pid only if its start time matches.
        started = process_start_time(pid)
        if started is None or started != instance.proc_start:
            return Observation(alive=False, detail="process is gone")
        stranger = _not_the_instance(pid, instance)
        if stranger is not None:
            return Observation(alive=False, detail=stranger)
        if _is_zombie(pid):
            return Observation(alive=False, detail="process exited")
        return Observation(alive=True)

    def stop(self, instance: InstanceRow, timeout: float) -> None:
        if instance.pid is None or not self.observe(instance).alive:
            return
        group = fence.cgroups().group_of(instance.pid)
        terminate_group(instance.pid, timeout, lambda: self.observe(instance).alive)
        if group is not None:
            fence.cgroups().remove(group)

    def interrupt(self, instance: InstanceRow) -> None:
        """SIGINT to its process group: started in a session of its own, it gets no Ctrl-C from the caller's
        terminal itself (that goes to the caller, which passes it on here)."""
        if instance.pid is not None and instance.pid > 1 and self.observe(instance).alive:
            _signal_group(instance.pid, signal.SIGINT)

    def log_tail(self, instance: InstanceRow, lines: int = 20) -> list[str]:
        path = Path(instance.log_path)
        if not _is_instance_log(path, instance):
            # The path comes from the store: a row pointing at a key file must not have it read and recorded.
            log.warning("instance %s: its log path %s is not an instance log; not read", instance.id, path)
            return []
        tail = tail_lines(path, lines)
        # Just after a rotation the current file holds little: the rest of the tail is in the rotated one.
        if len(tail) < lines:
            tail = tail_lines(path.with_name(path.name + ".1"), lines - len(tail)) + tail
        return tail


    def follow_log(self, instance: InstanceRow, tail: int | None = None,
                   stop: threading.Event | None = None) -> Iterator[str]:
        """The instance's log lines as its logger writes them (`ingot logs --follow`): its last `tail` lines
        first (None: from its first line), then each new one, across rotations, until `stop` is set; then
        what is left is read. Blocking: read it in a thread."""
        path = Path(instance.log_path)
        if not _is_instance_log(path, instance):
            log.warning("instance %s: its log path %s is not an instance log; not read", instance.id, path)
            return
        follower = _LogFollower(path)
        if tail is not None:
            # From the end as it is now, then its tail: a line written in between shows twice, none is lost.
            follower.start_at_end()
            yield from self.log_tail(instance, tail) if tail > 0 else []
        while True:
            stopping = stop is not None and stop.is_set()
            lines = follower.new_lines()
            yield from lines
            if stopping and not lines:
                yield from follower.rest()
                return
            if not lines:
                time.sleep(FOLLOW_POLL)


# How often a followed log is looked at for new lines.
FOLLOW_POLL = 0.1


class _LogFollower:
    """The new complete lines of an instance's log since the last call, across the logger's rotations
    (it renames the file to .1 and starts a new one) and before the file exists (it is made at the first
    write)."""

    def __init__(self, path: Path) -> None:
        self.path, self.partial = path, b""
        self.handle: IO[bytes] | None = None
        self.handle_ino: int | None = None

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (kept open between calls)
        except OSError:
            return False
        self.handle, self.handle_ino = handle, os.fstat(handle.fileno()).st_ino
        return True

    def start_at_end(self) -> None:
        """Only what is written from now on (a file not there yet is read from its start)."""
        if self._open() and self.handle is not None:
            self.handle.seek(0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        if self.handle is None and not self._open():
            return []
        assert self.handle is not None
        data = self.handle.read()
        try:
            rotated = os.stat(self.path).st_ino != self.handle_ino
        except OSError:
            rotated = False  # between the rename and the new file: the next look finds it
        if rotated:
            data += self.handle.read()  # what was written to it before the rename
            self.handle.close()
            self.handle = None
            self._open()
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def rest(self) -> list[str]:
        rest = [self.partial.decode("utf-8", "replace")] if self.partial else []
        self.partial = b""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        return rest


def _is_instance_log(path: Path, instance: InstanceRow) -> bool:
    """Where ingot writes an instance's log: `<state>/logs/<environment>/<service>/<id>.log`."""
    parts = path.parts
    return (path.is_absolute() and ".." not in parts and len(parts) >= 5
            and parts[-4:] == ("logs", instance.environment, instance.service, f"{instance.id}.log"))


def _not_the_instance(pid: int, instance: InstanceRow) -> str | None:
    """Why the process at `pid` (an adopted one: not our child) is not `instance`, or None.

    Its start time matched, but that is public (/proc/PID/stat): a row written by someone else could name
    any process. An instance carries its id in its environment; failing that (it replaced its own), when
    instances are fenced it runs as one of ingot's instance users, never as root or anyone else."""
    env = process_environment(pid)
    if env is not None and "INGOT_INSTANCE" in env:
        return None if env["INGOT_INSTANCE"] == instance.id else f"pid {pid} is another instance"
    if fence.is_fenced():
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return "process is gone"
        if not fence.is_instance_user(owner):
            return f"pid {pid} is not an instance (it runs as uid {owner})"
    return None


def terminate_group(pid: int, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """SIGTERM the process group led by `pid`; SIGKILL it if it is still there after `timeout`."""
    is_alive = alive or (lambda: process_alive(pid))
    _signal_group(pid, signal.SIGTERM)
    # A stopped (SIGSTOP) process would hold the TERM pending until the timeout: let it handle it now.
    _signal_group(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive():
            return
        time.sleep(0.02)
    _signal_group(pid, signal.SIGKILL)
    while is_alive() and time.monotonic() < deadline + 5:
        time.sleep(0.02)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    if pid <= 1:
        return  # killpg(1) and kill(-1) would reach every process
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def process_environment(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def labelled_processes(state_dir: str) -> list[tuple[int, dict[str, str]]]:
    """Process-group leaders started by the ingot whose state lives in `state_dir`, with their env."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = process_environment(pid)
        if not env or env.get("INGOT_STATE") != state_dir:
            continue
        try:
            leader = os.getpgid(pid) == pid
        except OSError:
            continue
        if leader and not _is_zombie(pid):
            found.append((pid, env))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def process_alive(pid: int) -> bool:
    """True while `pid` runs; an exited process nobody has reaped yet counts as gone."""
    return not _is_zombie(pid)


def tail_lines(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    kept: deque[str] = deque(maxlen=lines)
    for line in data.decode("utf-8", "replace").splitlines():
        kept.append(line)
    return list(kept)
