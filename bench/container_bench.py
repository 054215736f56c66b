"""Container deploys and drift checks, against baselines measured in the same run.

Deploy: `ingot deploy` of a changed version (the image built just before with `ingot build`, timed
on its own) against the lower bound: the same number of containers of the same image, hardened the
same way, started directly through the engine in parallel and polled healthy with the same policy.
Drift: `ingot drift` over 20 running containers against the raw engine calls a drift check cannot
avoid (inspect and diff of each container), made directly from this process.

    eval "$(bash scripts/provision-containers)"
    python bench/container_bench.py [--repeat 3] [--replicas 1 4] [--drift-instances 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import ExampleProject, make_container_example, stop_everything

from bench._common import print_table, write_json
from bench._deploys import measure, poll_healthy
from ingot.runtimes.engine import connect_engine


def project_name(project: ExampleProject) -> str:
    return (project.root / "ingot.yaml").read_text().split("project: ", 1)[1].split()[0]


def live_image(project: ExampleProject) -> str:
    return str(project.ingot("history", "--json", check=True).json[0]["artifact"])


def lower_bound(project: ExampleProject, replicas: int) -> float:
    """The live image started `replicas` times straight through the engine, in parallel, polled healthy."""
    client = connect_engine()
    image = live_image(project)
    started = time.perf_counter()

    def start(_: int) -> Any:
        container = client.containers.run(
            image, detach=True, read_only=True, tmpfs={"/tmp": ""}, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], environment={"PORT": "8000"},
            ports={"8000/tcp": ("127.0.0.1", None)}, labels={"ingot.bench": "lower-bound"})
        container.reload()
        return container

    with ThreadPoolExecutor(max_workers=replicas) as pool:
        containers = list(pool.map(start, range(replicas)))
    try:
        ports = [int(c.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]) for c in containers]
        poll_healthy(ports)
        return time.perf_counter() - started
    finally:
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def deploys(replicas: int, repeat: int, work: Path) -> dict[str, object]:
    # min_ready 0: the figure is ingot's own work; the settle is a wait the spec asks for on purpose.
    project = make_container_example(work / f"r{replicas}", replicas=replicas, min_ready="0s")
    try:
        return measure(project, replicas, repeat, work, lambda: lower_bound(project, replicas), prebuild=True)
    finally:
        stop_everything(project)


def drift(instances: int, repeat: int, work: Path) -> dict[str, object]:
    project = make_container_example(work / "drift", replicas=instances)
    try:
        project.ingot("deploy", check=True, timeout=600)
        client = connect_engine()
        label = f"ingot.project={project_name(project)}"

        def raw_check() -> float:
            started = time.perf_counter()
            for container in client.containers.list(all=True, filters={"label": label}):
                container.reload()
                container.diff()
            return time.perf_counter() - started

        def ingot_check() -> float:
            started = time.perf_counter()
            result = project.ingot("drift", "--json")
            assert result.code == 0, result.out + result.err
            return time.perf_counter() - started

        raw = statistics.median(raw_check() for _ in range(repeat))
        timed = statistics.median(ingot_check() for _ in range(repeat))
        return {"instances": instances, "engine_inspect_and_diff_s": round(raw, 3),
                "ingot_drift_s": round(timed, 3), "ratio": round(timed / raw, 2)}
    finally:
        stop_everything(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--drift-instances", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench/results/containers.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
        rows = [deploys(n, args.repeat, Path(tmp)) for n in args.replicas]
        drift_row = drift(args.drift_instances, args.repeat, Path(tmp))
    print_table("container deploy wall time (median), target: deploy <= 1.5 x lower bound + 0.5 s, "
                "zero failed requests", rows)
    print_table("ingot drift over running containers (median) vs the engine calls it cannot avoid", [drift_row])
    write_json(args.json, {"benchmark": "containers", "repeat": args.repeat, "deploys": rows, "drift": drift_row})


if __name__ == "__main__":
    main()
