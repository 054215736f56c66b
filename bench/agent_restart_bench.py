"""Agent restarts and hung instances under load, on both routers: failed requests, time back, time out.

For each router kind the bundled example is deployed (2 replicas), then wrk loads its router from
another process twice for the same time: once untouched (the baseline, same run), once while the
agent is killed with SIGKILL `--kills` times and started again by ingot's supervisor. The table gives
failed requests per restart, the seconds from the kill until the new agent answers, and the p99 and
req/s of the faulted run relative to the baseline. Then one instance is SIGSTOPped under the same load:
the seconds until the edge's router ejects it, against the bound its health check promises
(`(fall - 1) * interval + timeout` after the first unanswered probe, plus one interval of phase).

With `--edge`, the edge process (the data plane itself, not its supervisor) is killed instead of the
agent: failed requests per edge restart (HAProxy: adopted, target 0; built-in: the listening socket is
held by the supervisor, so 0 refused, and only requests in flight at the kill are lost), seconds until
the new edge answers its control socket, and req/s and p99 against the same run's baseline.

    python -m bench.agent_restart_bench [--kills 10] [--json bench/results/agent_restart.json]
    python -m bench.agent_restart_bench --edge [--kills 10] [--json bench/results/edge_restart.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.faults.test_agent_faults import kill_agent_and_time_return
from tests.faults.test_edge_restart import kill_edge_and_time_return
from tests.faults.test_instance_faults import backend_state
from tests.support.harness import ExampleProject, make_example, poll, stop_edge, stop_everything

from bench._common import print_table, run_wrk, write_json
from ingot.deploy_params import HealthPolicy
from ingot.edge.home import EdgeHome


def use_router(example: ExampleProject, kind: str) -> None:
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                             f'router: {{listen: "127.0.0.1:{example.port}", kind: {kind}}}'))


def measure(kind: str, kills: int, work: Path) -> dict[str, Any]:
    example = make_example(work / kind)
    use_router(example, kind)
    try:
        example.ingot("deploy", check=True)
        seconds = max(4.0, kills * 0.8)
        baseline = run_wrk(example.url, seconds, connections=8)
        returns: list[float] = []

        def kill_repeatedly() -> None:
            time.sleep(0.5)
            for _ in range(kills):
                returns.append(kill_agent_and_time_return(example))

        killer = threading.Thread(target=kill_repeatedly)
        killer.start()
        faulted = run_wrk(example.url, seconds + 1.0, connections=8)
        killer.join()
        eject = eject_time(example, seconds=4.0)
    finally:
        stop_everything(example)
    failed = faulted["error_total"]
    return {
        "router": kind,
        "restarts": len(returns),
        "failed_requests": failed,
        "failed_per_restart": round(failed / max(1, len(returns)), 2),
        "back_median_s": round(statistics.median(returns), 3) if returns else None,
        "back_max_s": round(max(returns), 3) if returns else None,
        "req_per_s_ratio": round(faulted["requests_per_s"] / max(1.0, baseline["requests_per_s"]), 3),
        "p99_ms": faulted["p99_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        **eject,
        "target": "PASS" if failed == 0 and returns and max(returns) < 2.0 and eject["eject_s"] < 3.0 else "FAIL",
    }


def measure_edge(kind: str, kills: int, work: Path) -> dict[str, Any]:
    example = make_example(work / kind)
    use_router(example, kind)
    try:
        example.ingot("deploy", check=True)
        seconds = max(4.0, kills * 0.8)
        baseline = run_wrk(example.url, seconds, connections=8)
        returns: list[float] = []
        home = EdgeHome.default()

        def kill_repeatedly() -> None:
            time.sleep(0.5)
            for _ in range(kills):
                returns.append(kill_edge_and_time_return(home))
                time.sleep(0.2)

        killer = threading.Thread(target=kill_repeatedly)
        killer.start()
        faulted = run_wrk(example.url, seconds + 1.0, connections=8)
        killer.join()
    finally:
        stop_everything(example)
    failed = faulted["error_total"]
    refused = faulted["errors"]["connect"]
    return {
        "router": kind,
        "edge_restarts": len(returns),
        "failed_requests": failed,
        "refused": refused,
        "errors": faulted["errors"],
        "baseline_failed": baseline["error_total"],
        "failed_per_restart": round(failed / max(1, len(returns)), 2),
        "back_median_s": round(statistics.median(returns), 3) if returns else None,
        "back_max_s": round(max(returns), 3) if returns else None,
        "req_per_s": round(faulted["requests_per_s"]),
        "baseline_req_per_s": round(baseline["requests_per_s"]),
        "req_per_s_ratio": round(faulted["requests_per_s"] / max(1.0, baseline["requests_per_s"]), 3),
        "p99_ms": faulted["p99_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        # HAProxy loses nothing; the built-in router only what was in flight (at most one per connection).
        "target": "PASS" if refused == 0 and returns and max(returns) < 2.0
        and failed <= (0 if kind == "haproxy" else 8 * len(returns)) else "FAIL",
    }


def eject_time(example: ExampleProject, seconds: float) -> dict[str, Any]:
    victim = example.ingot("status", "--json", check=True).json["services"][0]["instances"][0]
    check = HealthPolicy(path="/healthz", interval=0.2, timeout=2.0).for_router()  # the example spec's health
    loader = threading.Thread(target=run_wrk, args=(example.url, seconds), kwargs={"connections": 8})
    loader.start()
    time.sleep(1.0)
    os.killpg(victim["pid"], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        poll(lambda: backend_state(example, victim["port"]).startswith("ejected"), timeout=15, interval=0.01,
             what="the stopped instance to be ejected")
        took = time.monotonic() - stopped
    finally:
        os.killpg(victim["pid"], signal.SIGCONT)
        loader.join()
    bound = (check.fall - 1) * check.interval + check.timeout + check.interval
    return {"eject_s": round(took, 3), "eject_bound_s": round(bound, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--routers", default="builtin,haproxy")
    parser.add_argument("--edge", action="store_true", help="kill the edge instead of the agent")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    # An edge of its own, never the machine's (/var/lib/ingot/edge): the bench kills edges it finds.
    os.environ["INGOT_EDGE_HOME"] = tempfile.mkdtemp(prefix="ingot-edge-")
    try:
        return run(args)
    finally:
        stop_edge(Path(os.environ["INGOT_EDGE_HOME"]))


def run(args: argparse.Namespace) -> int:
    if args.edge:
        with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
            rows = [measure_edge(kind, args.kills, Path(tmp)) for kind in args.routers.split(",")]
        print_table(f"edge killed {args.kills} times under wrk -c8 (baseline: the same load, untouched)", rows)
        write_json(args.json or "bench/results/edge_restart.json",
                   {"benchmark": "edge_restart", "kills": args.kills, "rows": rows})
        return 0 if all(r["target"] == "PASS" for r in rows) else 1
    with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
        rows = [measure(kind, args.kills, Path(tmp)) for kind in args.routers.split(",")]
    print_table(f"agent killed {args.kills} times under wrk -c8 (baseline: the same load, untouched)", rows)
    write_json(args.json or "bench/results/agent_restart.json",
               {"benchmark": "agent_restart", "kills": args.kills, "rows": rows})
    return 0 if all(r["target"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
