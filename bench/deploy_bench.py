"""Deploy and rollback wall time on the process runtime, against a lower bound measured in the same run.

Lower bound: the same app processes started directly, in parallel, and polled healthy with the same
health policy (interval and healthy threshold). ingot's time is the whole `ingot deploy` command,
as a user runs it: CLI start, build (a changed file), release signing, new instances, health gate,
traffic switch, drain, stopping the old instances. A load client in a separate process checks that
no request fails meanwhile.

    python bench/deploy_bench.py [--repeat 3] [--replicas 1 4] [--json bench/results/deploy.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import ExampleProject, free_port, load, make_example, stop_everything

from bench._common import print_table, write_json

INTERVAL = 0.2  # the example spec's health interval
THRESHOLD = 2


def lower_bound(project: ExampleProject, replicas: int) -> float:
    """Start the app directly `replicas` times and poll each healthy with the same policy."""
    started = time.perf_counter()
    ports = [free_port() for _ in range(replicas)]
    procs = [
        subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=project.root,
            env={"PORT": str(p), "PATH": "/usr/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
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
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def timed(project: ExampleProject, *args: str) -> float:
    started = time.perf_counter()
    project.ingot(*args, check=True)
    return time.perf_counter() - started


def measure(replicas: int, repeat: int, work: Path) -> dict[str, object]:
    project = make_example(work / f"r{replicas}", replicas=replicas)
    try:
        project.ingot("deploy", check=True)  # first deploy starts the agent; not measured
        bounds, deploys, rollbacks, failures, requests = [], [], [], 0, 0
        for run in range(repeat):
            bounds.append(lower_bound(project, replicas))
            project.set_version(f"bench-{run}")
            with load(project.url, work, connections=2) as report:
                deploys.append(timed(project, "deploy"))
                rollbacks.append(timed(project, "rollback"))
            failures += len(report["failures"])
            requests += int(report["requests"])
        bound = statistics.median(bounds)
        deploy = statistics.median(deploys)
        target = 1.5 * bound + 0.5
        return {
            "replicas": replicas,
            "lower_bound_s": round(bound, 3),
            "deploy_s": round(deploy, 3),
            "rollback_s": round(statistics.median(rollbacks), 3),
            "ratio": round(deploy / bound, 2),
            "target_s": round(target, 3),
            "pass": "PASS" if deploy <= target and failures == 0 else "FAIL",
            "requests_during": requests,
            "failed_requests": failures,
        }
    finally:
        stop_everything(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, default=Path("bench/results/deploy.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
        rows = [measure(n, args.repeat, Path(tmp)) for n in args.replicas]
    print_table(
        "deploy and rollback wall time (median), target: deploy <= 1.5 x lower bound + 0.5 s, "
        "zero failed requests",
        rows,
    )
    write_json(args.json, {"benchmark": "deploy", "repeat": args.repeat, "rows": rows})


if __name__ == "__main__":
    main()
