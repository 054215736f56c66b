"""The fast path's reading of the command line and of where the agent's socket is."""

from __future__ import annotations

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
