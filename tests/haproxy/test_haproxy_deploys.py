"""Deploys and agent restarts with HAProxy as the data plane, through the CLI.

Canaries and rolling updates run on both routers in tests/integration/test_progressive.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot.paths import StatePaths
from tests.support.harness import ExampleProject, load, make_example, poll, stop_everything


@pytest.fixture
def proxied(haproxy_bin: str, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                             f'router: {{listen: "127.0.0.1:{example.port}", kind: haproxy}}'))
    yield example
    stop_everything(example)


def haproxy_pids(example: ExampleProject) -> set[int]:
    workdir = str(StatePaths(example.state).router_dir("staging", "web")).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"haproxy" in cmdline and workdir in cmdline:
                pids.add(int(entry.name))
    return pids


def test_blue_green_and_rollback_through_haproxy_with_zero_failed_requests(proxied: ExampleProject,
                                                                          tmp_path: Path) -> None:
    proxied.ingot("deploy", check=True)
    first = proxied.get()["release"]
    assert haproxy_pids(proxied), "the router is an haproxy owned by ingot"
    proxied.set_version("2")
    with load(proxied.url, tmp_path) as during:
        proxied.ingot("deploy", check=True)
        proxied.ingot("rollback", check=True)
    assert during["failures"] == [] and set(during["versions"]) == {"1", "2"}
    assert proxied.get()["release"] == first
    stats = proxied.ingot("status", "--json", check=True).json["services"][0]["router"]["stats"]
    assert stats[first]["requests"] > 0
    proxied.ingot("down", check=True)
    poll(lambda: not haproxy_pids(proxied), timeout=15, what="haproxy to stop with ingot down")


def test_agent_restart_brings_haproxy_back_on_the_same_address(proxied: ExampleProject) -> None:
    proxied.ingot("deploy", check=True)
    agent = proxied.ingot("status", "--json", check=True).json["agent"]["pid"]
    os.kill(agent, 9)
    poll(lambda: proxied.ingot("status", "--json").json["agent"]["running"] is False, what="the agent to die")
    proxied.ingot("agent", check=True)
    poll(lambda: proxied.get()["version"] == "1", timeout=30, what="haproxy serving again")
    assert len(haproxy_pids(proxied)) >= 1
