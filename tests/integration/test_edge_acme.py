"""Automatic TLS through the edge, end to end, on each front (built-in and HAProxy): two projects, three
`tls: auto` hosts on one HTTPS listener of an edge of its own, with certificates issued by Pebble after it
validated HTTP-01 against the edge's real HTTP listener; `ingot status` saying `valid`; a host Pebble's DNS
sends elsewhere failing with the reason in `ingot status` and in its project's ledger; a restarted edge
serving the issued certificates again with no new order; renewal by a running edge whose ACME clock the test
moves ahead (INGOT_TEST_ACME_CLOCK_FILE, a setting for tests only), the old certificates serving until the
new ones are installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingot import ledger
from ingot.store import Store
from tests.support.certs import fetch
from tests.support.engines import in_ci
from tests.support.harness import EXAMPLE, ExampleProject, free_port, poll, stop_edge, stop_everything
from tests.support.pebble import Pebble, running_pebble
from tests.support.routers import find_haproxy

pytestmark = pytest.mark.integration

HEALTH = "health: {path: /healthz, interval: 200ms, timeout: 2s, healthy_threshold: 1, deadline: 30s}"
STRATEGY = "strategy: {type: blue-green, drain_timeout: 5s, min_ready: 300ms}"


def _service(name: str, greeting: str, hosts: list[str]) -> str:
    routes = ", ".join(f"{{host: {h}, tls: auto}}" for h in hosts)
    return (f"  {name}:\n    build: .\n    command: [python, app.py]\n    replicas: 1\n    {HEALTH}\n"
            f"    {STRATEGY}\n    env: {{GREETING: {greeting}}}\n    routes: [{routes}]\n")


@dataclass
class Machine:
    pebble: Pebble
    home: Path
    https: tuple[str, int]
    trust: ssl.SSLContext  # Pebble's issuing root: what a browser trusting this CA would check against
    alpha: ExampleProject
    beta: ExampleProject
    clock: Path  # seconds the edge's ACME clock runs ahead

    def get(self, host: str) -> tuple[str, int]:
        answer = fetch(self.https, host, tls=self.trust)
        assert answer.status == 200, answer
        assert answer.peer_serial is not None
        return str(json.loads(answer.body)["greeting"]), answer.peer_serial

    def routes(self, project: ExampleProject) -> dict[str, Any]:
        report = project.ingot("status", "--json", check=True).json
        return {r["url"]: r for s in report["services"] for r in s["routes"]}


def _project(tmp: Path, name: str, services: str, env: dict[str, str]) -> ExampleProject:
    root = tmp / name
    root.mkdir()
    shutil.copy(EXAMPLE / "app.py", root / "app.py")
    (root / "ingot.yaml").write_text(f"project: {name}\nservices:\n{services}")
    return ExampleProject(root, port=0, env=dict(env), _project=name)


@pytest.fixture(scope="module", params=["builtin", "haproxy"])
def machine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    if request.param == "haproxy" and find_haproxy() is None and not in_ci():
        pytest.skip("no haproxy on PATH")
    tmp = tmp_path_factory.mktemp("edge-acme")
    home = Path(tempfile.mkdtemp(prefix="ingot-edge-"))  # short: its control socket must fit AF_UNIX
    with running_pebble(tmp / "pebble") as pebble:
        https = ("127.0.0.1", free_port())
        clock = tmp / "acme-clock"
        clock.write_text("0")
        env = {"INGOT_EDGE_HOME": str(home), "INGOT_EDGE_HTTP": f"127.0.0.1:{pebble.http_port}",
               "INGOT_EDGE_HTTPS": f"127.0.0.1:{https[1]}", "INGOT_ACME_DIRECTORY": pebble.directory,
               "INGOT_ACME_CA_BUNDLE": str(pebble.ca_bundle), "INGOT_TEST_ACME_CLOCK_FILE": str(clock),
               "INGOT_EDGE_KIND": str(request.param)}
        trust = ssl.create_default_context(cadata=pebble.issuing_root().decode())
        alpha = _project(tmp, "alpha", _service("web", "alpha-web", ["a.test"])
                         + _service("api", "alpha-api", ["b.test"]), env)
        beta = _project(tmp, "beta", _service("web", "beta-web", ["c.test"]), env)
        try:
            alpha.ingot("deploy", check=True)
            beta.ingot("deploy", check=True)
            yield Machine(pebble, home, https, trust, alpha, beta, clock)
        finally:
            stop_everything(alpha)
            stop_everything(beta)
            stop_edge(home)
            shutil.rmtree(home, ignore_errors=True)


def _valid(machine: Machine, host: str) -> bool:
    try:
        machine.get(host)
    except (ssl.SSLError, ConnectionError, OSError):
        return False
    return True


def test_three_auto_hosts_of_two_projects_get_certificates_from_pebble(machine: Machine) -> None:
    for host in ("a.test", "b.test", "c.test"):
        poll(lambda h=host: _valid(machine, h), timeout=30, what=f"a certificate for {host}")
    assert machine.get("a.test")[0] == "alpha-web"
    assert machine.get("b.test")[0] == "alpha-api"
    assert machine.get("c.test")[0] == "beta-web"
    routes = machine.routes(machine.alpha)
    assert routes["https://a.test/"]["acme"]["state"] == "valid", routes
    text = machine.alpha.ingot("status", check=True).out
    assert "route https://b.test/ (certificate: valid until" in text, text
    # Each project's ledger has its own hosts' issuance, and only those.
    poll(lambda: {e.subject for e in _certificate_entries(machine.beta)} == {"c.test"}, timeout=10,
         what="beta's ledger to record c.test's certificate")
    issued = {e.subject for e in _certificate_entries(machine.alpha) if e.action == "certificate.issued"}
    assert issued == {"a.test", "b.test"}


def test_a_failed_challenge_is_shown_and_recorded(machine: Machine) -> None:
    machine.pebble.point("bad.test", "127.0.0.2")  # Pebble validates there, where no edge listens
    spec = machine.beta.root / "ingot.yaml"
    spec.write_text(spec.read_text() + _service("bad", "beta-bad", ["bad.test"]))
    machine.beta.ingot("deploy", check=True)

    def failed() -> bool:
        acme = machine.routes(machine.beta)["https://bad.test/"]["acme"]
        return acme is not None and acme["state"] == "failed"

    poll(failed, timeout=30, what="bad.test's order to fail")
    text = machine.beta.ingot("status", check=True).out
    assert "route https://bad.test/ (certificate: failed: " in text and "retry at" in text, text
    # Recorded by the agent from the edge's events, which reach it with its next poll of the edge's
    # stats (within a second): not always by the time a status answer already shows the route failed.
    entries = poll(lambda: [e for e in _certificate_entries(machine.beta) if e.subject == "bad.test"], timeout=10,
                   what="the failure in beta's ledger")
    assert [e.action for e in entries] == ["certificate.failed"], entries
    assert "127.0.0.2" in str(entries[0].payload["detail"]), entries[0].payload
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(machine.https, "bad.test", tls=machine.trust)  # no certificate: the handshake fails
    assert machine.get("c.test")[0] == "beta-web"


def test_a_restarted_edge_serves_the_issued_certificates_without_a_new_order(machine: Machine) -> None:
    for host in ("a.test", "c.test"):
        poll(lambda h=host: _valid(machine, h), timeout=30, what=f"a certificate for {host}")
    serials = {h: machine.get(h)[1] for h in ("a.test", "b.test", "c.test")}
    edge = int((machine.home / "edge.pid").read_text().strip())
    os.kill(edge, signal.SIGKILL)
    poll(lambda: (machine.home / "edge.pid").read_text().strip() not in ("", str(edge)), timeout=15,
         what="the edge to be restarted by its supervisor")
    # No retry: the supervisor held the HTTPS socket, so the handshake waits in its queue, and the stored
    # certificates are installed as the listeners start, before any handshake is answered.
    assert {h: machine.get(h)[1] for h in serials} == serials
    assert len([e for e in _certificate_entries(machine.alpha) if e.action == "certificate.issued"]) == 2


def test_a_running_edge_renews_certificates_that_come_due(machine: Machine) -> None:
    before = {h: machine.get(h)[1] for h in ("a.test", "c.test")}
    not_after = datetime.fromisoformat(machine.routes(machine.alpha)["https://a.test/"]["acme"]["not_after"])
    # 20 days before expiry: inside the 30-day renewal window. The manager looks at its clock again when the
    # edge's table changes: a route added to beta's other service does that.
    machine.clock.write_text(str((not_after - datetime.now(UTC) - timedelta(days=20)).total_seconds()))
    spec = machine.beta.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("routes: [{host: bad.test, tls: auto}]",
                                             "routes: [{host: bad.test, tls: auto}, {host: bad2.test, tls: off}]"))
    machine.beta.ingot("deploy", check=True)
    for host, serial in before.items():
        try:
            poll(lambda h=host, s=serial: machine.get(h)[1] != s, timeout=30, what=f"{host} renewed")
        except AssertionError as exc:  # say what the edge thinks, for a failure seen once and not since
            raise AssertionError(f"{exc}; alpha: {machine.routes(machine.alpha)}; "
                                 f"beta: {machine.routes(machine.beta)}") from None
    assert machine.get("a.test")[0] == "alpha-web"
    poll(lambda: any(e.action == "certificate.renewed" and e.subject == "c.test"
                     for e in _certificate_entries(machine.beta)), timeout=10, what="c.test's renewal recorded")
    assert "route https://c.test/ (certificate: valid until" in machine.beta.ingot("status", check=True).out


def _certificate_entries(project: ExampleProject) -> list[ledger.LedgerEntry]:
    store = Store(project.state)
    return [e for e in ledger.entries(store) if e.action.startswith("certificate.")
            and e.action != "certificate.account"]
