"""The fast path's reading of the command line and of where the agent's socket is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingot.cli import fast
from ingot.paths import StatePaths


@pytest.mark.parametrize("root", ["/tmp/p/.ingot/hello", "/tmp/" + "deep/" * 30 + ".ingot/hello"])
def test_socket_path_is_the_agents(root: str) -> None:
    assert fast._socket_path(root) == str(StatePaths(Path(root)).agent_socket)


@pytest.mark.parametrize(("argv", "command", "options"), [
    (["status"], "status", {}),
    (["-f", "x.yaml", "--env=prod", "status", "--json"], "status", {"--json": True}),
    (["history", "--limit", "5", "-s", "web", "-e", "staging"], "history",
     {"limit": 5, "service": "web", "env": "staging"}),
    (["logs", "-n", "3", "web", "--file", "y.yaml"], "logs", {"lines": 3, "service": "web", "file": "y.yaml"}),
    (["deploy"], "deploy", {}),
    (["-e", "prod", "deploy", "-s", "web", "--json", "-f", "x.yaml"], "deploy",
     {"service": "web", "--json": True, "file": "x.yaml"}),
])
def test_reads_what_the_full_cli_defines(argv: list[str], command: str, options: dict[str, object]) -> None:
    parsed_command, parsed = fast._parse(argv)
    assert parsed_command == command
    assert {k: v for k, v in parsed.items() if k != "global" and k in options} == options


@pytest.mark.parametrize("argv", [
    [], ["deploy", "--irreversible"], ["deploy", "web"], ["deploy", "-s", "a", "-s", "b"],
    ["status", "--help"], ["status", "--no-such-flag"], ["status", "extra"], ["logs"],
    ["logs", "web", "-f", "x.yaml"],  # -f is not logs' --file to the fast path (a follow flag's usual name)
    ["history", "--limit", "-1"], ["history", "--limit", "x"], ["status", "--json", "--json"],
    ["--env", "", "status"], ["--server", "http://x", "status"], ["status", "-e"], ["history", "-s=web"],
])
def test_declines_anything_else(argv: list[str]) -> None:
    with pytest.raises(fast._Declined):
        fast._parse(argv)


def test_ctrl_c_while_python_finishes_after_the_command_ends_quietly_with_130() -> None:
    """A command that has ended still waits for worker threads as Python finishes; a Ctrl-C then would raise
    KeyboardInterrupt in that wait, which Python prints as an ignored exception with a traceback (seen in CI)."""
    import signal
    import subprocess
    import sys
    import time

    program = ("import sys, threading, time\n"
               "threading.Thread(target=time.sleep, args=(30,)).start()  # not a daemon: Python waits for it\n"
               "sys.argv = ['ingot', '--version']\n"
               "from ingot.cli.fast import main\n"
               "main()\n")
    with subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "INGOT_FAST_PATH": "1"}) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"ingot ")  # the command has ended; Python is waiting
        time.sleep(0.2)  # not a wait for a condition: the main thread must be in its wait for the thread
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        code = proc.wait(timeout=20)
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    assert code == 130
