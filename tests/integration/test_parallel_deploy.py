"""A deploy of several services hands them to the agent in parallel (README, "A fleet on one machine"): one
service failing fails only itself (the others go live, it keeps its previous release serving with no failed
request, the command exits 1 naming it and why), and Ctrl-C hands every service in flight over: without a
terminal they are detached and finish; on a terminal, abort sends every one back to its previous release."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ExampleProject, free_port, interrupt, load, make_example, poll, stop_everything
from tests.support.pty_session import ingot_on_pty

SERVICES = ("web", "api", "docs")
SERVICE = """\
  {name}:
    build: .
    command: {command}
    port: 8000
    replicas: 1
    health: {{path: /healthz, interval: 200ms, timeout: 2s, healthy_threshold: 2, deadline: 15s}}
    strategy: {{type: blue-green, drain_timeout: 5s, min_ready: {min_ready}}}
    router: {{listen: "127.0.0.1:{port}"}}
"""
SERVES = "[python, app.py]"


class Fleet:
    def __init__(self, example: ExampleProject, ports: dict[str, int], min_ready: str) -> None:
        self.example, self.ports, self.min_ready = example, ports, min_ready

    def write(self, commands: dict[str, str] | None = None) -> None:
        commands = commands or {}
        services = "".join(SERVICE.format(name=name, port=port, command=commands.get(name, SERVES),
                                          min_ready=self.min_ready) for name, port in self.ports.items())
        (self.example.root / "ingot.yaml").write_text(
            f"project: hello\nservices:\n{services}environments:\n  staging: {{}}\n")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    def version(self, name: str) -> str:
        return str(httpx.get(self.url(name), timeout=5, trust_env=False).json()["version"])


def ended(example: ExampleProject, action: str) -> list[tuple[str, str]]:
    """(service, deployment) of each `action` entry of the ledger, in order (read from the store)."""
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as db:
        return [(service, subject) for service, subject in
                db.execute("SELECT service, subject FROM ledger WHERE action = ? ORDER BY seq", (action,))]


def fleet_of(tmp_path: Path, min_ready: str) -> Fleet:
    example = make_example(tmp_path, replicas=1)
    example.env["INGOT_HEAL_INTERVAL"] = "0"
    fleet = Fleet(example, {name: free_port() for name in SERVICES}, min_ready)
    fleet.write()
    return fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = fleet_of(tmp_path, "500ms")
    yield made
    stop_everything(made.example)


@pytest.fixture
def slow_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Each deploy settles for 20 s: long enough to be interrupted while every service is in flight."""
    made = fleet_of(tmp_path, "20s")
    yield made
    stop_everything(made.example)


def test_one_failing_service_fails_only_itself(fleet: Fleet, tmp_path: Path) -> None:
    example = fleet.example
    example.ingot("deploy", check=True)
    assert {name: fleet.version(name) for name in SERVICES} == dict.fromkeys(SERVICES, "1")
    first = set(ended(example, "deploy.finish"))
    assert {service for service, _ in first} == set(SERVICES)

    example.set_version("2")  # every service's build changes; api's new command dies at once
    fleet.write({"api": '[python, -c, "import sys; print(\'api will not start\'); sys.exit(3)"]'})
    with load(fleet.url("api"), tmp_path) as on_api, load(fleet.url("web"), tmp_path) as on_web:
        failed = example.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "api" in failed.err and "exited" in failed.err, failed.err  # names it, and why
    assert {name: fleet.version(name) for name in SERVICES} == {"web": "2", "api": "1", "docs": "2"}
    # api's previous release kept serving it; web went to its new one; no request of either failed.
    assert on_api["failures"] == [] and on_api["versions"] == {"1": on_api["requests"]} and on_api["requests"] > 20
    assert on_web["failures"] == [] and set(on_web["versions"]) == {"1", "2"}, on_web["versions"]
    second = {service: "finish" for service, dep in ended(example, "deploy.finish") if (service, dep) not in first}
    second.update({service: "fail" for service, _ in ended(example, "deploy.fail")})
    assert second == {"web": "finish", "api": "fail", "docs": "finish"}, second


def test_ctrl_c_without_a_terminal_detaches_every_service_and_each_finishes(slow_fleet: Fleet) -> None:
    example = slow_fleet.example
    example.ingot("deploy", check=True, timeout=300)
    example.set_version("2")
    env = {**os.environ, "INGOT_ACTOR": "tester@ci", **example.env}
    env.pop("INGOT_HOME", None)
    proc = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root, env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Every service in its settle: each has its new release taking traffic, so all three are in flight.
    poll(lambda: all(slow_fleet.version(name) == "2" for name in SERVICES), timeout=120, what="every service switched")
    out, err = interrupt(proc)
    assert proc.returncode == 130, out + err
    assert "detached" in err and all(f"of {name} to release" in err for name in SERVICES), err
    # Nothing was undone: each deployment finishes in the agent on its own.
    poll(lambda: len(ended(example, "deploy.finish")) == 2 * len(SERVICES), timeout=120,
         what="all three deployments finished")
    assert {name: slow_fleet.version(name) for name in SERVICES} == dict.fromkeys(SERVICES, "2")


def test_ctrl_c_then_abort_on_a_terminal_sends_every_service_back(slow_fleet: Fleet) -> None:
    example = slow_fleet.example
    example.ingot("deploy", check=True, timeout=300)
    example.set_version("2")
    session = ingot_on_pty(example, "deploy", rows=40, columns=160)
    try:
        poll(lambda: all(slow_fleet.version(name) == "2" for name in SERVICES), timeout=120,
             what="every service switched")
        session.type("\x03")
        session.read_until("abort or detach? [a/d]")
        session.type("a\r")
        code = session.wait()
        shown = session.text
    finally:
        session.close()
    assert code == 1, shown
    assert shown.count("aborted: release") == len(SERVICES), shown
    assert {name: slow_fleet.version(name) for name in SERVICES} == dict.fromkeys(SERVICES, "1")
    aborted = [service for service, _ in ended(example, "deploy.abort")]
    assert sorted(aborted) == sorted(SERVICES), aborted
