"""Shared parts of the deploy benchmarks: the health poll of a lower bound, and the measuring loop."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from tests.support.harness import ExampleProject, load

INTERVAL = 0.2  # the example spec's health interval
THRESHOLD = 2


def poll_healthy(ports: list[int]) -> None:
    """Poll each port's /healthz until THRESHOLD successes in a row, spaced like ingot's gate."""
    pending = {p: 0 for p in ports}
    with httpx.Client(trust_env=False, timeout=2) as client:
        while pending:
            for port in list(pending):
                try:
                    ok = client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                pending[port] = pending[port] + 1 if ok else 0
                if pending[port] >= THRESHOLD:
                    del pending[port]
            if pending:
                time.sleep(INTERVAL if any(pending.values()) else 0.1)


def timed(project: ExampleProject, *args: str) -> float:
    started = time.perf_counter()
    project.ingot(*args, check=True)
    return time.perf_counter() - started


def measure(project: ExampleProject, replicas: int, repeat: int, work: Path,
            lower_bound: Callable[[], float], prebuild: bool = False) -> dict[str, object]:
    """Deploy a changed version and roll back, `repeat` times, under load; compare with the lower bound."""
    project.ingot("deploy", check=True)  # the first deploy starts the agent; not measured
    bounds, builds, deploys, rollbacks, failures, requests = [], [], [], [], 0, 0
    for run in range(repeat):
        bounds.append(lower_bound())
        project.set_version(f"bench-{run}")
        if prebuild:
            builds.append(timed(project, "build"))
        with load(project.url, work, connections=2) as report:
            deploys.append(timed(project, "deploy"))
            rollbacks.append(timed(project, "rollback"))
        failures += len(report["failures"])
        requests += int(report["requests"])
    bound = statistics.median(bounds)
    deploy = statistics.median(deploys)
    target = 1.5 * bound + 0.5
    row: dict[str, object] = {"replicas": replicas, "lower_bound_s": round(bound, 3)}
    if prebuild:
        row["build_s"] = round(statistics.median(builds), 3)
    row.update({
        "deploy_s": round(deploy, 3),
        "rollback_s": round(statistics.median(rollbacks), 3),
        "ratio": round(deploy / bound, 2),
        "target_s": round(target, 3),
        "pass": "PASS" if deploy <= target and failures == 0 else "FAIL",
        "requests_during": requests,
        "failed_requests": failures,
    })
    return row
