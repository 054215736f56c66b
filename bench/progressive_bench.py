"""Progressive delivery on both routers (builtin, haproxy): failed requests, throughput, bad-canary exposure.

    python bench/progressive_bench.py [--quick] [--json bench/results/progressive.json]

1. Zero failed requests, under load from the harness load client (a separate process), through a
   blue-green deploy, a canary that walks every step, a rolling deploy (3 replicas, surge 1,
   unavailable 0) and a rollback, one run each per router, the whole `ingot` command timed.
2. Throughput and p50/p99 of wrk (its own process) direct to bench/_backend.py, through the builtin
   router and through an HAProxyRouter, each router in its own process pinned like router_bench.
3. A canary of a release whose `/` answers 500 (steps [{weight: 20, pause: 30s}], analysis
   interval 1s, max_error_rate 0.05, min_requests 10), under load from a client process that
   timestamps every response: exposure = first 5xx seen -> last 5xx seen. Target < 2 intervals.

One run of each: these are single measurements, not medians (router throughput: `--rounds`).
A missed target is reported, not an error; the exit code is 0 unless the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: `bench` is a package

from tests.integration.test_progressive import break_app, use_strategy
from tests.support.harness import ExampleProject, load, make_example, poll, stop_everything

from bench import router_bench
from bench._common import (
    console,
    cpu_plan,
    free_port,
    print_table,
    run_wrk,
    serve_until_signalled,
    terminate,
    wait_for_http,
    write_json,
)

HERE = Path(__file__).resolve().parent
ROUTERS = ("builtin", "haproxy")

CANARY_WALK = ("    strategy: {type: canary, drain_timeout: 5s,"
               " steps: [{weight: 20, pause: 1s}, {weight: 50, pause: 1s}],"
               " analysis: {interval: 500ms, max_error_rate: 0.05, max_p99_ms: 500, min_requests: 10}}")
ROLLING = "    strategy: {type: rolling, max_surge: 1, max_unavailable: 0, drain_timeout: 5s}"
BAD_INTERVAL_S = 1.0
BAD_CANARY = ("    strategy: {type: canary, drain_timeout: 5s, steps: [{weight: 20, pause: 30s}],"
              " analysis: {interval: 1s, max_error_rate: 0.05, max_p99_ms: 500, min_requests: 10}}")


# ---- project set-up ----------------------------------------------------------------------------

def project_for(router: str, work: Path, *, replicas: int = 2, strategy: str | None = None) -> ExampleProject:
    project = make_example(work, replicas=replicas)
    spec = project.root / "ingot.yaml"
    if router == "haproxy":
        old = f'router: {{listen: "127.0.0.1:{project.port}"}}'
        assert old in spec.read_text(), "the example spec's router line changed"
        spec.write_text(spec.read_text().replace(old, f'router: {{listen: "127.0.0.1:{project.port}", kind: haproxy}}'))
    if strategy is not None:
        use_strategy(project, strategy)
    return project


def timed(project: ExampleProject, *args: str) -> tuple[float, Any]:
    started = time.perf_counter()
    result = project.ingot(*args)
    return time.perf_counter() - started, result


# ---- 1. failed requests through each kind of operation ----------------------------------------

def op_row(router: str, op: str, seconds: float, result: Any, report: dict[str, Any]) -> dict[str, Any]:
    failures = report.get("failures", [])
    ok = result.code == 0 and not failures and int(report.get("requests", 0)) > 0
    row = {"router": router, "operation": op, "requests": int(report.get("requests", 0)),
           "failed": len(failures), "wall_s": round(seconds, 3), "exit": result.code,
           "versions_seen": ",".join(sorted(report.get("versions", {}))), "verdict": "PASS" if ok else "FAIL"}
    if failures:
        row["first_failure"] = failures[0][:120]
    if result.code != 0:
        row["error"] = (result.err or result.out).strip().splitlines()[-1:] or ""
    return row


def zero_failures(router: str, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # blue-green, then rollback, on one project (2 replicas).
    project = project_for(router, work / f"{router}-bg")
    try:
        project.ingot("deploy", check=True)
        project.set_version("2")
        with load(project.url, work, connections=4) as report:
            seconds, result = timed(project, "deploy")
        rows.append(op_row(router, "blue-green deploy", seconds, result, report))
        with load(project.url, work, connections=4) as report:
            seconds, result = timed(project, "rollback")
        rows.append(op_row(router, "rollback", seconds, result, report))
    finally:
        stop_everything(project)
    # canary walking all steps.
    project = project_for(router, work / f"{router}-canary", strategy=CANARY_WALK)
    try:
        project.ingot("deploy", check=True)
        project.set_version("2")
        with load(project.url, work, connections=4) as report:
            seconds, result = timed(project, "deploy")
        rows.append(op_row(router, "canary deploy (20%,50%,100%)", seconds, result, report))
    finally:
        stop_everything(project)
    # rolling, 3 replicas, max_surge 1, max_unavailable 0.
    project = project_for(router, work / f"{router}-rolling", replicas=3, strategy=ROLLING)
    try:
        project.ingot("deploy", check=True)
        project.set_version("2")
        with load(project.url, work, connections=4) as report:
            seconds, result = timed(project, "deploy")
        rows.append(op_row(router, "rolling deploy (3, surge 1, unavail 0)", seconds, result, report))
    finally:
        stop_everything(project)
    return rows


# ---- 2. throughput and latency: direct vs builtin vs haproxy -----------------------------------

def serve_haproxy(listen_port: int, backend_port: int, cpu: int | None, workdir: str) -> None:
    """Run an HAProxyRouter in this process until SIGTERM; haproxy inherits the CPU pinning."""
    from ingot.routers.haproxy import HAProxyRouter

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    router = HAProxyRouter(("127.0.0.1", listen_port), name="bench", workdir=Path(workdir))
    asyncio.run(serve_until_signalled(router, backend_port))


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cpus = cpu_plan(["router", "backend", "load"])
    backend_port, builtin_port, haproxy_port = free_port(), free_port(), free_port()
    cpu_arg = str(cpus["router"]) if cpus["router"] is not None else "-"
    procs: list[subprocess.Popen[Any]] = []
    try:
        backend_cmd = [sys.executable, str(HERE / "_backend.py"), "--port", str(backend_port)]
        if cpus["backend"] is not None:
            backend_cmd += ["--cpu", str(cpus["backend"])]
        procs.append(subprocess.Popen(backend_cmd, stdout=subprocess.DEVNULL))
        # The builtin router exactly as router_bench runs it (its `_router` role).
        procs.append(subprocess.Popen([sys.executable, router_bench.__file__, "_router",
                                       str(builtin_port), str(backend_port), cpu_arg]))
        procs.append(subprocess.Popen([sys.executable, __file__, "_haproxy_router", str(haproxy_port),
                                       str(backend_port), cpu_arg, str(work / "haproxy-router")]))
        urls = {"direct": f"http://127.0.0.1:{backend_port}/", "builtin": f"http://127.0.0.1:{builtin_port}/",
                "haproxy": f"http://127.0.0.1:{haproxy_port}/"}
        for url in urls.values():
            wait_for_http(url, timeout=20)
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in urls}
        for round_no in range(1, args.rounds + 1):
            for label, url in urls.items():
                console.print(f"[dim]round {round_no}/{args.rounds} {label}: warm-up {args.warmup:g}s, "
                              f"then {args.duration:g}s of wrk on {url}[/]")
                if args.warmup > 0:
                    run_wrk(url, args.warmup, args.connections, 1, cpu=cpus["load"])
                runs[label].append(run_wrk(url, args.duration, args.connections, 1, cpu=cpus["load"]))
        return {"cpus": cpus, "runs": runs, "summary": {k: router_bench.summarize(v) for k, v in runs.items()}}
    finally:
        terminate(procs)


# ---- 3. bad canary exposure -------------------------------------------------------------------

def client(url: str, stop: Path, out: Path, connections: int) -> None:
    """Load client role: GET `url` until `stop` exists; record (wall time, status) of every response."""
    import httpx

    per_thread: list[list[tuple[float, int]]] = []

    def worker(record: list[tuple[float, int]]) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            while not stop.exists():
                try:
                    status = http.get(url).status_code
                except httpx.HTTPError:
                    status = 0  # a transport error
                record.append((time.time(), status))

    threads = []
    for _ in range(connections):
        per_thread.append([])
        threads.append(threading.Thread(target=worker, args=(per_thread[-1],)))
    for thread in threads:
        thread.start()
    Path(str(out) + ".ready").write_text("1")
    for thread in threads:
        thread.join()
    out.write_text(json.dumps(sorted(r for record in per_thread for r in record)))


def bad_canary(router: str, work: Path) -> dict[str, Any]:
    project = project_for(router, work / f"{router}-bad", strategy=BAD_CANARY)
    stop, out = work / f"stop-bad-{router}", work / f"bad-{router}.json"
    try:
        project.ingot("deploy", check=True)
        project.set_version("2")
        break_app(project, 'self._send(500, b"boom\\n", "text/plain"); return')
        proc = subprocess.Popen([sys.executable, __file__, "--client", project.url, str(stop), str(out), "4"])
        try:
            poll(lambda: Path(str(out) + ".ready").exists(), timeout=20, what="timestamping client start")
            time.sleep(0.5)
            deploy_started = time.time()
            seconds, result = timed(project, "deploy")
            deploy_ended = time.time()
            time.sleep(1.5)  # keep the load on: is everything back on stable?
        finally:
            stop.write_text("stop")
            proc.wait(timeout=30)
        responses = [(t, s) for t, s in json.loads(out.read_text())]
    finally:
        stop_everything(project)
    bad = [t for t, s in responses if s >= 500 or s == 0]
    target = 2 * BAD_INTERVAL_S
    row: dict[str, Any] = {"router": router, "interval_s": BAD_INTERVAL_S,
                           "requests": len(responses), "failed": len(bad)}
    if bad:
        first, last = bad[0], bad[-1]
        after = [s for t, s in responses if t > last]
        exposure = last - first
        row.update({
            "first_5xx_s": round(first - deploy_started, 3),  # after `ingot deploy` started
            "exposure_s": round(exposure, 3),
            "target_s": f"< {target:g}",
            "ok_after_last": len(after),
            "last_5xx_to_cli_exit_s": round(deploy_ended - last, 3),
        })
    aborted = result.code == 1 and "analysis failed" in result.err
    passed = bool(bad) and aborted and row["exposure_s"] < target and row["ok_after_last"] > 0
    row.update({"deploy_exit": result.code, "deploy_wall_s": round(seconds, 3),
                "aborted_by_analysis": "yes" if aborted else "no", "verdict": "PASS" if passed else "FAIL"})
    reason = [line for line in result.err.splitlines() if "analysis failed" in line]
    row["_reason"] = reason[0].strip() if reason else (result.err.strip().splitlines() or [""])[-1]
    return row


# ---- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_haproxy_router"]:
        serve_haproxy(int(argv[1]), int(argv[2]), None if argv[3] == "-" else int(argv[3]), argv[4])
        return 0
    if argv[:1] == ["--client"]:
        client(argv[1], Path(argv[2]), Path(argv[3]), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short wrk runs (1 round of 3 s, 1 s warm-up)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="rounds of direct/builtin/haproxy (median)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", default=str(HERE / "results" / "progressive.json"))
    args = parser.parse_args(argv)
    defaults = (3.0, 1.0, 1) if args.quick else (10.0, 2.0, 3)
    args.duration = args.duration if args.duration is not None else defaults[0]
    args.warmup = args.warmup if args.warmup is not None else defaults[1]
    args.rounds = args.rounds if args.rounds is not None else defaults[2]

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ingot-progressive-") as tmp:
        work = Path(tmp)
        ops: list[dict[str, Any]] = []
        for router in ROUTERS:
            console.print(f"[dim]1. deploys under load on the {router} router[/]")
            ops += zero_failures(router, work)
        console.print("[dim]2. wrk: direct, builtin, haproxy[/]")
        tput = throughput(args, work)
        bad_rows = []
        for router in ROUTERS:
            console.print(f"[dim]3. bad canary on the {router} router[/]")
            bad_rows.append(bad_canary(router, work))

    print_table("1. failed requests under load (harness load client, 4 connections, separate process), one run each",
                [{k: v for k, v in r.items() if k not in ("first_failure", "error")} for r in ops])
    for r in ops:
        if "first_failure" in r or "error" in r:
            console.print(f"  {r['router']} {r['operation']}: {r.get('first_failure') or r.get('error')}")
    s = tput["summary"]

    def ratio(label: str, key: str) -> float | None:
        d, v = s["direct"].get(key), s[label].get(key)
        return round(v / d, 3) if d and v is not None else None

    rows = []
    for label, key in (("requests/s", "requests_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
                       ("max ms", "max_ms"), ("errors", "error_total")):
        rows.append({"metric": label, "direct": s["direct"][key], "builtin": s["builtin"][key],
                     "haproxy": s["haproxy"][key], "builtin/direct": ratio("builtin", key),
                     "haproxy/direct": ratio("haproxy", key)})
    print_table(f"2. wrk -t1 -c{args.connections}, {args.duration:g} s, median of {args.rounds} round(s); "
                f"routers pinned to CPU {tput['cpus']['router']}, backend {tput['cpus']['backend']}, "
                f"wrk {tput['cpus']['load']}", rows)
    print_table("3. bad canary (/ answers 500, 20% step, analysis 1 s, max_error_rate 0.05): "
                "first 5xx -> last 5xx seen by the client, target < 2 intervals",
                [{k: v for k, v in r.items() if not k.startswith("_")} for r in bad_rows])
    for r in bad_rows:
        console.print(f"  {r['router']}: {r['_reason']}")

    data = {
        "benchmark": "progressive",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "quick": args.quick,
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "cpus_available": len(os.sched_getaffinity(0)), "cpu_assignment": tput["cpus"]},
        "config": {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                   "connections": args.connections, "canary_walk": CANARY_WALK.strip(),
                   "rolling": ROLLING.strip(), "bad_canary": BAD_CANARY.strip()},
        "operations": ops,
        "throughput": {"summary": s, "runs": tput["runs"]},
        "bad_canary": bad_rows,
    }
    path = write_json(args.json, data)
    console.print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
