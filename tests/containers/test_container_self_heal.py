"""Self-healing of container instances, against the real engine: a killed container is replaced, unasked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import pytest

from tests.support.engines import remove_project_containers
from tests.support.harness import ExampleProject, load, make_container_example, poll, stop_everything


@pytest.fixture
def healing(engine: docker.DockerClient, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_container_example(tmp_path)
    example.env["INGOT_HEAL_INTERVAL"] = "1s"
    yield example
    stop_everything(example)
    project = (example.root / "ingot.yaml").read_text().split("project: ", 1)[1].split()[0]
    remove_project_containers(engine, project)


def instances(example: ExampleProject) -> list[dict[str, Any]]:
    return list(example.ingot("status", "--json", check=True).json["services"][0]["instances"])


def warm_up(example: ExampleProject) -> None:
    """Wait until the load client's connections through the router are established and busy."""
    def served() -> int:
        report = example.ingot("status", "--json", check=True).json["services"][0]
        return int(report["router"]["stats"][report["release"]]["requests"])

    start = served()
    poll(lambda: served() >= start + 200, timeout=30, what="the load to reach the router")


def test_killed_container_is_replaced_by_the_agent_with_zero_failed_requests(
        engine: docker.DockerClient, healing: ExampleProject, tmp_path: Path) -> None:
    healing.ingot("deploy", check=True)
    before = instances(healing)
    victim = before[0]
    container = next(c for c in engine.containers.list(filters={"label": f"ingot.instance={victim['id']}"}))
    with load(healing.url, tmp_path) as during:
        warm_up(healing)
        container.kill()
        now = poll(lambda: (s := instances(healing)) and len(s) == 2 and victim["id"] not in {i["id"] for i in s}
                   and all(i["health"] == "healthy" for i in s) and s, timeout=60, what="the agent to replace it")
    assert during["failures"] == [] and int(during["requests"]) > 50
    assert before[1]["id"] in {i["id"] for i in now}
    log = healing.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    [repair] = [e for e in log if e["action"] == "drift.repair"]
    assert repair["actor"] == "ingot-agent/self-heal" and repair["payload"]["replaced"] == [victim["id"]]
    assert [(f["kind"], f["instance"]) for f in repair["payload"]["findings"]] == [("exited", victim["id"])]
    project = (healing.root / "ingot.yaml").read_text().split("project: ", 1)[1].split()[0]
    running = {c.labels["ingot.instance"] for c in engine.containers.list(
        filters={"label": f"ingot.project={project}", "status": "running"})}
    assert {i["id"] for i in now} <= running and victim["id"] not in running
    assert healing.ingot("drift").code == 0
