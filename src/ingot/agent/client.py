"""Talking to the agent from the CLI (or any other caller), starting it on demand."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ingot.agent.protocol import decode, encode
from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.paths import StatePaths
from ingot.runtimes.process import process_alive
from ingot.supervision import running_supervisor

OnEvent = Callable[[dict[str, Any]], None]
START_TIMEOUT = 30.0


class AgentUnavailable(OperationFailed):
    pass


class AgentClient:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.pinged: dict[str, Any] = {}  # what the agent answered to the last `alive`

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.paths.agent_socket))
        except OSError as exc:
            sock.close()
            raise AgentUnavailable(f"the agent for {self.paths.root} is not running") from exc
        return sock

    def call(self, op: str, on_event: OnEvent | None = None, timeout: float | None = None,
             **arguments: Any) -> dict[str, Any]:
        with self._connect(timeout) as sock:
            sock.sendall(encode({"op": op, **arguments}))
            reader = sock.makefile("rb")
            for line in reader:
                message = decode(line)
                if message.get("done"):
                    return _result(message)
                if on_event is not None:
                    on_event(message)
        raise OperationFailed("the agent closed the connection before answering (did it crash? see "
                              f"{self.paths.agent_log})")

    def alive(self) -> bool:
        try:
            self.pinged = self.call("ping", timeout=2.0)
        except (AgentUnavailable, OSError, IngotError):
            return False
        return True


def _result(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("ok"):
        return message
    error_type = UserInputError if message.get("exit_code") == 2 else OperationFailed
    raise error_type(str(message.get("error")), details=list(message.get("details") or []))


def agent_pid(paths: StatePaths) -> int | None:
    try:
        text = paths.agent_pid.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_agent_pid(paths: StatePaths) -> int | None:
    """The pid of the agent running for `paths`, known by its lock on the pidfile (not by its answers: an
    agent may be too broken to answer); None when no agent holds it."""
    try:
        fd = os.open(paths.agent_pid, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return agent_pid(paths)
    finally:
        os.close(fd)  # closing drops a lock taken just now: no agent held it
    return None


def ensure_agent(paths: StatePaths) -> AgentClient:
    """Connect to the agent, starting it in the background first if it does not answer."""
    client = AgentClient(paths)
    if client.alive():
        _same_store(client, paths)
        return client
    if running_supervisor(paths.supervisor_pid) is not None:
        # Its supervisor is starting it again (perhaps after a backoff): a second supervisor would leave
        # two restarting the same agent.
        if _wait_alive(client, None):
            return client
        raise OperationFailed("the agent's supervisor runs, but the agent did not answer within "
                              f"{START_TIMEOUT:g} s", details=[f"its log ({paths.agent_log}):", *_tail(paths)])
    paths.secure()
    with open(paths.agent_log, "ab") as log:
        # Under ingot's supervisor, which starts the agent again when it dies (`ingot install` does the
        # same with systemd).
        child = subprocess.Popen(
            [sys.executable, "-m", "ingot.supervision", "--pidfile", str(paths.supervisor_pid),
             "ingot.agent.server:supervised_main", "--", "--state", str(paths.root),
             *(["--pin", str(paths.pin)] if paths.pin else [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "INGOT_DAEMON": "1"},
        )
    if _wait_alive(client, child):
        return client
    with contextlib.suppress(ProcessLookupError):
        if child.poll() is None:
            child.kill()
    tail = _tail(paths)
    raise OperationFailed("the agent did not start", details=[f"its log ({paths.agent_log}):", *tail])


def _same_store(client: AgentClient, paths: StatePaths) -> None:
    """Refuse an agent that keeps this state in another store than this command would ($INGOT_DATABASE_URL
    set or changed since it started): the two would act on two histories. (Compared by URL only: the
    state directory is the same one, the agent's socket is in it.)"""
    from ingot.store.db import database_url, shown

    if "database" not in client.pinged:  # an agent from before the shared store: SQLite
        return
    url = database_url()
    wanted = shown(url) if url else None
    running = client.pinged["database"]
    if running != wanted:
        raise OperationFailed(f"the agent for {paths.root} keeps its state in {running or 'the SQLite file'}, and "
                              f"this command's is {wanted or 'the SQLite file'}",
                              details=["stop the agent ('ingot down' stops it with everything it runs) and run "
                                       "the command again, or set INGOT_DATABASE_URL as the agent has it"])


def _wait_alive(client: AgentClient, child: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if client.alive():
            return True
        if child is not None and child.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _tail(paths: StatePaths) -> list[str]:
    try:
        return paths.agent_log.read_text(errors="replace").splitlines()[-15:]
    except OSError:
        return []


def wait_for_exit(paths: StatePaths, timeout: float = 30.0, pid: int | None = None) -> bool:
    """Wait until the agent (`pid`, else the one the pidfile names now) has exited. Pass the pid read before
    asking it to stop: a stopping agent empties its pidfile before it lets go of the file's lock."""
    pid = pid or agent_pid(paths)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        # This process may have started the agent itself, in which case it must reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return pid is None
