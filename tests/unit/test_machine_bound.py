"""Machine-bound state (issue 14): each row names its machine, an agent takes only its own machine's rows (and
those from before the store knew machines) for its own, and an operation on an environment running on another
machine is refused before anything changes. On both store backends (SQLite, a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ingot import ledger, locks, operations, views
from ingot.agent.server import Agent
from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.errors import UserInputError
from ingot.machine import MACHINE_ENV, machine_name, refuse_if_elsewhere
from ingot.paths import StatePaths
from ingot.project import open_project
from ingot.runtimes.process import process_start_time
from ingot.store import InstanceRow, Store
from ingot.store import schema as t
from tests.support.harness import make_example
from tests.support.store_backends import Backend


def _store_on(machine: str, state: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv(MACHINE_ENV, machine)
    return Store(state)


def _instance(instance_id: str, environment: str, state: str = "running", pid: int = 999_999) -> InstanceRow:
    # A pid no process has here: an agent that took this row for its own would find it dead.
    return InstanceRow(id=instance_id, environment=environment, service="web", release_id="r1", runtime="process",
                       pid=pid, proc_start="1", host="127.0.0.1", port=20_001, log_path="/dev/null",
                       started_at=time.time(), stopped_at=None, state=state)


def _occupy(store: Store, environment: str, *instances: InstanceRow, activated: bool = True) -> str:
    """What a deploy on `store`'s machine leaves: its instances, the activation, and a deployment still running."""
    store.add_instances(list(instances))
    with store.begin() as conn:
        if activated:
            store.activate(conn, environment=environment, service="web", release_id="r1", deployment_id=None,
                           params={"replicas": len(instances)})
        dep = store.create_deployment(conn, environment=environment, service="web", kind="deploy",
                                      from_release=None, to_release="r1", strategy="blue-green", params={},
                                      actor="alice")
    return dep.id


def test_the_machine_is_the_variable_else_the_host_name_and_a_bad_one_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MACHINE_ENV, raising=False)
    monkeypatch.setattr("socket.gethostname", lambda: "build-7.example.org")
    assert machine_name() == "build-7.example.org"
    monkeypatch.setenv(MACHINE_ENV, "ci-1")
    assert machine_name() == "ci-1"
    for bad in ("", "-lead", "two words", "a/b", "x" * 254):
        monkeypatch.setenv(MACHINE_ENV, bad)
        with pytest.raises(UserInputError, match=f"^{MACHINE_ENV}="):
            machine_name()
    monkeypatch.delenv(MACHINE_ENV)
    monkeypatch.setattr("socket.gethostname", lambda: "bad host")
    with pytest.raises(UserInputError, match=f"the host name 'bad host' is not a machine name.*{MACHINE_ENV}="):
        machine_name()


def test_a_bad_machine_name_exits_2_naming_the_variable(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    result = example.ingot("status", extra_env={MACHINE_ENV: "no spaces please"})
    assert result.code == 2, result.out + result.err
    assert f"{MACHINE_ENV}='no spaces please' is not a machine name" in result.err
    assert "Traceback" not in result.err


def test_rows_name_their_machine_and_mine_keeps_to_this_machines_and_legacy_rows(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    host_a = _store_on("host-a", state, monkeypatch)
    _occupy(host_a, "staging", _instance("a1", "staging"), _instance("a2", "staging", "spawning"))
    host_b = _store_on("host-b", state, monkeypatch)
    _occupy(host_b, "production", _instance("b1", "production"))
    # Before the store knew machines: no machine (what migration 9 leaves on older rows).
    with host_b.begin() as conn:
        conn.execute(t.instances.insert().values(**{**_instance("old1", "qa").__dict__, "machine": None}))

    assert {r.id: r.machine for r in host_b.live_instances()} == {"a1": "host-a", "a2": "host-a",
                                                                  "b1": "host-b", "old1": None}
    assert sorted(r.id for r in host_b.live_instances(mine=True)) == ["b1", "old1"]
    assert sorted(r.id for r in host_a.live_instances(mine=True)) == ["a1", "a2", "old1"]
    assert host_b.live_instances("staging", "web", mine=True) == []
    assert [(a.environment, a.machine) for a in host_b.active_services(mine=True)] == [("production", "host-b")]
    assert sorted(a.environment for a in host_b.active_services()) == ["production", "staging"]  # status: all
    assert [d.environment for d in host_b.deployments(mine=True)] == ["production"]
    assert sorted(d.machine or "" for d in host_b.deployments()) == ["host-a", "host-b"]
    assert host_b.machines_of("staging") == {"host-a"} and host_b.machines_of("qa") == set()
    assert host_b.machines_of("nowhere") == set()


def test_a_legacy_service_running_on_another_machine_is_that_machines(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    host_a = _store_on("host-a", tmp_path / "state", monkeypatch)
    with host_a.begin() as conn:  # an activation from before machines, its instances since (re)started on A
        conn.execute(t.activations.insert().values(environment="staging", service="web", release_id="r1",
                                                   deployment_id=None, params_json="{}", at=time.time()))
    host_a.add_instances([_instance("a1", "staging")])
    assert [a.environment for a in host_a.active_services(mine=True)] == ["staging"]
    host_b = _store_on("host-b", tmp_path / "state", monkeypatch)
    assert host_b.active_services(mine=True) == []
    assert host_b.machines_of("staging") == {"host-a"}


def test_an_operation_on_an_environment_running_elsewhere_is_refused_naming_the_machine(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    host_a = _store_on("host-a", tmp_path / "state", monkeypatch)
    _occupy(host_a, "staging", _instance("a1", "staging"))
    refuse_if_elsewhere(host_a, "staging", "deploy")  # its own machine: nothing to refuse
    host_b = _store_on("host-b", tmp_path / "state", monkeypatch)
    refuse_if_elsewhere(host_b, "production", "deploy")  # runs nowhere: free for any machine
    with pytest.raises(UserInputError) as refused:
        refuse_if_elsewhere(host_b, "staging", "rollback")
    assert refused.value.exit_code == 2
    assert refused.value.message.startswith("staging runs on machine host-a, not on this one (host-b)")
    assert "run 'ingot rollback' on host-a, or from here with --server pointing at host-a's 'ingot serve'" \
        in str(refused.value)
    # Taken down on A (its instances stopped, the service deactivated): B may have it.
    host_a.set_instance_state("a1", "stopped", stopped=True)
    with host_a.begin() as conn:
        host_a.activate(conn, environment="staging", service="web", release_id=None, deployment_id=None, params={})
    refuse_if_elsewhere(host_b, "staging", "deploy")


def test_the_cli_refuses_before_anything_changes(tmp_path: Path, backend: Backend,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    example = make_example(tmp_path)
    host_a = _store_on("host-a", example.state, monkeypatch)
    _occupy(host_a, "staging", _instance("a1", "staging"))
    before = (len(ledger.entries(host_a)), len(host_a.deployments()), len(host_a.all_releases()))
    for command in (["deploy", "--env", "staging"], ["restart", "web", "--env", "staging"],
                    ["scale", "web", "3", "--env", "staging"], ["rollback", "--env", "staging"],
                    ["promote", "--from", "production", "--to", "staging"], ["down", "--env", "staging"]):
        result = example.ingot(*command, extra_env={MACHINE_ENV: "host-b"})
        assert result.code == 2, (command, result.out, result.err)
        assert "staging runs on machine host-a, not on this one (host-b)" in result.err, (command, result.err)
        assert f"run 'ingot {command[0]}' on host-a" in " ".join(result.err.split())
    assert (len(ledger.entries(host_a)), len(host_a.deployments()), len(host_a.all_releases())) == before
    assert not StatePaths(example.state).agent_socket.exists()  # no agent was started for it
    assert not (example.root / "ingot.pub").exists()  # nor the signing key pinned
    assert {r.id: r.state for r in host_a.live_instances()} == {"a1": "running"}
    # Its logs are on host A too: said so, not an empty tail of an instance that is not here.
    logs = example.ingot("logs", "web", "--env", "staging", extra_env={MACHINE_ENV: "host-b", "INGOT_FAST_PATH": "0"})
    assert logs.code == 2 and "web in staging runs on machine host-a, whose logs are there" in logs.err, logs.err


def test_an_agent_starting_leaves_another_machines_instances_and_operations_alone(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    host_a = _store_on("host-a", state, monkeypatch)
    a_deployment = _occupy(host_a, "staging", _instance("a1", "staging"), _instance("a2", "staging", "spawning"))
    host_b = _store_on("host-b", state, monkeypatch)
    # (B's own deployment died before it activated anything: recovery has no router to bring back for it.)
    b_deployment = _occupy(host_b, "production", _instance("b1", "production", "starting"), activated=False)
    entries = len(ledger.entries(host_a))

    agent = Agent(StatePaths(state))  # host B's agent (INGOT_MACHINE=host-b)
    assert agent.store.machine == "host-b"
    try:
        asyncio.run(agent.recover())
        findings = asyncio.run(agent.healer.detect())
    finally:
        agent.store.close()

    # A's rows as they were: not adopted, not stopped, its deployment still running, nothing recorded of it.
    assert {r.id: r.state for r in host_a.live_instances("staging")} == {"a1": "running", "a2": "spawning"}
    assert host_a.deployment_outcome(a_deployment) == "running"
    assert findings == []  # A's instances (pids no process has here) are not B's drift
    new = ledger.entries(host_a)[entries:]
    assert [e.environment for e in new if e.environment == "staging"] == []
    # B's own: its interrupted deployment marked, the instance it was starting retired.
    assert host_b.deployment_outcome(b_deployment) == "interrupted"
    assert host_b.get_instance("b1") is not None and host_b.get_instance("b1").state == "failed"  # type: ignore[union-attr]
    assert "deploy.interrupted" in [e.action for e in new if e.environment == "production"]


def test_migration_9_names_no_machine_on_older_rows_and_keeps_history_insert_only(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    store = _store_on("host-a", state, monkeypatch)
    dep = _occupy(store, "staging", _instance("a1", "staging"))
    # Back to version 8, as a store made before machines was (DROP COLUMN: SQLite 3.35+, PostgreSQL).
    with store.begin() as conn:
        for table in ("instances", "deployments", "activations"):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN machine"))
        conn.execute(text("DELETE FROM schema_version WHERE version = 9"))
    store.close()

    upgraded = _store_on("host-b", state, monkeypatch)  # opening it migrates it
    with upgraded.engine.connect() as conn:
        assert conn.execute(text("SELECT max(version) FROM schema_version")).scalar_one() == 9
    assert [r.machine for r in upgraded.live_instances()] == [None]
    assert [r.id for r in upgraded.live_instances(mine=True)] == ["a1"]  # a legacy row is this machine's
    assert [a.machine for a in upgraded.active_services(mine=True)] == [None]
    assert [d.id for d in upgraded.deployments(mine=True)] == [dep]
    assert upgraded.missing_triggers() == []
    with pytest.raises(DBAPIError, match="insert-only"), upgraded.begin() as conn:
        conn.execute(text("UPDATE deployments SET machine = 'host-b'"))
    upgraded.close()


def test_an_agent_adopting_a_legacy_instance_running_here_claims_it_for_its_machine(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    host_a = _store_on("host-a", state, monkeypatch)
    # An instance from before machines, running here (a process of its own session, carrying its id).
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                             env={**os.environ, "INGOT_INSTANCE": "old1"})
    try:
        legacy = replace(_instance("old1", "staging", pid=child.pid), proc_start=process_start_time(child.pid))
        with host_a.begin() as conn:
            conn.execute(t.instances.insert().values(**{**legacy.__dict__, "machine": None}))
            conn.execute(t.activations.insert().values(environment="staging", service="web", release_id="r1",
                                                       deployment_id=None, params_json="{}", at=time.time()))
        host_b = _store_on("host-b", state, monkeypatch)
        assert [a.environment for a in host_b.active_services(mine=True)] == ["staging"]  # legacy: anyone's

        monkeypatch.setenv(MACHINE_ENV, "host-a")
        agent = Agent(StatePaths(state))
        try:
            params = DeployParams(replicas=1, health=HealthPolicy(), listen=("127.0.0.1", 8080))
            adopted, stopped = asyncio.run(agent._adopt(("staging", "web"), "r1", params))
        finally:
            agent.store.close()
        assert ([r.id for r in adopted], stopped) == (["old1"], [])
        assert child.poll() is None  # adopted, not stopped
        assert [r.machine for r in host_b.live_instances("staging")] == ["host-a"]
        assert host_b.active_services(mine=True) == []  # now host A's, for host B's agent too
        assert host_b.machines_of("staging") == {"host-a"}
    finally:
        child.kill()
        child.wait()


def test_status_text_names_the_machine_of_an_environment_elsewhere() -> None:
    from rich.console import Console

    def service(environment: str, machine: str | None) -> dict[str, Any]:
        return {"environment": environment, "service": "web", "release": "r1", "url": "-", "machine": machine,
                "instances": [], "router": {"stats": {}}}

    report = {"project": "hello", "agent": {"running": False}, "machine": "host-b",
              "services": [service("staging", "host-a"), service("production", "host-b"), service("qa", None)]}
    out, err = Console(record=True, width=200), Console(record=True, width=200)
    views.status_text(report, out, err)
    text = out.export_text()
    assert "staging (on host-a)" in text
    assert "production (on" not in text and "qa (on" not in text  # this machine's, and a legacy one's


def test_a_deploy_is_refused_again_under_the_lock_when_another_machine_took_the_environment_meanwhile(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    example = make_example(tmp_path)
    monkeypatch.setenv(MACHINE_ENV, "host-b")
    project = open_project(example.root / "ingot.yaml")
    host_a = _store_on("host-a", example.state, monkeypatch)
    monkeypatch.setenv(MACHINE_ENV, "host-b")

    def agent_starting(_paths: StatePaths) -> None:  # meanwhile, host A deploys staging
        if not host_a.live_instances("staging"):
            _occupy(host_a, "staging", _instance("a1", "staging"))

    monkeypatch.setattr(operations, "ensure_agent", agent_starting)
    with pytest.raises(UserInputError, match=r"^staging runs on machine host-a, not on this one \(host-b\)"):
        operations.deploy(project, "staging", ["web"])
    assert locks.current(host_a, "staging") is None  # let go
    assert project.store.all_releases() == []  # refused before anything was built
    host_a.close()
    project.store.close()


def test_the_no_change_fast_path_never_answers_for_another_machines_environment(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    params = DeployParams(replicas=1, health=HealthPolicy(), listen=("127.0.0.1", 8080))
    host_a = _store_on("host-a", state, monkeypatch)
    host_a.add_instances([_instance("a1", "staging")])
    with host_a.begin() as conn:  # staging live on host A with exactly these parameters
        host_a.activate(conn, environment="staging", service="web", release_id="r1", deployment_id=None,
                        params=params.as_dict())
    read_release: list[str] = []  # which agents got as far as the release (everything before it unchanged)
    for machine in ("host-a", "host-b"):
        monkeypatch.setenv(MACHINE_ENV, machine)
        agent = Agent(StatePaths(state))
        monkeypatch.setattr(agent.store, "get_release", lambda _id, m=machine: read_release.append(m))
        try:
            assert asyncio.run(agent.deploy_unchanged(("staging", "web"), "r1", params)) is False
        finally:
            agent.store.close()
    assert read_release == ["host-a"]  # host B's agent said no at once: the full CLI refuses it, naming host A


def test_a_sqlite_store_names_no_machine_unless_told_so_a_renamed_host_keeps_its_services(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite file is one machine's: a host name that changes (a laptop on another network, a cloned VM) must
    not make its own environments "another machine's"."""
    import socket

    monkeypatch.delenv(MACHINE_ENV, raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop-home")
    store = Store(tmp_path)
    assert store.machine is None
    _occupy(store, "staging", _instance("i1", "staging"))
    assert [row.machine for row in store.live_instances("staging")] == [None]
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop-office")
    renamed = Store(tmp_path)
    assert renamed.elsewhere("staging") == set()
    refuse_if_elsewhere(renamed, "staging", "deploy")  # not refused
    assert [row.id for row in renamed.live_instances("staging", mine=True)] == ["i1"]



def test_a_store_that_names_no_machine_keeps_services_whose_rows_name_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written while INGOT_MACHINE was set, read by an agent started without it (SQLite): still its own."""
    named = _store_on("ci-1", tmp_path, monkeypatch)
    _occupy(named, "staging", _instance("i1", "staging"))
    monkeypatch.delenv(MACHINE_ENV)
    unnamed = Store(tmp_path)
    assert unnamed.machine is None
    assert [a.environment for a in unnamed.active_services(mine=True)] == ["staging"]
    assert [r.id for r in unnamed.live_instances(mine=True)] == ["i1"]
