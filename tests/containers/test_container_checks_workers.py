"""Smoke checks and workers (`port: null`) on the container runtime: a failing check aborts with the previous
release serving and a command check aimed at the new container itself; a worker is deployed by replacement,
and a failing health.command leaves the previous worker's container running."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import pytest

from tests.support.engines import remove_project_containers
from tests.support.harness import EXAMPLE, ExampleProject, load, make_container_example, stop_everything

FETCH = ("import os, urllib.request; url = os.environ['INGOT_TARGET_URL']; "
         "print(url, urllib.request.urlopen(url).read().decode())")
CHECKS = f"""\
    checks:
      - {{name: fetch, command: [python, -c, "{FETCH}"], timeout: 5s}}
      - {{http: /, status: 200, body: '"version": "1"'}}
"""
# A worker: no port, so no router and no listener; it leaves when asked (SIGTERM).
WORKER_SPEC = """\
project: {project}
services:
  worker:
    runtime: docker
    build: .
    port: null
    replicas: 1
    command: [sh, -c, "trap 'exit 0' TERM; echo working $VERSION; while :; do sleep 0.1; done"]
    env: {{VERSION: "{version}"}}
    stop_timeout: 5s
    volumes: {{queue: /var/lib/queue}}
    health: {{command: {check}, interval: 100ms, timeout: 2s, healthy_threshold: 1, deadline: 10s}}
    strategy: {{type: blue-green, min_ready: 500ms}}
"""
# Run on ingot's host, told which container it judges and where its volume is inside it: it notes both
# beside the spec.
READY = '[sh, -c, "echo ${{INGOT_CONTAINER}}:${{INGOT_VOLUME_QUEUE}} >> {root}/judged"]'


def entries(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    return [e["payload"] for e in log if e["action"] == action]


def running(engine: docker.DockerClient, project: str) -> dict[str, str]:
    """The project's running containers: their ID to their release."""
    return {c.id: c.labels["ingot.release"]
            for c in engine.containers.list(filters={"label": f"ingot.project={project}"})}


@pytest.fixture
def boxed(engine: docker.DockerClient, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_container_example(tmp_path, extra_service_yaml=CHECKS)
    yield example
    stop_everything(example)
    remove_project_containers(engine, example.project)


def test_a_failing_check_aborts_with_the_previous_release_and_a_command_check_targets_the_new_container(
        engine: docker.DockerClient, boxed: ExampleProject, tmp_path: Path) -> None:
    boxed.ingot("deploy", check=True)
    stable = boxed.get()["release"]
    before = running(engine, boxed.project)
    boxed.set_version("2")
    with load(boxed.url, tmp_path) as during:
        failed = boxed.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "check 'GET /' failed" in failed.err and "body does not match" in failed.err
    assert "Traceback" not in failed.err
    assert during["failures"] == [] and set(during["versions"]) == {"1"}
    assert boxed.get()["release"] == stable and running(engine, boxed.project) == before
    assert boxed.ingot("history", "--json", check=True).json[0]["outcome"] == "failed"

    checked = [p for p in entries(boxed, "deploy.check") if p["release"] != stable]
    fetch = next(p for p in checked if p["check"] == "fetch")
    assert fetch["ok"] and fetch["kind"] == "command"
    # Aimed at the new container's own published port, not at the router: it answered as version 2.
    url, answer = fetch["output"].split(" ", 1)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{boxed.port}")
    assert '"version": "2"' in answer
    failures = [p for p in checked if not p["ok"]]
    assert [p["kind"] for p in failures] == ["http", "http"] and '"version": "2"' in failures[0]["output"]


@pytest.fixture
def worker(engine: docker.DockerClient, tmp_path: Path) -> Iterator[ExampleProject]:
    root = tmp_path / "worker"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".ingot", "__pycache__", "*.yaml"))
    project = ExampleProject(root, 0, _project=f"cw-{uuid.uuid4().hex[:8]}")
    yield project
    stop_everything(project)
    remove_project_containers(engine, project.project)
    for volume in engine.volumes.list(filters={"name": f"ingot-{project.project}-"}):
        volume.remove(force=True)


def write_worker(project: ExampleProject, version: str, check: str | None = None) -> None:
    check = check or READY.format(root=project.root)
    (project.root / "ingot.yaml").write_text(WORKER_SPEC.format(project=project.project, version=version,
                                                                check=check))


def test_a_container_worker_is_replaced_and_a_failing_health_command_keeps_the_old_one(
        engine: docker.DockerClient, worker: ExampleProject) -> None:
    write_worker(worker, "1")
    first = worker.ingot("deploy")
    assert first.code == 0, first.out + first.err
    assert "worker (no listener)" in first.out
    status = worker.ingot("status", "--json", check=True).json["services"][0]
    one = status["release"]
    assert status["worker"] is True and status["router"]["listening"] is False
    [instance] = status["instances"]
    assert instance["state"] == "running" and instance["health"] == "healthy"
    [(old_box, release)] = running(engine, worker.project).items()
    assert release == one
    # The image EXPOSEs 8000; a worker publishes nothing on the host.
    assert not any(engine.containers.get(old_box).attrs["NetworkSettings"]["Ports"].values())

    write_worker(worker, "2")
    worker.ingot("deploy", check=True)
    two = worker.ingot("status", "--json", check=True).json["services"][0]["release"]
    assert two != one
    [(new_box, release)] = running(engine, worker.project).items()
    assert release == two and new_box != old_box  # the new one runs, the old one was stopped
    assert "working 2" in engine.containers.get(new_box).logs().decode()
    judged = set((worker.root / "judged").read_text().split())
    # Each release's health.command saw its own container, and the volume's place inside it.
    assert {f"{old_box}:/var/lib/queue", f"{new_box}:/var/lib/queue"} <= judged, judged

    write_worker(worker, "3", check='[sh, -c, "echo broker unreachable; exit 3"]')
    failed = worker.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "did not become healthy" in failed.err and "exit 3: broker unreachable" in failed.err
    assert "Traceback" not in failed.err
    assert running(engine, worker.project) == {new_box: two}
    assert worker.ingot("status", "--json", check=True).json["services"][0]["release"] == two
    assert worker.ingot("history", "--json", check=True).json[0]["outcome"] == "failed"
    # Nothing drifted: the engine's own changes for the volume's mount point are not the instance's doing.
    drift = worker.ingot("drift", "--json")
    assert drift.code == 0 and drift.json == [], drift.out
