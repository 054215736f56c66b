"""The whole first slice as a user runs it: deploy, change, deploy under load, roll back, go down."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import ExampleProject, answer_health_with, kill_pidfile, load, poll, stop_edge


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _assert_clean(report: dict[str, object], allowed: set[str]) -> None:
    assert report["failures"] == [], f"failed requests during the operation: {report['failures'][:5]}"
    versions = set(report["versions"])  # type: ignore[arg-type]
    assert versions <= allowed, f"unexpected versions answered: {versions}"
    assert int(report["requests"]) > 50  # type: ignore[call-overload]


def test_deploy_change_rollback_with_zero_failed_requests(example: ExampleProject, tmp_path: Path) -> None:
    first = example.ingot("deploy", check=True)
    assert f"live at {example.url}" in first.out
    assert example.get()["version"] == "1"
    release_one = example.get()["release"]

    status = example.ingot("status", "--json", check=True).json
    [svc] = status["services"]
    assert svc["release"] == release_one and len(svc["instances"]) == 2
    assert all(i["state"] == "running" for i in svc["instances"])
    old_pids = {i["pid"] for i in svc["instances"]}

    example.set_version("2")
    with load(example.url, tmp_path) as during_deploy:
        example.ingot("deploy", check=True)
    _assert_clean(during_deploy, {"1", "2"})
    assert during_deploy["versions"].get("2", 0) > 0
    after = example.get()
    assert after["version"] == "2" and after["release"] != release_one

    # Old instances were replaced, not modified: their processes are gone.
    for pid in old_pids:
        poll(lambda p=pid: process_gone(p), timeout=15, what=f"old pid {pid} to exit")

    with load(example.url, tmp_path) as during_rollback:
        rolled = example.ingot("rollback", check=True)
    assert f"rolled back to release {release_one}" in rolled.out
    _assert_clean(during_rollback, {"1", "2"})
    now = example.get()
    assert (now["version"], now["release"]) == ("1", release_one)

    history = example.ingot("history", "--json", check=True).json
    assert [h["kind"] for h in history] == ["rollback", "deploy", "deploy"]
    assert all(h["outcome"] == "succeeded" for h in history)
    assert history[0]["live"] and history[0]["release"] == release_one
    assert all(h["actor"] == "tester@ci" for h in history)

    verify = example.ingot("audit", "verify", check=True)
    assert "ledger intact" in verify.out
    actions = [e["action"] for e in example.ingot("audit", "log", "--json", "--limit", "1000").json]
    for expected in ("build", "release", "deploy.start", "deploy.step", "deploy.finish", "rollback.finish"):
        assert expected in actions

    down = example.ingot("down", check=True)
    assert "stopped 2 instance(s)" in down.out
    with pytest.raises(httpx.ConnectError):
        httpx.get(example.url, timeout=2, trust_env=False)
    assert example.ingot("status", "--json", check=True).json["agent"]["running"] is False


def test_redeploy_without_changes_makes_no_new_release(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    again = example.ingot("deploy", check=True)
    assert "nothing changed" in again.out and "no new release" in again.out
    assert "already exists" in again.out
    history = example.ingot("history", "--json", check=True).json
    assert len(history) == 1


def test_unhealthy_release_fails_and_previous_keeps_serving(example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    good = example.get()["release"]
    answer_health_with(example, 500, "down", printing='"database unreachable"')
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("deadline: 30s", "deadline: 2s"))
    with load(example.url, tmp_path) as during:
        failed = example.ingot("deploy")
    assert failed.code == 1
    assert "did not become healthy" in failed.err
    assert "database unreachable" in failed.err  # the instance's last log lines
    assert f"still serving: release {good}" in failed.err
    assert "Traceback" not in failed.err
    _assert_clean(during, {"1"})
    assert example.get()["release"] == good
    status = example.ingot("status", "--json", check=True).json
    assert {i["release"] for i in status["services"][0]["instances"]} == {good}
    log = example.ingot("audit", "log", "--json", "--limit", "1000").json
    fail = [e for e in log if e["action"] == "deploy.fail"]
    assert fail and "did not become healthy" in fail[-1]["payload"]["error"]
    assert example.ingot("history", "--json").json[0]["outcome"] == "failed"


def agent_back(example: ExampleProject, dead_pid: int, timeout: float = 10.0) -> dict[str, Any]:
    """Wait for the supervisor to have started a new agent; its status."""
    return poll(lambda: (s := example.ingot("status", "--json").json)["agent"]["running"]
                and s["agent"]["pid"] != dead_pid and s, timeout=timeout, what="the agent to be back")  # type: ignore[no-any-return]


def test_agent_restart_adopts_instances_and_router_returns(example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    before = example.ingot("status", "--json", check=True).json
    pids = {i["pid"] for i in before["services"][0]["instances"]}
    agent_pid = before["agent"]["pid"]
    with load(example.url, tmp_path) as report:
        os.kill(agent_pid, 9)
        # Back by itself (ingot's supervisor), with no command; the edge serves while it is gone.
        after = agent_back(example, agent_pid, timeout=5)
    assert report["failures"] == [] and report["requests"] > 0
    assert {i["pid"] for i in after["services"][0]["instances"]} == pids  # adopted, not restarted
    log = example.ingot("audit", "log", "--json", "--limit", "1000").json
    recover = [e for e in log if e["action"] == "agent.recover"][-1]
    assert sorted(recover["payload"]["adopted"]) == sorted(i["id"] for i in after["services"][0]["instances"])


def test_agent_restart_replaces_instances_that_died(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    before = example.ingot("status", "--json", check=True).json
    kill_pidfile(example.state / "supervisor.pid")  # the agent stays down until asked, for this test
    os.kill(before["agent"]["pid"], 9)
    victim = before["services"][0]["instances"][0]
    os.killpg(victim["pid"], 9)
    poll(lambda: example.ingot("status", "--json").json["agent"]["running"] is False, what="agent to die")
    assert example.get()["version"] == "1"  # the edge sends everything to the instance left
    example.ingot("agent", check=True)
    after = poll(lambda: (s := example.ingot("status", "--json").json)["services"][0]["instances"]
                 and len([i for i in s["services"][0]["instances"] if i["state"] == "running"]) == 2 and s,
                 timeout=30, what="two running instances again")
    ids = {i["id"] for i in after["services"][0]["instances"]}
    assert victim["id"] not in ids
    assert example.get()["version"] == "1"


def test_tampered_ledger_fails_audit_verify(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    import sqlite3

    db = sqlite3.connect(example.state / "state.db")
    db.execute("DROP TRIGGER ledger_no_update")
    db.execute("UPDATE ledger SET actor = 'mallory' WHERE seq = 2")
    db.commit()
    db.close()
    result = example.ingot("audit", "verify")
    assert result.code == 1
    assert "ledger entry 2" in result.err


def test_tampered_release_fails_audit_verify(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    import sqlite3

    db = sqlite3.connect(example.state / "state.db")
    db.execute("DROP TRIGGER releases_no_update")
    spec = json.loads(db.execute("SELECT spec_json FROM releases").fetchone()[0])
    spec["env"]["GREETING"] = "pwned"
    db.execute("UPDATE releases SET spec_json = ?", (json.dumps(spec),))
    db.commit()
    db.close()
    result = example.ingot("audit", "verify")
    assert result.code == 1 and "release" in result.err and "spec snapshot" in result.err


def test_agent_killed_mid_deploy_loses_nothing(example: ExampleProject) -> None:
    import subprocess
    import sys

    example.ingot("deploy", check=True)
    good = example.get()["release"]
    answer_health_with(example, 503, "warming up")
    agent_pid = example.ingot("status", "--json", check=True).json["agent"]["pid"]
    deploying = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: any(h["outcome"] == "running" for h in example.ingot("history", "--json").json),
             timeout=60, what="the deploy to be under way")
        poll(lambda: len(example.ingot("status", "--json").json["services"][0]["instances"]) == 4,
             timeout=30, what="the new instances to start")
        os.kill(agent_pid, 9)
    finally:
        deploying.wait(timeout=30)
    assert deploying.returncode == 1  # the CLI says the agent went away, not that all is well

    example.ingot("agent", check=True)
    poll(lambda: example.get()["release"] == good, timeout=30, what="the old release serving again")
    history = example.ingot("history", "--json", check=True).json
    assert history[0]["outcome"] == "interrupted" and history[0]["release"] != good
    status = poll(lambda: (s := example.ingot("status", "--json").json)
                  and len(s["services"][0]["instances"]) == 2 and s, timeout=30, what="leftovers stopped")
    assert {i["release"] for i in status["services"][0]["instances"]} == {good}
    assert all(i["health"] == "healthy" for i in status["services"][0]["instances"])
    actions = [e["action"] for e in example.ingot("audit", "log", "--json", "--limit", "1000").json]
    assert "deploy.interrupted" in actions
    assert "ledger intact" in example.ingot("audit", "verify", check=True).out


def test_router_address_taken_at_restart_is_reported_and_down_still_stops_everything(
        example: ExampleProject) -> None:
    import fcntl
    import socket

    example.ingot("deploy", check=True)
    before = example.ingot("status", "--json", check=True).json
    pids = [i["pid"] for i in before["services"][0]["instances"]]
    # A killed agent is started again by its supervisor, with no command; the edge served throughout.
    os.kill(before["agent"]["pid"], 9)
    poll(lambda: (s := example.ingot("status", "--json").json)["agent"]["running"]
         and s["agent"]["pid"] != before["agent"]["pid"], timeout=10, what="the agent to be back")
    assert example.get()["version"] == "1"

    # The edge stops (its state stays), and its address is taken before it comes back.
    # The agent is stopped meanwhile: its edge poll would start the edge again at once.
    edge = Path(os.environ["INGOT_EDGE_HOME"])
    agent = example.ingot("status", "--json", check=True).json["agent"]["pid"]
    os.kill(agent, signal.SIGSTOP)
    stop_edge(edge)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", example.port))
    squatter.listen()
    try:
        os.kill(agent, signal.SIGKILL)

        def recover_failure() -> dict[str, Any] | None:
            log = example.ingot("audit", "log", "--json", "--limit", "1000").json
            return next((e for e in reversed(log) if e["action"] == "agent.recover.fail"), None)

        failure = poll(recover_failure, timeout=30, what="the restarted agent to report the taken address")
        assert "already in use" in failure["payload"]["error"]
    finally:
        squatter.close()

    # An agent that cannot start (its pidfile held by a wedged process) cannot stop anything: down does.
    agent_pid = example.ingot("status", "--json", check=True).json["agent"]["pid"]
    holder = open(example.state / "agent.pid", "a")  # noqa: SIM115 - held for the duration
    try:
        kill_pidfile(example.state / "supervisor.pid")  # no supervisor either, or it would take the lock first
        os.kill(agent_pid, signal.SIGKILL)

        def take_lock() -> bool:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True

        poll(take_lock, timeout=15, what="the dead agent's pidfile lock")
        (example.state / "agent.sock").unlink(missing_ok=True)
        down = example.ingot("down")
        assert down.code == 0, down.err
        for pid in pids:
            poll(lambda p=pid: process_gone(p), timeout=15, what=f"instance {pid} to stop")
    finally:
        holder.close()
    actions = [e["action"] for e in example.ingot("audit", "log", "--json", "--limit", "1000").json]
    assert actions[-1] == "down"
