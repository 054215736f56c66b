"""Deploys, canaries and agent restarts with HAProxy as the data plane, through the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot.paths import StatePaths
from tests.integration.test_progressive import CANARY, break_app, use_strategy
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


def test_failing_canary_is_aborted_on_haproxy(proxied: ExampleProject, tmp_path: Path) -> None:
    use_strategy(proxied, CANARY.format(steps="[{weight: 20, pause: 20s}]", p99=500))
    proxied.ingot("deploy", check=True)
    stable = proxied.get()["release"]
    proxied.set_version("2")
    break_app(proxied, 'self._send(500, b"boom\\n", "text/plain"); return')
    with load(proxied.url, tmp_path) as during:
        failed = proxied.ingot("deploy")
    assert failed.code == 1 and "analysis failed" in failed.err
    share = len(during["failures"]) / int(during["requests"])
    assert 0 < share < 0.25
    assert proxied.get()["release"] == stable


def test_agent_restart_brings_haproxy_back_on_the_same_address(proxied: ExampleProject) -> None:
    proxied.ingot("deploy", check=True)
    agent = proxied.ingot("status", "--json", check=True).json["agent"]["pid"]
    os.kill(agent, 9)
    poll(lambda: proxied.ingot("status", "--json").json["agent"]["running"] is False, what="the agent to die")
    proxied.ingot("agent", check=True)
    poll(lambda: proxied.get()["version"] == "1", timeout=30, what="haproxy serving again")
    assert len(haproxy_pids(proxied)) >= 1


def test_slow_canary_is_aborted_on_latency_on_haproxy(proxied: ExampleProject, tmp_path: Path) -> None:
    use_strategy(proxied, CANARY.format(steps="[{weight: 30, pause: 20s}]", p99=100))
    proxied.ingot("deploy", check=True)
    stable = proxied.get()["release"]
    proxied.set_version("2")
    break_app(proxied, "import time; time.sleep(0.3)")
    with load(proxied.url, tmp_path):
        failed = proxied.ingot("deploy")
    assert failed.code == 1 and "p99" in failed.err
    assert proxied.get()["release"] == stable


def test_rolling_on_haproxy_serves_every_request(proxied: ExampleProject, tmp_path: Path) -> None:
    use_strategy(proxied, "    strategy: {type: rolling, max_surge: 1, max_unavailable: 0, drain_timeout: 5s}")
    spec = proxied.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 3"))
    proxied.ingot("deploy", check=True)
    proxied.set_version("2")
    with load(proxied.url, tmp_path) as during:
        proxied.ingot("deploy", check=True)
    assert during["failures"] == [] and set(during["versions"]) == {"1", "2"}
    assert proxied.get()["version"] == "2"
