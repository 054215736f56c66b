"""Two hosts, one store: ingot on two network namespaces (each its own host name) sharing one PostgreSQL,
reached over each host's own link. The deploy lock taken on one host refuses a deploy from the other,
naming the host that holds it; the deploy goes through once it is released; the ledger stays one chain
that both hosts verify, and both read the same history. And an agent on each host (each host its own
machine, by its host name): each runs its own environment, and the start and the kill -9 of one host's agent
leave the other's instances, operation in progress and ledger alone; an operation on the other host's
environment is refused, naming that host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot import ledger
from ingot.paths import StatePaths
from ingot.signing import load_or_create_key
from ingot.store import Store
from ingot.store.db import DATABASE_URL_ENV
from tests.support.harness import ExampleProject, make_example, poll, stop_edge, stop_everything
from tests.support.netns import Host, hosts
from tests.support.postgres import PostgresServer, running_server

pytestmark = pytest.mark.integration

_HOLDER = textwrap.dedent("""
    import socket, sys, time
    from pathlib import Path
    from ingot import locks
    from ingot.store import Store
    store = Store(Path(sys.argv[1]))
    with locks.hold(store, "staging", "deploy", "alice@" + socket.gethostname()):
        Path(sys.argv[2]).write_text(socket.gethostname())
        while not Path(sys.argv[3]).exists():  # held until the test lets go
            time.sleep(0.05)
""")


@pytest.fixture
def two_hosts() -> Iterator[list[Host]]:
    with hosts(2) as made:
        yield made


@pytest.fixture
def shared_server(two_hosts: list[Host]) -> Iterator[PostgresServer]:
    # Listening on loopback (for the test itself) and on the root side of each host's link.
    with running_server(listen=",".join(["127.0.0.1", *(h.server_side for h in two_hosts)])) as server:
        yield server


def _ingot_on(host: Host, example: ExampleProject, url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `ingot ARGS` on `host`, with the shared store at `url` (its address
    as that host reaches it) and what the test gave the example (`example.env`: its edge, say)."""
    env = {**os.environ, "INGOT_ACTOR": f"ci@{host.hostname}", "COLUMNS": "200", DATABASE_URL_ENV: url,
           **{k: v for k, v in example.env.items() if k != "INGOT_HOME"}}
    env.pop("INGOT_HOME", None)
    return host.command([sys.executable, "-m", "ingot", "--state", str(example.state), *args]), env


def _on(host: Host, example: ExampleProject, url: str, *args: str,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`ingot ARGS` run on `host` (see `_ingot_on`)."""
    argv, env = _ingot_on(host, example, url, *args)
    return subprocess.run(argv, cwd=example.root, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_hosts_share_one_lock_one_chain_and_one_history(tmp_path: Path, two_hosts: list[Host],
                                                           shared_server: PostgresServer) -> None:
    first, second = two_hosts
    database = shared_server.new_database()
    urls = [shared_server.url(database, host=h.server_side) for h in (first, second)]
    examples = [make_example(tmp_path / h.hostname) for h in (first, second)]
    for host, example in zip((first, second), examples, strict=True):
        example.env["INGOT_HOME"] = str(tmp_path / f"{host.hostname}-state")  # (outside the checkout it builds)
    # One team, one signing key: every host signs with it (the README's setup), so one key verifies the chain.
    load_or_create_key(StatePaths(examples[0].state).keys)
    shutil.copytree(StatePaths(examples[0].state).keys, StatePaths(examples[1].state).keys)
    try:
        # Host 1 takes the environment's lock (as a deploy does before it builds) and keeps it.
        held, release = tmp_path / "held", tmp_path / "release"
        env = {**os.environ, DATABASE_URL_ENV: urls[0]}
        holder = subprocess.Popen(first.command([sys.executable, "-c", _HOLDER, str(examples[0].state), str(held),
                                                 str(release)]), env=env)
        poll(held.exists, timeout=60, what="host 1 to hold the lock")
        assert held.read_text() == first.hostname

        # A deploy from host 2 is refused, naming host 1; nothing was deployed.
        refused = _on(second, examples[1], urls[1], "deploy", "--env", "staging")
        assert refused.returncode == 1, refused.stderr
        assert f"staging is locked: alice@{first.hostname} (deploy, pid {holder.pid} on {first.hostname})" \
            in refused.stderr
        release.touch()
        assert holder.wait(timeout=60) == 0

        # Released: host 2 deploys, and host 1 reads that deploy in the shared history.
        deployed = _on(second, examples[1], urls[1], "deploy", "--env", "staging")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        logs = [_on(h, e, u, "audit", "log", "--json", "--limit", "1000")
                for h, e, u in zip((first, second), examples, urls, strict=True)]
        assert [log.returncode for log in logs] == [0, 0], [log.stderr for log in logs]
        seen = [json.loads(log.stdout) for log in logs]
        assert seen[0] == seen[1]
        actions = [entry["action"] for entry in seen[0]]
        assert "deploy.finish" in actions and actions.count("deploy.start") == 1
        assert {entry["actor"] for entry in seen[0] if entry["action"] == "deploy.start"} == {f"ci@{second.hostname}"}

        # One chain, verified from each host over its own link.
        for host, example, url in zip((first, second), examples, urls, strict=True):
            verified = _on(host, example, url, "audit", "verify")
            assert verified.returncode == 0 and "ledger intact" in verified.stdout, verified.stdout + verified.stderr
        store = Store(examples[0].state, url=shared_server.url(database))
        assert ledger.verify_chain(store)[1] is None
        assert [e.seq for e in ledger.entries(store)] == list(range(1, len(seen[0]) + 1))
        store.close()
    finally:
        for host, example, url in zip((first, second), examples, urls, strict=True):
            _on(host, example, url, "down", "--env", "staging", timeout=90)
            stop_everything(example)


def _staging_rows(store: Store) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str]], list[int]]:
    """Host 1's environment as the store holds it: its live instances (id, state, machine), its deployments
    (id, outcome) and its ledger entries (seq)."""
    instances = sorted((r.id, r.state, r.machine) for r in store.live_instances("staging"))
    deployments = [(d.id, store.deployment_outcome(d.id)) for d in store.deployments("staging")]
    return instances, deployments, [e.seq for e in ledger.entries(store) if e.environment == "staging"]


def test_an_agent_on_each_host_keeps_to_its_own_machine(tmp_path: Path, two_hosts: list[Host],
                                                        shared_server: PostgresServer) -> None:
    first, second = two_hosts  # machines ingot-host-1 and ingot-host-2: their host names (INGOT_MACHINE unset)
    database = shared_server.new_database()
    urls = [shared_server.url(database, host=h.server_side) for h in (first, second)]
    # Host 1's rollouts stay a while under full traffic (min_ready), so that one is in progress when host 2's
    # agent is killed and comes back.
    examples = [make_example(tmp_path / first.hostname, min_ready="8s"), make_example(tmp_path / second.hostname)]
    edges = [Path(tempfile.mkdtemp(prefix="ingot-edge-")) for _host in (first, second)]  # (short: socket paths)
    for host, example, edge in zip((first, second), examples, edges, strict=True):
        example.env.update({"INGOT_HOME": str(tmp_path / f"{host.hostname}-state"), "INGOT_EDGE_HOME": str(edge),
                            "INGOT_HEAL_INTERVAL": "0.5s"})  # each host its own edge; self-heal passes often
    load_or_create_key(StatePaths(examples[0].state).keys)
    shutil.copytree(StatePaths(examples[0].state).keys, StatePaths(examples[1].state).keys)
    store = Store(examples[0].state, url=shared_server.url(database))  # the test's own view, from the root side
    try:
        # Each host deploys its own environment; host 2's agent starts while host 1's instances run.
        for host, example, url, environment in zip((first, second), examples, urls, ("staging", "production"),
                                                   strict=True):
            deployed = _on(host, example, url, "deploy", "--env", environment)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        instances, deployments, _entries = _staging_rows(store)
        assert [(state, machine) for _id, state, machine in instances] == [("running", first.hostname)] * 2
        assert [outcome for _id, outcome in deployments] == ["succeeded"]
        assert {r.machine for r in store.live_instances("production")} == {second.hostname}

        # Host 1 starts a rollout; while it runs, host 2's agent is killed (kill -9) and its supervisor starts it
        # again: the restarted agent recovers its own production only.
        examples[0].set_version("v2")
        argv, env = _ingot_on(first, examples[0], urls[0], "deploy", "--env", "staging")
        rollout = subprocess.Popen(argv, cwd=examples[0].root, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        def in_progress() -> bool:  # the new deployment running, its instances started beside the old ones
            _instances, deployments, _entries = _staging_rows(store)
            return len(deployments) == 2 and deployments[0][1] == "running" and len(_instances) > 2

        poll(in_progress, timeout=120, what="host 1's rollout to have started its new instances")

        def second_starts() -> int:  # agent.start is recorded once the agent has recovered
            return sum(1 for e in ledger.entries(store)
                       if e.action == "agent.start" and e.actor == f"ci@{second.hostname}")

        starts = second_starts()
        os.kill(int((examples[1].state / "agent.pid").read_text()), 9)
        poll(lambda: second_starts() == starts + 1, timeout=60, what="host 2's agent to be back")
        assert in_progress()  # (host 2's agent recovered while host 1's rollout ran)
        out, err = rollout.communicate(timeout=240)
        assert rollout.returncode == 0, out + err  # not interrupted by host 2's agent starting meanwhile

        # Host 1's environment is as host 1 left it: its rollout succeeded, nothing of host 2's touched it.
        instances, deployments, _entries = _staging_rows(store)
        assert [(state, machine) for _id, state, machine in instances] == [("running", first.hostname)] * 2
        assert [outcome for _id, outcome in deployments] == ["succeeded", "succeeded"]
        staging_entries = [e for e in ledger.entries(store) if e.environment == "staging"]
        assert {e.actor for e in staging_entries} == {f"ci@{first.hostname}"}
        assert not [e.action for e in staging_entries if e.action.endswith(".interrupted")
                    or e.action in ("instance.exited", "agent.recover", "drift.repair")]
        recovered = [e for e in ledger.entries(store) if e.action == "agent.recover"]
        assert {(e.environment, e.actor) for e in recovered} == {("production", f"ci@{second.hostname}")}
        served = subprocess.run(first.command([sys.executable, "-c", "import sys, urllib.request; print(urllib."
                                               "request.urlopen(sys.argv[1], timeout=5).read().decode())",
                                               examples[0].url]), capture_output=True, text=True, timeout=30)
        assert served.returncode == 0 and '"v2"' in served.stdout, served.stdout + served.stderr

        # Host 2 may not change host 1's environment; it is told where it runs and how to go on.
        before = _staging_rows(store), len(ledger.entries(store))
        for command in (["deploy", "--env", "staging"], ["restart", "web", "--env", "staging"]):
            refused = _on(second, examples[1], urls[1], *command)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            message = " ".join(refused.stderr.split())
            assert f"staging runs on machine {first.hostname}, not on this one ({second.hostname})" in message
            assert f"run 'ingot {command[0]}' on {first.hostname}, or from here with --server" in message
        assert (_staging_rows(store), len(ledger.entries(store))) == before

        # Read-only commands work from anywhere, naming the machine where it is not this one.
        status = _on(second, examples[1], urls[1], "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert {s["environment"]: s["machine"] for s in report["services"]} == {
            "staging": first.hostname, "production": second.hostname}
        staging = next(s for s in report["services"] if s["environment"] == "staging")
        assert [(i["machine"], i["health"]) for i in staging["instances"]] == [
            (first.hostname, f"not observed (on machine {first.hostname})")] * 2  # its pids are host 1's
        at_home = json.loads(_on(first, examples[0], urls[0], "status", "--json", "--env", "staging").stdout)
        assert [i["health"] for i in at_home["services"][0]["instances"]] == ["healthy"] * 2
        text = _on(second, examples[1], urls[1], "status")
        assert f"staging (on {first.hostname})" in text.stdout and "production (on" not in text.stdout, text.stdout
    finally:
        store.close()
        for host, example, url, environment in zip((first, second), examples, urls, ("staging", "production"),
                                                   strict=True):
            _on(host, example, url, "down", "--env", environment, timeout=90)
            stop_everything(example)
        for edge in edges:
            stop_edge(edge)
            shutil.rmtree(edge, ignore_errors=True)
