"""`ingot install`'s systemd units: their commands really start the daemons they name."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path

from ingot.edge.client import call_sync, edge_alive
from ingot.edge.home import EdgeHome
from ingot.edge.units import agent_unit, agent_unit_name, edge_unit
from tests.support.harness import REPO, poll


def service_section(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser["Service"]


def test_the_edge_unit_starts_a_persistent_edge_and_stops_it_cleanly() -> None:
    home = EdgeHome(Path(tempfile.mkdtemp(prefix="ie-unit-")))
    service = service_section(edge_unit(home).text)
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "75"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "INGOT_EDGE_HOME": str(home.root)}
    proc = subprocess.Popen(shlex.split(service["ExecStart"]), env=env)
    try:
        poll(lambda: edge_alive(home), timeout=20, what="the unit's edge to answer")
        assert call_sync(home, "list")["routes"] == []
        first = call_sync(home, "ping")["pid"]
        os.kill(first, signal.SIGKILL)  # under the unit's own supervisor: back at once, listeners kept
        poll(lambda: edge_alive(home) and call_sync(home, "ping")["pid"] != first, timeout=10, what="the edge back")
        # --persistent: it stays up with no router, as a systemd service must.
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # stopped on purpose: systemd must not restart it
    finally:
        if proc.poll() is None:
            proc.kill()


def test_agent_units_are_named_per_state_directory() -> None:
    home = EdgeHome(Path("/var/lib/ingot/edge"))
    one, two = Path("/srv/a/.ingot"), Path("/srv/b/.ingot")
    assert agent_unit_name("hello", one) != agent_unit_name("hello", two)
    assert agent_unit_name("my app!", one).startswith("ingot-agent-my-app--")
    service = service_section(agent_unit("hello", one, home).text)
    assert shlex.split(service["ExecStart"])[-4:] == ["--state", str(one), "agent", "--foreground"]
    spec = Path("/srv/hello/ingot.yaml")
    pinned = service_section(agent_unit("hello", one, home, spec=spec).text)
    # The agent checks releases against the pin beside the spec, not the state's own key.
    assert shlex.split(pinned["ExecStart"])[-6:] == ["--state", str(one), "agent", "-f", str(spec), "--foreground"]
    assert service["KillMode"] == "process"  # instances outlive an agent restart
