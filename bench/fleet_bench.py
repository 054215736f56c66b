"""A fleet on one machine: 50 services x 4 replicas of a tiny app on the process runtime, built-in routers.

Measured in one run, against a lower bound measured in the same run:

- lower bound: the 200 app processes started directly, in parallel, and polled healthy with the spec's
  health policy (bench/deploy_bench.py's);
- `ingot deploy` of every service in one command: the first (which also starts the agent and builds
  the artifact) and a redeploy of a new version (every service blue-green: 200 fresh instances beside
  the 200 serving, then those retired), both as a user runs them, CLI start included;
- `ingot status` and `ingot drift`, each on its fast path (answered by the agent) and with the full CLI
  (INGOT_FAST_PATH=0), medians of `--repeat` runs;
- the resident memory (VmRSS from /proc) of the agent and of the edge that carries the 50 routers.

Targets (issue 13): status <= 0.5 s, drift <= 2 s; a deploy of the fleet within 1.5 x the lower bound
+ 0.5 s. Listeners on 127.0.0.1 from --port-base up (one per service).

    python bench/fleet_bench.py [--services 50] [--replicas 4] [--port-base 27000] [--json bench/results/fleet.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import EXAMPLE, ExampleProject, stop_edge, stop_everything

from bench._common import console, print_table, write_json
from bench.deploy_bench import lower_bound

STATUS_TARGET_S = 0.5
DRIFT_TARGET_S = 2.0
SERVICE = """  s{index:02d}:
    build: .
    command: [python, app.py]
    port: 8000
    replicas: {replicas}
    health: {{path: /healthz, interval: 200ms, timeout: 2s, healthy_threshold: 2, deadline: 60s}}
    strategy: {{type: blue-green, drain_timeout: 10s, min_ready: 0s}}
    router: {{listen: "127.0.0.1:{port}"}}
"""


def make_fleet(work: Path, services: int, replicas: int, port_base: int) -> ExampleProject:
    """The bundled example's app as `services` services of `replicas` replicas, each behind its own listener."""
    root = work / "fleet"
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE / "app.py", root / "app.py")
    spec = "project: fleet\nservices:\n" + "".join(
        SERVICE.format(index=i, replicas=replicas, port=port_base + i) for i in range(services))
    (root / "ingot.yaml").write_text(spec + "environments:\n  staging: {}\n")
    # Drift is measured by `ingot drift`, not repaired on an interval meanwhile.
    return ExampleProject(root, port_base, env={"INGOT_HEAL_INTERVAL": "0"}, _project="fleet")


def timed(project: ExampleProject, *args: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    project.ingot(*args, check=True, timeout=900, extra_env=env)
    return round(time.perf_counter() - started, 3)


def median_of(repeat: int, project: ExampleProject, *args: str, env: dict[str, str] | None = None) -> float:
    return round(statistics.median(timed(project, *args, env=env) for _ in range(repeat)), 3)


def rss_mb(pid_file: Path) -> float | None:
    """VmRSS of the process a pidfile names, in MB (None if it is not running)."""
    try:
        pid = int(pid_file.read_text().strip())
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def serving(project: ExampleProject, services: int, replicas: int) -> int:
    """How many instances the store records running (read directly: `status` is timed on its own)."""
    from ingot.store import Store

    store = Store(project.state)
    try:
        running = [r for r in store.live_instances() if r.state == "running"]
    finally:
        store.close()
    assert len(running) == services * replicas, f"{len(running)} instances running, expected {services * replicas}"
    return len(running)


def attempt(what: str, measure: Callable[[], float]) -> float | str:
    """`measure()`, or what went wrong (the other figures are still worth having)."""
    try:
        value = measure()
    except AssertionError as exc:
        value_text = str(exc).strip().splitlines()
        return f"failed: {value_text[-1] if value_text else exc}"
    console.print(f"{what}: {value} s")
    return value


def passed(value: float | str, target: float) -> str:
    return "PASS" if isinstance(value, float) and value <= target else "FAIL"


def ratio(value: float | str, bound: float) -> float | None:
    return round(value / bound, 2) if isinstance(value, float) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port-base", type=int, default=27000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/fleet.json"))
    args = parser.parse_args()
    total = args.services * args.replicas
    with tempfile.TemporaryDirectory(prefix="ingot-fleet-") as tmp:
        work = Path(tmp)
        edge_home = work / "edge"
        os.environ["INGOT_EDGE_HOME"] = str(edge_home)  # an edge of its own, stopped at the end
        os.environ["INGOT_EDGE_HTTP"] = f"127.0.0.1:{args.port_base + args.services}"
        os.environ["INGOT_EDGE_HTTPS"] = f"127.0.0.1:{args.port_base + args.services + 1}"
        project = make_fleet(work, args.services, args.replicas, args.port_base)
        try:
            bound = round(lower_bound(project, total), 3)
            console.print(f"lower bound: {bound} s")
            first = attempt("first deploy", lambda: timed(project, "deploy"))
            serving(project, args.services, args.replicas)
            bound_again = round(lower_bound(project, total), 3)
            console.print(f"lower bound again: {bound_again} s")
            project.set_version("2")
            redeploy = attempt("redeploy", lambda: timed(project, "deploy"))
            healthy = serving(project, args.services, args.replicas)
            status_fast = attempt("status", lambda: median_of(args.repeat, project, "status"))
            status_full = attempt("status (full CLI)", lambda: median_of(args.repeat, project, "status",
                                                                         env={"INGOT_FAST_PATH": "0"}))
            drift = attempt("drift", lambda: median_of(args.repeat, project, "drift"))
            drift_full = attempt("drift (full CLI)", lambda: median_of(args.repeat, project, "drift",
                                                                       env={"INGOT_FAST_PATH": "0"}))
            version = timed(project, "--version")
            agent_rss = rss_mb(project.state / "agent.pid")
            edge_rss = rss_mb(edge_home / "edge.pid")
        finally:
            with contextlib.suppress(OSError):  # for a look after the run
                shutil.copy(project.state / "agent.log", Path(tempfile.gettempdir()) / "ingot-fleet-agent.log")
            try:
                stop_everything(project)
            finally:
                stop_edge(edge_home)
    bound_median = round(statistics.median([bound, bound_again]), 3)
    target = round(1.5 * bound_median + 0.5, 3)
    rows: list[dict[str, Any]] = [
        {"measure": f"lower bound: {total} app processes started directly, healthy", "seconds": bound_median,
         "ratio": 1.0, "target_s": None, "pass": None},
        {"measure": f"ingot deploy, {args.services} services x {args.replicas} (first: agent start, build)",
         "seconds": first, "ratio": ratio(first, bound_median), "target_s": target, "pass": passed(first, target)},
        {"measure": "ingot deploy, every service to a new version (blue-green)", "seconds": redeploy,
         "ratio": ratio(redeploy, bound_median), "target_s": target, "pass": passed(redeploy, target)},
        {"measure": "ingot status (fast path)", "seconds": status_fast, "target_s": STATUS_TARGET_S,
         "pass": passed(status_fast, STATUS_TARGET_S)},
        {"measure": "ingot status (full CLI)", "seconds": status_full, "target_s": STATUS_TARGET_S,
         "pass": passed(status_full, STATUS_TARGET_S)},
        {"measure": "ingot drift (fast path)", "seconds": drift, "target_s": DRIFT_TARGET_S,
         "pass": passed(drift, DRIFT_TARGET_S)},
        {"measure": "ingot drift (full CLI)", "seconds": drift_full, "target_s": DRIFT_TARGET_S,
         "pass": passed(drift_full, DRIFT_TARGET_S)},
        {"measure": "ingot --version (CLI start alone)", "seconds": version},
    ]
    print_table(f"a fleet of {args.services} services x {args.replicas} replicas on one machine "
                f"({os.cpu_count()} CPUs; medians of {args.repeat} for status and drift)", rows)
    memory = [{"process": "agent", "rss_mb": agent_rss}, {"process": "edge (all the routers)", "rss_mb": edge_rss}]
    print_table(f"resident memory with {healthy} instances serving", memory)
    write_json(args.json, {"benchmark": "fleet", "services": args.services, "replicas": args.replicas,
                           "lower_bound_runs_s": [bound, bound_again], "rows": rows, "memory": memory,
                           "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
