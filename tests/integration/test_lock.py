"""The deploy lock: a concurrent deploy is refused with who holds it; a dead holder's lock is stale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.harness import ExampleProject, poll


def test_concurrent_deploy_is_refused_and_a_stale_lock_is_cleared_by_unlock(example: ExampleProject) -> None:
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
        assert "staging is locked: alice@laptop (deploy, pid" in second.err and "since" in second.err
        rollback = example.ingot("rollback")
        assert rollback.code == 1 and "locked" in rollback.err
        os.kill(slow.pid, signal.SIGKILL)  # the holder dies without releasing
        slow.wait(timeout=10)
        stale = example.ingot("deploy")
        assert stale.code == 1 and "stale lock" in stale.err and "ingot unlock --env staging" in stale.err
        cleared = example.ingot("unlock", check=True)
        assert "cleared the lock of alice@laptop" in cleared.out
        log = example.ingot("audit", "log", "--json", "--limit", "1000").json
        unlock = [e for e in log if e["action"] == "unlock"][-1]
        assert unlock["actor"] == "tester@ci" and unlock["payload"]["holder_alive"] is False
        assert example.ingot("unlock").code == 2  # nothing to clear any more
    finally:
        if slow.poll() is None:
            slow.kill()
