"""The control plane may die, restart or freeze at any moment: traffic never notices.

Each test runs the example behind each router (builtin and HAProxy, in the edge) under load from another
process and counts failed requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.harness import ExampleProject, load, poll


def agent_pid(example: ExampleProject) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((example.state / "agent.pid").read_text().strip())
    return None


def agent_answers(example: ExampleProject) -> bool:
    """A ping on the agent's socket: what any ingot command would get first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(example.state / "agent.sock"))
            sock.sendall(b'{"op":"ping"}\n')
            return b'"ok":true' in sock.makefile("rb").readline()
        except OSError:
            return False


def kill_agent_and_time_return(example: ExampleProject) -> float:
    """kill -9 the agent; seconds until a new one answers, started by its supervisor alone."""
    pid = agent_pid(example)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    poll(lambda: agent_pid(example) not in (None, pid) and agent_answers(example), timeout=10,
         interval=0.01, what="the supervisor to start the agent again")
    return time.monotonic() - killed


def ledger_rows(example: ExampleProject, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
    with contextlib.closing(sqlite3.connect(f"file:{example.state / 'state.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT seq, action, payload_json FROM ledger WHERE seq > ? ORDER BY seq", (after,))
        return [(seq, action, json.loads(payload)) for seq, action, payload in rows]


def last_seq(example: ExampleProject) -> int:
    rows = ledger_rows(example)
    return rows[-1][0] if rows else 0


def deploy_in_background(example: ExampleProject) -> subprocess.Popen[str]:
    env = {**os.environ, "INGOT_ACTOR": "tester@ci", **example.env}
    env.pop("INGOT_HOME", None)
    return subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def serving_settles(example: ExampleProject) -> dict[str, Any]:
    """Once the restarted agent has recovered: one release, its replicas all running and healthy."""
    def settled() -> dict[str, Any] | None:
        status = example.ingot("status", "--json").json["services"][0]
        instances = status["instances"]
        ok = (len(instances) == 2 and {i["release"] for i in instances} == {status["release"]}
              and all(i["health"] == "healthy" for i in instances))
        return status if ok else None

    return poll(settled, timeout=60, what="one release with two healthy instances")  # type: ignore[no-any-return]


def test_agent_killed_at_every_step_of_a_deploy_drops_nothing(routed: ExampleProject, tmp_path: Path) -> None:
    routed.env["INGOT_HEAL_INTERVAL"] = "1s"
    routed.ingot("deploy", check=True)
    version = 1
    routed.set_version("2")
    steps = [s["kind"] for s in routed.ingot("plan", "--json", check=True).json[0]["steps"]]
    assert "start" in steps and "route" in steps, steps
    seen: list[str] = []
    with load(routed.url, tmp_path) as report:
        for index, step in enumerate(steps, start=1):
            version += 1
            routed.set_version(str(version))
            mark = last_seq(routed)
            deploy = deploy_in_background(routed)

            def step_started(kind: str = step, mark: int = mark) -> bool:
                return any(a == "deploy.step" and p.get("step") == kind and p.get("status") == "started"
                           for _, a, p in ledger_rows(routed, mark))

            poll(step_started, timeout=60, interval=0.005, what=f"step {index} ({step}) to start")
            kill_agent_and_time_return(routed)
            deploy.wait(timeout=60)
            serving_settles(routed)
            seen.append(step)
    assert seen == steps
    assert report["failures"] == [], report["failures"][:5]
    assert report["requests"] > 100
    outcomes = [d["outcome"] for d in routed.ingot("history", "--json", check=True).json]
    assert outcomes.count("interrupted") >= len(steps) - 1  # a kill during the last step may come after the end


def test_agent_killed_twenty_times_in_a_row_drops_nothing(routed: ExampleProject, tmp_path: Path) -> None:
    routed.ingot("deploy", check=True)
    pids = {i["pid"] for i in routed.ingot("status", "--json", check=True).json["services"][0]["instances"]}
    with load(routed.url, tmp_path) as report:
        returns = [kill_agent_and_time_return(routed) for _ in range(20)]
    assert report["failures"] == [], report["failures"][:5]
    assert report["requests"] > 100
    assert max(returns) < 2.0, returns  # back within 2 s each time, with no command
    after = routed.ingot("status", "--json", check=True).json["services"][0]["instances"]
    assert {i["pid"] for i in after} == pids  # adopted every time, never restarted


def requests_for(example: ExampleProject, seconds: float) -> int:
    """Plain GETs, one after the other, for `seconds`: each must be a 200 (`get` raises otherwise)."""
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert example.get()["release"]
        done += 1
    return done


def test_a_stopped_agent_freezes_nothing(routed: ExampleProject, tmp_path: Path) -> None:
    routed.ingot("deploy", check=True)
    pid = agent_pid(routed)
    assert pid is not None
    with load(routed.url, tmp_path) as report:
        os.kill(pid, signal.SIGSTOP)
        try:
            served_while_stopped = requests_for(routed, 3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert report["failures"] == [], report["failures"][:5]
    assert served_while_stopped > 5  # each a fresh client and connection: slow, but every one a 200
    assert agent_answers(routed)


def test_self_heal_keeps_the_live_release_in_rotation(routed: ExampleProject, tmp_path: Path) -> None:
    """A killed instance of three is replaced by self-heal, and the live release never leaves rotation
    (on HAProxy, self-heal used to drain the live release: 503 for every request after it)."""
    spec = routed.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 3"))
    routed.env["INGOT_HEAL_INTERVAL"] = "1s"
    routed.ingot("deploy", check=True)
    victim = routed.ingot("status", "--json", check=True).json["services"][0]["instances"][0]
    with load(routed.url, tmp_path) as report:
        os.killpg(victim["pid"], signal.SIGKILL)

        def healed() -> bool:
            instances = routed.ingot("status", "--json").json["services"][0]["instances"]
            return (victim["id"] not in {i["id"] for i in instances} and len(instances) == 3
                    and all(i["health"] == "healthy" for i in instances))

        poll(healed, timeout=60, what="self-heal to replace the killed instance")
        served_after = requests_for(routed, 2.0)
    assert report["failures"] == [], report["failures"][:5]
    assert served_after >= 1  # each one a 200 (a loaded machine served 4 in the 2 s)
    actions = [e["action"] for e in routed.ingot("audit", "log", "--json", "--limit", "1000").json]
    assert "drift.repair" in actions
