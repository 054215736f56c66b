"""Ports for process instances: from $INGOT_INSTANCE_PORTS (default 20000-32000), never the kernel's ephemeral
range that outgoing connections take theirs from, not given twice by one agent, a clear error when full."""

from __future__ import annotations

import socket

import pytest

from ingot.errors import OperationFailed, UserInputError
from ingot.runtimes import ports


def test_the_default_range_and_a_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ports.PORTS_ENV, raising=False)
    assert ports.configured_range() == (20000, 32000)
    monkeypatch.setenv(ports.PORTS_ENV, " 40000-40010 ")
    assert ports.configured_range() == (40000, 40010)


@pytest.mark.parametrize("given", ["20000", "a-b", "30000-20000", "80-9000", "20000-70000", "-5"])
def test_a_bad_range_is_bad_input_naming_the_variable(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv(ports.PORTS_ENV, given)
    with pytest.raises(UserInputError) as raised:
        ports.configured_range()
    assert raised.value.exit_code == 2 and ports.PORTS_ENV in raised.value.message and given in raised.value.message


def test_the_ephemeral_range_is_left_out() -> None:
    assert ports.candidates((30000, 33000), (32768, 60999)) == list(range(30000, 32768))
    assert ports.candidates((40000, 40002), (32768, 60999)) == [40000, 40001, 40002]  # nothing else left
    assert ports.candidates((20000, 20001), None) == [20000, 20001]


def test_the_kernels_ephemeral_range_is_read(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "range"  # type: ignore[operator]
    path.write_text("32768\t60999\n")
    assert ports.ephemeral_range(path) == (32768, 60999)
    path.write_text("garbage")
    assert ports.ephemeral_range(path) is None


# Ports of neither the instances' default range nor the kernel's ephemeral one (32768-), nor the tests' listeners
# (10000-19999): no test running beside these (xdist) and no outgoing connection takes one meanwhile. (45100-45139,
# in the ephemeral range, once had one taken by another test's connection: fewer than 39 were free.)
QUIET = (32300, 32339)


def test_ports_are_free_in_range_and_not_given_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.PORTS_ENV, f"{QUIET[0]}-{QUIET[1]}")
    monkeypatch.setattr(ports, "ephemeral_range", lambda: None)
    monkeypatch.setattr(ports, "_given", {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", QUIET[0] + 20))
        taken.listen()
        assert not ports.is_free(QUIET[0] + 20)
        given = [ports.instance_port() for _ in range(39)]
        with pytest.raises(OperationFailed) as raised:
            ports.instance_port()  # every other port given out in the last two minutes
    assert len(set(given)) == 39 and all(QUIET[0] <= port <= QUIET[1] for port in given)
    assert QUIET[0] + 20 not in given
    assert f"{QUIET[0]}-{QUIET[1]}" in raised.value.message and ports.PORTS_ENV in str(raised.value)


def test_a_port_is_given_again_once_its_hold_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    port = QUIET[1] + 1
    monkeypatch.setenv(ports.PORTS_ENV, f"{port}-{port}")
    monkeypatch.setattr(ports, "ephemeral_range", lambda: None)
    monkeypatch.setattr(ports, "_given", {port: -ports.HELD_FOR - 1.0})
    assert ports.instance_port() == port


def test_a_routers_listen_port_is_never_given_to_an_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unbound until its router starts (a first deploy of many services at once), so only the reservation keeps it.
    monkeypatch.setenv(ports.PORTS_ENV, f"{QUIET[0]}-{QUIET[0] + 9}")
    monkeypatch.setattr(ports, "ephemeral_range", lambda: None)
    monkeypatch.setattr(ports, "_given", {})
    monkeypatch.setattr(ports, "_reserved", set())
    listens = {QUIET[0] + 2, QUIET[0] + 7}
    ports.reserve([*listens, 0])  # 0: a service with no listener of its own
    given = {ports.instance_port() for _ in range(8)}
    assert given == set(range(QUIET[0], QUIET[0] + 10)) - listens
    with pytest.raises(OperationFailed) as raised:
        ports.instance_port()
    assert "a router's listen port" in raised.value.message


def test_the_listen_ports_of_every_service_in_every_environment(tmp_path: pytest.TempPathFactory) -> None:
    from ingot.operations import listen_ports
    from ingot.project import open_project

    root = tmp_path  # type: ignore[assignment]
    (root / "ingot.yaml").write_text(  # type: ignore[operator]
        "project: ports\n"
        "services:\n"
        "  web: {command: [python, app.py], router: {listen: '127.0.0.1:24001'}}\n"
        "  site: {command: [python, app.py], routes: [{host: a.example.com}]}\n"
        "  jobs: {command: [python, worker.py], port: null}\n"
        "environments:\n"
        "  staging: {}\n"
        "  production: {services: {web: {router: {listen: '127.0.0.1:24002'}},\n"
        "                          site: {routes: [{host: b.example.com}]}}}\n")
    project = open_project(root / "ingot.yaml", state_dir=root / "state")  # type: ignore[operator]
    assert listen_ports(project) == [24001, 24002]
