"""Two projects on one edge, by host name: three hosts on one HTTPS listener with certificates from files
(made here with `cryptography`), SNI and Host picking the right app; a host claimed by another project
refused naming the holder; unknown hosts 404 and unknown SNI names failing the handshake; an agent
killed under load while the edge serves its route; the routes restored by an edge that restarts."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingot.edge.settings import parse_listener
from tests.support.certs import TestCA, fetch
from tests.support.harness import EXAMPLE, ExampleProject, free_port, load, poll, stop_everything


def _listener(variable: str) -> tuple[str, int]:
    address = parse_listener(os.environ[variable], variable)
    assert address is not None and address[0], f"{variable} must be a loopback address in tests"
    return address


Address = tuple[str, int]
HEALTH = "health: {path: /healthz, interval: 200ms, timeout: 2s, healthy_threshold: 1, deadline: 30s}"
STRATEGY = "strategy: {type: blue-green, drain_timeout: 5s, min_ready: 300ms}"


def _service(name: str, greeting: str, routes: str) -> str:
    return (f"  {name}:\n    build: .\n    command: [python, app.py]\n    replicas: 1\n    {HEALTH}\n"
            f"    {STRATEGY}\n    env: {{GREETING: {greeting}}}\n    routes: {routes}\n")


def _project(tmp: Path, name: str, services: str, ca: TestCA, hosts: list[str],
             env: dict[str, str] | None = None) -> ExampleProject:
    root = tmp / name
    root.mkdir()
    shutil.copy(EXAMPLE / "app.py", root / "app.py")
    (root / "tls").mkdir()
    for host in hosts:
        ca.write(root / "tls", host)
    (root / "ingot.yaml").write_text(f"project: {name}\nservices:\n{services}")
    project = ExampleProject(root, port=0, _project=name)
    project.env.update(env or {})
    return project


def _files(host: str) -> str:
    return f"{{cert: tls/{host}.crt, key: tls/{host}.key}}"


def _tls_route(host: str, extra: str = "") -> str:
    return f"{{host: {host}, tls: {_files(host)}{extra}}}"


@dataclass
class Machine:
    """One edge of `kind` (the suite's own built-in edge, or an HAProxy edge of its own home and ports)."""

    kind: str
    ca: TestCA
    alpha: ExampleProject
    beta: ExampleProject
    tmp: Path
    env: dict[str, str]
    home: Path
    http: Address
    https_address: Address

    def project(self, name: str, services: str, hosts: list[str]) -> ExampleProject:
        return _project(self.tmp, name, services, self.ca, hosts, self.env)

    def https(self, host: str, path: str = "/") -> dict[str, str]:
        answer = fetch(self.https_address, host, path, tls=self.ca.client_context())
        assert answer.status == 200, answer
        import json

        return dict(json.loads(answer.body))


def _edge_of(kind: str, tmp: Path) -> tuple[dict[str, str], Path, Address, Address]:
    if kind == "builtin":  # the suite's edge (tests/conftest.py gives it free loopback ports)
        return {}, Path(os.environ["INGOT_EDGE_HOME"]), _listener("INGOT_EDGE_HTTP"), _listener("INGOT_EDGE_HTTPS")
    http, https = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    home = tmp / "edge"
    env = {"INGOT_EDGE_HOME": str(home), "INGOT_EDGE_KIND": kind, "INGOT_EDGE_HTTP": f"{http[0]}:{http[1]}",
           "INGOT_EDGE_HTTPS": f"{https[0]}:{https[1]}"}
    return env, home, http, https


@pytest.fixture(scope="module", params=["builtin", "haproxy"])
def machine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    kind = str(request.param)
    tmp = tmp_path_factory.mktemp(f"routes-{kind[:2]}")
    env, home, http, https = _edge_of(kind, tmp)
    ca = TestCA()
    alpha = _project(tmp, "alpha", _service("web", "alpha-web", f"[{_tls_route('a.example.test', ', hsts: 300')}]")
                     + _service("api", "alpha-api", f"[{_tls_route('b.example.test')}]"),
                     ca, ["a.example.test", "b.example.test"], env)
    # beta's second route is plain HTTP on the loopback address: what the load client can reach by URL.
    beta = _project(tmp, "beta", _service("web", "beta-web", f"[{_tls_route('c.example.test')}, "
                                                             "{host: 127.0.0.1, tls: off}]"),
                    ca, ["c.example.test"], env)
    try:
        alpha.ingot("deploy", check=True)
        beta.ingot("deploy", check=True)
        yield Machine(kind, ca, alpha, beta, tmp, env, home, http, https)
    finally:
        stop_everything(alpha)
        stop_everything(beta)


def test_three_hosts_of_two_projects_on_one_https_listener(machine: Machine) -> None:
    assert machine.https("a.example.test")["greeting"] == "alpha-web"
    assert machine.https("b.example.test")["greeting"] == "alpha-api"
    assert machine.https("c.example.test")["greeting"] == "beta-web"
    secure = fetch(machine.https_address, "a.example.test", tls=machine.ca.client_context())
    assert secure.headers["strict-transport-security"] == "max-age=300"
    assert secure.headers["x-ingot-release"]
    # Plain HTTP to a TLS route: redirected; the tls: off route is served as is.
    moved = fetch(machine.http, "a.example.test", "/x?y=1")
    assert (moved.status, moved.headers["location"]) == (308, f"https://a.example.test:{machine.https_address[1]}/x?y=1")
    assert fetch(machine.http, "127.0.0.1").status == 200
    status = machine.alpha.ingot("status", check=True)
    assert "route https://a.example.test/ (certificate: valid until" in status.out, status.out
    report = machine.beta.ingot("status", "--json", check=True).json
    assert report["services"][0]["url"] == "https://c.example.test/"
    edge = machine.beta.ingot("edge", "status", check=True).out
    assert f"shared listeners ({machine.kind})" in edge, edge
    assert "http://127.0.0.1/  certificate: none (plain HTTP)" in edge, edge


def test_unknown_host_is_404_and_unknown_sni_fails_the_handshake(machine: Machine) -> None:
    missing = fetch(machine.http, "nobody.example.test")
    assert missing.status == 404 and b"no site" in missing.body
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(machine.https_address, "nobody.example.test", tls=machine.ca.client_context())


def test_a_host_another_project_holds_is_refused_naming_it(machine: Machine) -> None:
    gamma = machine.project("gamma", _service("web", "gamma", f"[{_tls_route('a.example.test')}]"),
                            ["a.example.test"])
    try:
        result = gamma.ingot("deploy")
        assert result.code == 1, result.out + result.err
        text = result.out + result.err
        assert "a.example.test/ is already routed by this machine's edge to alpha default/web" in text, text
        assert str(machine.alpha.state.resolve()) in text, text
        assert machine.https("a.example.test")["greeting"] == "alpha-web"  # the holder serves on
    finally:
        stop_everything(gamma)


def test_an_agent_killed_under_load_costs_no_request_on_its_route(machine: Machine) -> None:
    before = machine.beta.ingot("status", "--json", check=True).json["agent"]["pid"]
    with load(f"http://{machine.http[0]}:{machine.http[1]}/", machine.tmp) as report:
        os.kill(before, signal.SIGKILL)
        poll(lambda: (s := machine.beta.ingot("status", "--json").json)["agent"]["running"]
             and s["agent"]["pid"] != before, timeout=15, what="the agent to be back")
    assert report["requests"] > 50
    assert report["failures"] == []


def test_a_restarted_edge_serves_the_routes_and_certificates_again(machine: Machine) -> None:
    home = machine.home
    edge = int((home / "edge.pid").read_text().strip())
    with load(f"http://{machine.http[0]}:{machine.http[1]}/", machine.tmp) as report:
        os.kill(edge, signal.SIGKILL)
        poll(lambda: (home / "edge.pid").read_text().strip() not in ("", str(edge)), timeout=15,
             what="the edge to be restarted by its supervisor")
        poll(lambda: machine.https("c.example.test")["greeting"] == "beta-web", timeout=10,
             what="c.example.test again")
    # The shared listeners' sockets were held by the supervisor: nothing refused, only what the killed edge
    # had in flight is lost (one request per load connection at most).
    refused = [f for f in report["failures"] if "refused" in f.lower() or f.startswith("ConnectError")]
    assert refused == [] and len(report["failures"]) <= 4, report["failures"][:5]
    assert machine.https("a.example.test")["greeting"] == "alpha-web"


def test_routes_added_changed_and_dropped_on_a_service_with_its_own_listener(machine: Machine) -> None:
    port = free_port()
    delta = machine.project("delta", _service("web", "delta", "[]").replace(
        "    routes: []\n", f"    router: {{listen: '127.0.0.1:{port}'}}\n"), [])
    spec = delta.root / "ingot.yaml"
    plain = spec.read_text()
    try:
        delta.ingot("deploy", check=True)
        assert fetch(machine.http, "d.example.test").status == 404
        spec.write_text(plain + "    routes: [{host: d.example.test, tls: off}]\n")
        if machine.kind == "haproxy":
            # haproxy gains no listener without a reload: refused, and the release serves on where it was.
            refused = delta.ingot("deploy")
            assert refused.code == 2, refused.out + refused.err
            assert "cannot give a service with routes a listener of its own" in refused.out + refused.err
            assert b"delta" in fetch(("127.0.0.1", port), "anything").body
            return
        delta.ingot("deploy", check=True)  # the same router, on its address and now on the shared listener too
        assert b"delta" in fetch(machine.http, "d.example.test").body
        assert b"delta" in fetch(("127.0.0.1", port), "anything").body
        edge = int((machine.home / "edge.pid").read_text().strip())
        os.kill(edge, signal.SIGKILL)  # both listeners come back: its own on the socket the supervisor held
        poll(lambda: b"delta" in fetch(machine.http, "d.example.test").body, timeout=15, what="d.example.test again")
        assert b"delta" in fetch(("127.0.0.1", port), "anything").body
        spec.write_text(plain + "    routes: [{host: e.example.test, tls: off}]\n")
        delta.ingot("deploy", check=True)
        assert fetch(machine.http, "d.example.test").status == 404
        assert b"delta" in fetch(machine.http, "e.example.test").body
        delta.ingot("down", check=True)
        assert fetch(machine.http, "e.example.test").status == 404
        assert machine.https("c.example.test")["greeting"] == "beta-web"  # the others serve on
    finally:
        stop_everything(delta)


def test_a_certificate_that_does_not_match_its_key_is_refused(machine: Machine) -> None:
    bad = machine.project("epsilon", _service("web", "epsilon", f"[{_tls_route('f.example.test')}]"),
                          ["f.example.test"])
    _, other_key = machine.ca.issue("f.example.test")
    (bad.root / "tls" / "f.example.test.key").write_bytes(other_key)
    try:
        result = bad.ingot("deploy")
        assert result.code == 2, result.out + result.err
        assert "the certificate or key for f.example.test cannot be used" in result.out + result.err
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fetch(machine.https_address, "f.example.test", tls=machine.ca.client_context())
        assert machine.https("c.example.test")["greeting"] == "beta-web"
    finally:
        stop_everything(bad)


def test_bad_machine_settings_are_refused_naming_the_variable(tmp_path: Path) -> None:
    ca = TestCA()
    project = _project(tmp_path, "zeta", _service("web", "zeta", "[{host: z.example.test, tls: off}]"), ca, [])
    project.env.update({"INGOT_EDGE_HOME": str(tmp_path / "edge"), "INGOT_EDGE_HTTPS": "443"})
    try:
        result = project.ingot("deploy")
        assert result.code == 2, result.out + result.err
        assert "INGOT_EDGE_HTTPS: expected HOST:PORT or :PORT" in result.err, result.err
    finally:
        stop_everything(project)
