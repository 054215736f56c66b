"""Workers (`port: null`) and volumes on the process runtime: no router, deployed by replacement, a queue
drained across deploys and a rollback without losing or repeating a job, state kept in a volume."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import ExampleProject, free_port, poll, stop_everything

APP = Path(__file__).with_name("worker_app")
JOBS = 10_000  # seeded; `Feeder` offers them a few at a time
SPEC = """\
project: workers
services:
  worker:
    command: [python, worker.py, "${{INGOT_INSTANCE}}"]
    port: null
    replicas: 1
    env: {{VERSION: "{version}", JOBS: "{jobs}", JOB_SECONDS: "0.05"}}
    volumes: {{queue: /data}}
    stop_timeout: 5s
    health: {{command: {check}, interval: 100ms, timeout: 2s, healthy_threshold: 1, deadline: 3s}}
    strategy: {{type: blue-green, min_ready: 500ms}}
"""
READY = '[test, -f, "${INGOT_VOLUME_QUEUE}/ready-${INGOT_INSTANCE}"]'


def write_spec(project: ExampleProject, version: str, check: str = READY) -> None:
    (project.root / "ingot.yaml").write_text(SPEC.format(version=version, jobs=JOBS, check=check))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ExampleProject]:
    root = tmp_path / "workers"
    shutil.copytree(APP, root, ignore=shutil.ignore_patterns("__pycache__"))
    project = ExampleProject(root, 0, _project="workers")
    write_spec(project, "1")
    yield project
    stop_everything(project)
    from ingot.paths import StatePaths

    shutil.rmtree(StatePaths(project.state.resolve()).volumes, ignore_errors=True)  # this state's volumes


def volume_dir(project: ExampleProject) -> Path:
    from ingot.paths import StatePaths

    return StatePaths(project.state.resolve()).volumes / "workers" / "default" / "queue"


def queue(project: ExampleProject, sql: str, *args: Any) -> list[Any]:
    with closing(sqlite3.connect(f"file:{volume_dir(project) / 'queue.db'}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, args).fetchall()


def done(project: ExampleProject) -> int:
    return int(queue(project, "SELECT count(*) FROM done")[0][0])


class Feeder(threading.Thread):
    """Keeps a few jobs offered beyond those done (the queue's `limit`), so that the workers have work in
    hand whenever a deploy stops one, however long ingot's commands take on a busy machine. `stop()`
    freezes the limit: the jobs below it are the ones that must each be done once."""

    def __init__(self, project: ExampleProject, ahead: int = 3) -> None:
        super().__init__(daemon=True)
        self.project, self.ahead, self.limit = project, ahead, 0
        self._frozen = threading.Event()

    def run(self) -> None:
        while not self._frozen.is_set():
            with contextlib.suppress(sqlite3.Error, OSError):
                self.offer(done(self.project) + self.ahead)
            self._frozen.wait(0.05)

    def offer(self, limit: int) -> None:
        if limit > self.limit:
            tmp = volume_dir(self.project) / "limit.tmp"
            tmp.write_text(str(limit))
            tmp.chmod(0o644)  # root's file, read by the instances' user
            tmp.replace(volume_dir(self.project) / "limit")
            self.limit = limit

    def stop(self) -> int:
        self._frozen.set()
        self.join()
        return self.limit


def service(project: ExampleProject) -> dict[str, Any]:
    return dict(project.ingot("status", "--json", check=True).json["services"][0])


def test_a_worker_drains_its_queue_across_a_deploy_and_a_rollback_losing_and_repeating_nothing(
        workers: ExampleProject) -> None:
    first = workers.ingot("deploy", check=True)
    assert "worker (no listener)" in first.out
    status = service(workers)
    old = status["release"]
    assert status["worker"] is True and status["url"] == "worker (no listener)"
    assert status["router"]["listening"] is False and status["router"]["stats"] == {}
    [instance] = status["instances"]
    assert instance["port"] == 0 and instance["state"] == "running" and instance["health"] == "healthy"
    feeder = Feeder(workers)
    feeder.start()
    poll(lambda: done(workers) >= 10, timeout=20, what="v1 to work")

    write_spec(workers, "2")
    plan = workers.ingot("plan", "--json", check=True).json[0]
    assert [s["kind"] for s in plan["steps"]] == ["start", "wait_healthy", "route", "settle", "stop"]
    workers.ingot("deploy", check=True)
    new = service(workers)["release"]
    assert new != old
    poll(lambda: queue(workers, "SELECT count(*) FROM done WHERE version = '2'")[0][0] >= 10, timeout=20,
         what="v2 to work")

    workers.ingot("rollback", check=True)
    assert service(workers)["release"] == old
    at_rollback = done(workers)
    poll(lambda: done(workers) >= at_rollback + 10, timeout=20, what="v1 to work again")
    offered = feeder.stop()
    poll(lambda: done(workers) == offered, timeout=20, what="every job offered to be done")

    # Every job done exactly once, none left taken (a worker cut mid-job would leave one), by both releases.
    assert queue(workers, "SELECT job FROM done GROUP BY job HAVING count(*) > 1") == []
    assert queue(workers, "SELECT count(*) FROM jobs WHERE state != 'done' AND id < ?", offered) == [(0,)]
    assert queue(workers, "SELECT count(*) FROM jobs WHERE state != 'new' AND id >= ?", offered) == [(0,)]
    assert {v for (v,) in queue(workers, "SELECT DISTINCT version FROM done")} == {"1", "2"}
    # The volume outlived each replacement: one queue, and the boots of v1, v2 and v1 again in one file.
    boots = (volume_dir(workers) / "boots").read_text().split()
    assert boots[::2] == ["1", "2", "1"], boots
    # The workers each deploy stopped were asked to (SIGTERM) and finished their job in hand.
    from ingot.paths import StatePaths

    for stopped in boots[1:4:2]:
        log = StatePaths(workers.state.resolve()).instance_log("default", "worker", stopped).read_text()
        assert "stopping after its job in hand" in log, log

    # The volume is listed with what uses it, and is not removed while a live release does.
    [listed] = workers.ingot("volume", "ls", "--json", check=True).json
    assert listed["name"] == "queue" and listed["used_by"] == [old] and listed["location"] == str(volume_dir(workers))
    refused = workers.ingot("volume", "rm", "queue")
    assert refused.code == 2 and "used by the live release" in refused.err and old in refused.err
    assert (volume_dir(workers) / "queue.db").exists()
    workers.ingot("down", check=True)
    workers.ingot("volume", "rm", "queue", check=True)
    assert not volume_dir(workers).exists()
    assert workers.ingot("volume", "rm", "queue").code == 2


def test_a_worker_failing_its_health_command_fails_the_deploy_and_the_previous_worker_keeps_working(
        workers: ExampleProject) -> None:
    workers.ingot("deploy", check=True)
    before = service(workers)
    write_spec(workers, "2", check='[sh, -c, "echo queue unreachable; exit 3"]')
    failed = workers.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "did not become healthy" in failed.err and "exit 3: queue unreachable" in failed.err
    assert "Traceback" not in failed.err
    after = service(workers)
    assert after["release"] == before["release"]
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]
    assert workers.ingot("history", "--json", check=True).json[0]["outcome"] == "failed"
    working = done(workers)
    feeder = Feeder(workers)
    feeder.start()
    try:
        poll(lambda: done(workers) > working + 10, timeout=20, what="the previous worker to keep working")
    finally:
        feeder.stop()


def test_self_heal_replaces_a_killed_worker(workers: ExampleProject) -> None:
    workers.env["INGOT_HEAL_INTERVAL"] = "1s"
    workers.ingot("deploy", check=True)
    [victim] = service(workers)["instances"]
    os.killpg(int(victim["pid"]), signal.SIGKILL)
    [now] = poll(lambda: (s := service(workers)["instances"]) and s[0]["id"] != victim["id"]
                 and s[0]["state"] == "running" and s, timeout=30, what="the agent to replace the worker")
    assert now["health"] == "healthy"
    repairs = [e for e in workers.ingot("audit", "log", "--json", "--limit", "500", check=True).json
               if e["action"] == "drift.repair"]
    assert repairs and repairs[-1]["payload"]["replaced"] == [victim["id"]]
    assert len((volume_dir(workers) / "boots").read_text().splitlines()) == 2  # same volume, second boot


def test_port_and_ingot_variables_expand_in_command_arguments(tmp_path: Path) -> None:
    root = tmp_path / "expand"
    root.mkdir()
    port = free_port()
    (root / "ingot.yaml").write_text(f"""\
project: expand
services:
  web:
    command: [python, -m, http.server, "${{PORT}}", --bind, 127.0.0.1, --directory, "${{HOME_OF_NOBODY}}x"]
    health: {{path: /, interval: 100ms, deadline: 10s}}
    strategy: {{min_ready: 200ms}}
    router: {{listen: "127.0.0.1:{port}"}}
""")
    project = ExampleProject(root, port, _project="expand")
    try:
        bad = (root / "ingot.yaml").read_text().replace("${PORT}", "${INGOT_PORT}")
        (root / "bad.yaml").write_text(bad)
        refused = project.ingot("validate", "-f", "bad.yaml")
        assert refused.code == 2 and "command[3]" in refused.err and "${INGOT_PORT}" in refused.err
        (root / "${HOME_OF_NOBODY}x").mkdir()  # left as it is: not one of ingot's variables
        (root / "${HOME_OF_NOBODY}x" / "index.html").write_text("expanded")
        project.ingot("deploy", check=True)
        answer = httpx.get(project.url, timeout=5, trust_env=False)
        assert answer.status_code == 200 and answer.text == "expanded"
        [instance] = project.ingot("status", "--json", check=True).json["services"][0]["instances"]
        assert re.fullmatch(r"\d+", str(instance["port"])) and instance["port"] != port
    finally:
        stop_everything(project)
