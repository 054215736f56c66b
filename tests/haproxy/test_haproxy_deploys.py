"""Deploys and agent restarts with HAProxy as the data plane, through the CLI.

Canaries and rolling updates run on both routers in tests/integration/test_progressive.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot.edge.home import EdgeHome
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
    """The haproxy the machine's edge runs for the example's router."""
    router_id = f"{example.state.resolve()}#staging/web@127.0.0.1:{example.port}"
    workdir = str(EdgeHome.default().router_dir(router_id)).encode()
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
    # Status answers from the agent's and the edge's last polls of haproxy's counters (0.25 s and 0.5 s
    # apart), so the requests since the rollback show within a second, not at once.
    def served_by_first() -> int:
        stats = proxied.ingot("status", "--json", check=True).json["services"][0]["router"]["stats"]
        return int(stats.get(first, {}).get("requests", 0))

    poll(lambda: served_by_first() > 0, timeout=10, what="haproxy's counters to show the rolled-back release serving")
    proxied.ingot("down", check=True)
    poll(lambda: not haproxy_pids(proxied), timeout=15, what="haproxy to stop with ingot down")


def test_agent_restart_leaves_haproxy_serving_untouched(proxied: ExampleProject, tmp_path: Path) -> None:
    proxied.ingot("deploy", check=True)
    before = haproxy_pids(proxied)
    assert before
    agent = proxied.ingot("status", "--json", check=True).json["agent"]["pid"]
    with load(proxied.url, tmp_path) as during:
        os.kill(agent, 9)
        poll(lambda: (s := proxied.ingot("status", "--json").json)["agent"]["running"]
             and s["agent"]["pid"] != agent, timeout=10, what="the supervisor to start the agent again")
    assert during["failures"] == [] and during["requests"] > 0
    assert haproxy_pids(proxied) == before  # the same haproxy: never restarted by an agent
