"""ingot's supervisor: a killed daemon comes back at once, a stopped supervisor takes it down with it, and
nobody starts a second supervisor beside a running one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ingot.edge.client import call_sync, edge_alive, ensure_edge
from ingot.edge.home import EdgeHome
from ingot.supervision import running_supervisor, stop_supervisor
from tests.support.harness import poll


def edge_pid(home: EdgeHome) -> int:
    return int(call_sync(home, "ping")["pid"])


def test_a_killed_edge_is_started_again_and_stopping_the_supervisor_ends_it() -> None:
    home = EdgeHome(Path(tempfile.mkdtemp(prefix="ie-sup-")))
    ensure_edge(home)
    supervisor = running_supervisor(home.supervisor_pidfile)
    assert supervisor is not None
    first = edge_pid(home)
    os.kill(first, signal.SIGKILL)
    poll(lambda: edge_alive(home) and edge_pid(home) != first, timeout=10, what="the edge back")
    ensure_edge(home)  # it answers: nothing new is started
    assert running_supervisor(home.supervisor_pidfile) == supervisor
    assert stop_supervisor(home.supervisor_pidfile)
    poll(lambda: not edge_alive(home), timeout=10, what="the edge to end with its supervisor")
    assert running_supervisor(home.supervisor_pidfile) is None


def test_a_pidfile_naming_another_process_is_no_supervisor() -> None:
    pidfile = Path(tempfile.mkdtemp(prefix="ie-sup-")) / "supervisor.pid"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        assert running_supervisor(pidfile) is None
        assert not stop_supervisor(pidfile)
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_supervisor_holds_a_builtin_listener_across_edge_restarts_and_lets_go_of_a_released_one() -> None:
    home = EdgeHome(Path(tempfile.mkdtemp(prefix="ie-sup-")))
    ensure_edge(home)
    try:
        keep = call_sync(home, "ensure", id="t#s/a@x", owner="t", name="a", kind="builtin", listen=["127.0.0.1", 0])
        gone = call_sync(home, "ensure", id="t#s/b@x", owner="t", name="b", kind="builtin", listen=["127.0.0.1", 0])
        first = edge_pid(home)
        supervisor = running_supervisor(home.supervisor_pidfile)
        assert supervisor is not None
        os.kill(supervisor, signal.SIGSTOP)  # the edge stays down: only the supervisor's copy listens
        try:
            os.kill(first, signal.SIGKILL)
            poll(lambda: not edge_alive(home), timeout=10, what="the edge to die")
            # Accepted into the held listen queue, not refused, with no edge running at all.
            queued = socket.create_connection(("127.0.0.1", keep["listen"][1]), timeout=2)
        finally:
            os.kill(supervisor, signal.SIGCONT)
        with queued:
            queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert queued.recv(100).startswith(b"HTTP/1.1 503")  # served by the next edge (no release yet)
        assert edge_pid(home) != first
        call_sync(home, "release", id="t#s/b@x")
        poll(lambda: refused(gone["listen"][1]), timeout=5, what="the released router's port to be closed")
    finally:
        stop_supervisor(home.supervisor_pidfile)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
