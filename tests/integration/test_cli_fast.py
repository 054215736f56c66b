"""The CLI's fast path (ingot.cli.fast) prints what the full CLI prints, and the agent probes each instance
once per interval however many callers ask for its status."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot.agent.client import AgentClient
from ingot.agent.server import STATUS_PROBE_MAX_AGE
from ingot.paths import StatePaths
from tests.support.harness import ExampleProject, Result, make_example, poll, stop_everything

FULL = {"INGOT_FAST_PATH": "0"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleProject]:
    example = make_example(tmp_path_factory.mktemp("fast"))
    example.env["INGOT_HEAL_INTERVAL"] = "0"  # no self-heal pass counts changing between two `status --json`
    example.ingot("deploy", check=True)
    yield example
    stop_everything(example)


def _agent(example: ExampleProject) -> AgentClient:
    return AgentClient(StatePaths(example.state.resolve()))


def _fast(example: ExampleProject, *args: str) -> Result:
    """`ingot ARGS`, asserting the agent answered it (the fast path), not the full CLI."""
    before = _agent(example).call("ping")["cli_answers"]
    result = example.ingot(*args)
    assert _agent(example).call("ping")["cli_answers"] == before + 1, result
    return result


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("history",), ("--env", "staging", "history",
                                  "--limit", "5", "--json"), ("history", "-s", "web"), ("logs", "web", "-n", "3"),
                                  ("drift",), ("drift", "--json")])
def test_fast_path_prints_what_the_full_cli_prints(deployed: ExampleProject, args: tuple[str, ...]) -> None:
    fast = _fast(deployed, *args)
    full = deployed.ingot(*args, extra_env=FULL)
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert fast.code == 0 and fast.out


def _on_a_terminal(example: ExampleProject, *args: str, env: dict[str, str]) -> bytes:
    """What `ingot ARGS` writes to a 100x30 terminal (stdout and stderr both on it)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    full_env = {**os.environ, "INGOT_ACTOR": "tester@ci", "TERM": "xterm-256color", **example.env, **env}
    for name in ("COLUMNS", "LINES", "INGOT_HOME", "NO_COLOR", "FORCE_COLOR"):
        full_env.pop(name, None)
    with subprocess.Popen([sys.executable, "-m", "ingot", *args], cwd=example.root, env=full_env,
                          stdin=follower, stdout=follower, stderr=follower) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
    os.close(leader)
    return b"".join(chunks)


@pytest.mark.parametrize("command", ["status", "logs"])
def test_on_a_terminal_too(deployed: ExampleProject, command: str) -> None:
    args = ("logs", "web", "-n", "2") if command == "logs" else (command,)
    before = _agent(deployed).call("ping")["cli_answers"]
    fast = _on_a_terminal(deployed, *args, env={})
    assert _agent(deployed).call("ping")["cli_answers"] == before + 1
    assert fast == _on_a_terminal(deployed, *args, env=FULL)
    assert b"\x1b[" in fast  # bold table headers and instance names: styled as on a terminal


def test_what_it_does_not_know_goes_to_the_full_cli(deployed: ExampleProject) -> None:
    before = _agent(deployed).call("ping")["cli_answers"]
    unknown = deployed.ingot("status", "--no-such-flag")
    assert unknown.code == 2 and "No such option" in unknown.err  # Typer's own message
    bad_env = deployed.ingot("history", "--env", "nowhere")
    assert bad_env.code == 2 and "unknown environment 'nowhere'" in bad_env.err
    assert _agent(deployed).call("ping")["cli_answers"] == before  # both declined by the fast path
    assert deployed.ingot("--version").out == deployed.ingot("--version", extra_env=FULL).out


def test_without_an_agent_the_full_cli_answers(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    status = example.ingot("status", check=True)
    assert "agent not running" in status.out and "nothing deployed" in status.out
    assert example.ingot("history", check=True).out == "no deployments in staging yet\n"


def test_concurrent_status_callers_share_one_probe_per_interval(deployed: ExampleProject) -> None:
    agent = _agent(deployed)
    time.sleep(STATUS_PROBE_MAX_AGE)  # not a wait for a condition: verdicts cached by earlier tests expire
    before = agent.call("ping")["status_probes"]
    reports: list[dict[str, Any]] = []
    started = time.monotonic()
    callers = [threading.Thread(target=lambda: reports.append(agent.call("status", timeout=10))) for _ in range(10)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    elapsed = time.monotonic() - started
    probes = agent.call("ping")["status_probes"] - before
    instances = len(reports[0]["services"][0]["instances"])
    assert len(reports) == 10 and all(r["services"] == reports[0]["services"] for r in reports)
    assert instances == 2 and all(i["health"] == "healthy" for i in reports[0]["services"][0]["instances"])
    # One probe per instance for every interval the ten callers spanned (one, unless the machine is slow).
    assert instances <= probes <= instances * (1 + int(elapsed / STATUS_PROBE_MAX_AGE)), (probes, elapsed)


def test_drift_with_findings_exits_1_on_both_paths(deployed: ExampleProject) -> None:
    """Last in the module: it kills an instance (and repairs it after)."""
    from ingot.store import Store

    store = Store(deployed.state)
    try:
        victim = store.live_instances("staging", "web")[0]
    finally:
        store.close()
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    full = poll(lambda: (r := deployed.ingot("drift", extra_env=FULL)).code == 1 and r, what="drift to see the kill")
    fast = _fast(deployed, "drift")
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert victim.id in fast.out and "repair:" in fast.out
    fast_json = _fast(deployed, "drift", "--json")
    assert fast_json.code == 1 and victim.id in {f["instance"] for f in fast_json.json}
    deployed.ingot("reconcile", check=True)
    assert _fast(deployed, "drift").code == 0
