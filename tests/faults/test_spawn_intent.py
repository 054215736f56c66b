"""Intent before spawning: nothing ingot starts outlives `ingot down`, even when the agent dies right after
a start step begins (issue 9: killed 12 ms after a start step, it left instances `down` did not stop)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.harness import ExampleProject, manual_repair, poll, processes_of


def _db(example: ExampleProject) -> sqlite3.Connection:
    return sqlite3.connect(example.state / "state.db", timeout=30, isolation_level=None)


def _agent_pid(example: ExampleProject) -> int:
    return int((example.state / "agent.pid").read_text().strip())


@contextlib.contextmanager
def _write_locked(example: ExampleProject) -> Iterator[None]:
    """Hold the state database's write lock: a stalled store, so the agent waits at its next write."""
    conn = _db(example)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _start_deploy(example: ExampleProject) -> subprocess.Popen[str]:
    env = {**os.environ, "INGOT_ACTOR": "tester@ci", **example.env}
    env.pop("INGOT_HOME", None)
    return subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_step_began(example: ExampleProject, after: float) -> bool:
    with contextlib.closing(_db(example)) as conn:
        return conn.execute("SELECT 1 FROM deployment_steps WHERE name = 'start' AND status = 'started' "
                            "AND at > ?", (after,)).fetchone() is not None


def _instance_processes(example: ExampleProject, release_prefix: str | None = None) -> list[int]:
    """Instance processes of the project (loggers and the agent left out), optionally of one release."""
    pids = []
    for pid, _cmdline in processes_of(example.state):
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            instance = next((e for e in env if e.startswith(b"INGOT_RELEASE=")), None)
            if instance is not None and (release_prefix is None or
                                         instance.decode().startswith(f"INGOT_RELEASE={release_prefix}")):
                pids.append(pid)
    return pids


def test_agent_killed_as_a_first_deploy_starts_instances_leaves_nothing_down_misses(
        example: ExampleProject) -> None:
    example.ingot("agent", check=True)
    since = time.time()
    deploy = _start_deploy(example)
    poll(lambda: _start_step_began(example, since), timeout=60, interval=0.002, what="the start step")
    with _write_locked(example):
        # The agent's next write waits. Before the fix, instances were spawned first and recorded after,
        # so they showed up now; with intent first, nothing may be spawned before its row is written.
        with contextlib.suppress(AssertionError):
            poll(lambda: _instance_processes(example), timeout=2, what="instances spawned unrecorded")
        os.kill(_agent_pid(example), signal.SIGKILL)
    deploy.communicate(timeout=60)
    assert deploy.returncode != 0
    down = example.ingot("down", check=True)
    assert "Traceback" not in down.err
    poll(lambda: not processes_of(example.state), timeout=10, what="nothing of the project left running")
    assert not [p for p in example.runs.iterdir()], "a checkout was left behind"
    with contextlib.closing(_db(example)) as conn:
        states = {state for (state,) in conn.execute("SELECT state FROM instances")}
    assert not states & {"spawning", "starting", "running"}, states


def test_agent_killed_between_spawning_and_recording_is_cleaned_up_by_recovery(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    v1 = example.get()
    serving = _instance_processes(example, v1["release"])
    example.set_version("2")
    since = time.time()
    deploy = _start_deploy(example)

    def spawning_row() -> str | None:
        with contextlib.closing(_db(example)) as conn:
            row = conn.execute("SELECT id FROM instances WHERE state = 'spawning' AND started_at > ?",
                               (since,)).fetchone()
        return str(row[0]) if row else None

    instance = poll(spawning_row, timeout=60, interval=0.001, what="an instance row written before its spawn")
    with _write_locked(example):
        # The row is there, its pid not yet: the agent is spawning, and waits to fill the row in.
        spawned = poll(lambda: [p for p in _instance_processes(example) if p not in serving],
                       timeout=10, what="the new instance's process")
        os.kill(_agent_pid(example), signal.SIGKILL)
    deploy.communicate(timeout=60)
    with contextlib.closing(_db(example)) as conn:
        pid = conn.execute("SELECT pid FROM instances WHERE id = ?", (instance,)).fetchone()[0]
    window_hit = pid is None

    # The agent comes back (any command that needs it starts it): it finds the half-started instance by
    # its labels and stops it; the release that was live serves on.
    example.ingot("agent", check=True)
    poll(lambda: not any(_alive(p) for p in spawned), timeout=30, what="recovery to stop the new instance")
    assert example.get()["release"] == v1["release"]
    with contextlib.closing(_db(example)) as conn:
        state, pid_after = conn.execute("SELECT state, pid FROM instances WHERE id = ?", (instance,)).fetchone()
    assert state == "failed"
    if window_hit:
        assert pid_after in spawned  # found by its labels, and recorded as what it was
    history = example.ingot("history", "--json", check=True).json
    assert history[0]["outcome"] == "interrupted"
    example.ingot("down", check=True)
    poll(lambda: not processes_of(example.state), timeout=10, what="nothing of the project left running")


def test_drift_finds_and_reconcile_stops_an_instance_whose_row_has_no_pid(example: ExampleProject,
                                                                          tmp_path: Path) -> None:
    manual_repair(example)
    example.ingot("deploy", check=True)
    live = example.get()["release"]
    # What an agent killed between the spawn and the record leaves: a row with no pid, and a process
    # that carries the row's labels (it runs from the live release's checkout, in its own process group).
    with contextlib.closing(_db(example)) as conn:
        handle, log_path = conn.execute("SELECT handle, log_path FROM instances WHERE state = 'running'").fetchone()
        conn.execute("INSERT INTO instances (id, environment, service, release_id, runtime, pid, proc_start, host, "
                     "port, log_path, started_at, stopped_at, state, handle) VALUES ('web-orphan1', 'staging', "
                     "'web', ?, 'process', NULL, NULL, '127.0.0.1', 0, ?, ?, NULL, 'spawning', ?)",
                     (live, log_path + ".orphan", time.time(), handle))
    env = {"PATH": os.environ["PATH"], "INGOT_STATE": str(example.state.resolve()), "INGOT_INSTANCE": "web-orphan1",
           "INGOT_ENVIRONMENT": "staging", "INGOT_SERVICE": "web", "INGOT_RELEASE": live, "PORT": "1"}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env, cwd=handle,
                              start_new_session=True)
    try:
        drift = example.ingot("drift", "--json")
        assert drift.code == 1
        [finding] = [f for f in drift.json if f["instance"] == "web-orphan1"]
        assert finding["kind"] == "leftover" and finding["evidence"]["running"] is True
        example.ingot("reconcile", check=True)
        assert orphan.wait(timeout=30) is not None
        with contextlib.closing(_db(example)) as conn:
            assert conn.execute("SELECT state, pid FROM instances WHERE id = 'web-orphan1'").fetchone() == (
                "failed", orphan.pid)
        assert example.ingot("drift").code == 0
        assert example.get()["release"] == live
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
