"""ingot's supervisor: a killed daemon comes back at once, a stopped supervisor takes it down with it, and
nobody starts a second supervisor beside a running one."""

from __future__ import annotations

import os
import signal
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
