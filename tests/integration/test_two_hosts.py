"""Two hosts, one store: ingot on two network namespaces (each its own host name) sharing one PostgreSQL,
reached over each host's own link. The deploy lock taken on one host refuses a deploy from the other,
naming the host that holds it; the deploy goes through once it is released; the ledger stays one chain
that both hosts verify, and both read the same history."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot import ledger
from ingot.paths import StatePaths
from ingot.signing import load_or_create_key
from ingot.store import Store
from ingot.store.db import DATABASE_URL_ENV
from tests.support.harness import ExampleProject, make_example, poll, stop_everything
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


def _on(host: Host, example: ExampleProject, url: str, *args: str,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`ingot ARGS` run on `host`, with the shared store at `url` (its address as that host reaches it)."""
    env = {**os.environ, "INGOT_ACTOR": f"ci@{host.hostname}", "COLUMNS": "200", DATABASE_URL_ENV: url}
    env.pop("INGOT_HOME", None)
    return subprocess.run(host.command([sys.executable, "-m", "ingot", "--state", str(example.state), *args]),
                          cwd=example.root, env=env, capture_output=True, text=True, timeout=timeout)


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
