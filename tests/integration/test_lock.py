"""The deploy lock: a concurrent deploy is refused with who holds it; the lock stays with the agent's
operation when the CLI dies; a caller that died before handing anything over leaves a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.harness import ExampleProject, lock_of, poll


def test_concurrent_deploy_is_refused_and_the_lock_outlives_a_killed_cli(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    example.set_version("2")
    example.ingot("deploy", check=True)  # so that a rollback has somewhere to go
    app = example.root / "app.py"
    app.write_text(app.read_text().replace('self._send(200, b"ok\\n", "text/plain")',
                                           'self._send(503, b"warming\\n", "text/plain")'))
    slow = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root,
                            env={**os.environ, "INGOT_ACTOR": "alice@laptop"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: any(h["outcome"] == "running" for h in example.ingot("history", "--json").json),
             timeout=60, what="the first deploy to be under way")
        second = example.ingot("deploy")
        assert second.code == 1
        assert "staging is locked: alice@laptop (deploy, running in the agent, pid" in second.err
        assert "since" in second.err and "ingot abort --env staging" in second.err
        rollback = example.ingot("rollback")
        assert rollback.code == 1 and "locked" in rollback.err
        os.kill(slow.pid, signal.SIGKILL)  # the CLI dies without a word: the agent's deploy goes on
        slow.wait(timeout=10)
        still = example.ingot("deploy")
        assert still.code == 1 and "staging is locked: alice@laptop (deploy, running in the agent" in still.err
        held = lock_of(example)
        assert held is not None and held.alive and not held.caller_alive
        assert example.ingot("unlock").code == 1  # a running operation's lock is not cleared without --force
        assert "aborted" in example.ingot("abort", check=True).out
        poll(lambda: lock_of(example) is None, timeout=30, what="the agent to let go of the lock")
        assert example.ingot("history", "--json").json[0]["outcome"] == "aborted"
    finally:
        if slow.poll() is None:
            slow.kill()


def test_a_caller_that_died_before_handing_over_leaves_a_stale_lock_that_unlock_clears(
        example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    # A process that takes the lock and dies inside it, as a CLI killed while building would.
    code = ("import os, sys; from pathlib import Path; from ingot import locks; from ingot.store import Store\n"
            "with locks.hold(Store(Path(sys.argv[1])), 'staging', 'deploy', 'alice@laptop'):\n"
            "    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(example.state)], check=False, timeout=60)
    stale = example.ingot("deploy")
    assert stale.code == 1 and "stale lock" in stale.err and "ingot unlock --env staging" in stale.err
    assert "alice@laptop (deploy, pid" in stale.err
    cleared = example.ingot("unlock", check=True)
    assert "cleared the lock of alice@laptop" in cleared.out
    log = example.ingot("audit", "log", "--json", "--limit", "1000").json
    unlock = [e for e in log if e["action"] == "unlock"][-1]
    assert unlock["actor"] == "tester@ci" and unlock["payload"]["holder_alive"] is False
    assert example.ingot("unlock").code == 2  # nothing to clear any more
    example.ingot("deploy", check=True)
