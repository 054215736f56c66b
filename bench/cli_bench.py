"""CLI latency: `ingot --version`, `status`, `history`, `logs` with the agent running, against kubectl.

The bundled example is deployed (2 replicas), then each command runs `--runs` times as a fresh process
(`python -m ingot ...`, the interpreter running this benchmark), round-robin with the same run's
baselines so that a busy machine weighs on all of them alike: `kubectl version --client` (the target's
reference), `python -c pass` (the interpreter's own start, the floor of any Python CLI) and the full CLI
for the same commands (INGOT_FAST_PATH=0: what they cost before the fast path). Then a no-change
`ingot deploy` (everything already live) a few times. Median and p90 in ms, the ratio to kubectl's
median, and PASS/FAIL against the targets (≤ 150 ms each; a no-change deploy ≤ 300 ms).

    python -m bench.cli_bench [--runs 20] [--deploys 5] [--json bench/results/cli.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.harness import make_example, stop_edge, stop_everything

from bench._common import print_table, write_json

TARGET_MS = 150.0
DEPLOY_TARGET_MS = 300.0
COMMANDS = {"--version": ["--version"], "status": ["status"], "status --json": ["status", "--json"],
            "history": ["history"], "logs web": ["logs", "web"]}


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=120, check=False)
    took = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return took


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 1)}


def measure(runs: int, deploys: int, work: Path) -> dict[str, Any]:
    example = make_example(work)
    env = {**os.environ, "INGOT_ACTOR": "bench@ci"}
    env.pop("INGOT_HOME", None)
    kubectl = shutil.which("kubectl")
    ingot = [sys.executable, "-m", "ingot"]
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        **{f"ingot {name}": ([*ingot, *args], env) for name, args in COMMANDS.items()},
        **{f"full CLI: ingot {name}": ([*ingot, *args], {**env, "INGOT_FAST_PATH": "0"})
           for name, args in COMMANDS.items() if name in ("--version", "status")},
        "python -c pass": ([sys.executable, "-c", "pass"], env),
    }
    if kubectl:
        cases["kubectl version --client"] = ([kubectl, "version", "--client"], env)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    try:
        example.ingot("deploy", check=True)
        for argv, case_env in cases.values():  # warm the page cache and the agent's parsed spec
            timed(argv, example.root, case_env)
        for _ in range(runs):
            for name, (argv, case_env) in cases.items():
                samples[name].append(timed(argv, example.root, case_env))
        deploy_samples = [timed([*ingot, "deploy"], example.root, env) for _ in range(deploys)]
    finally:
        stop_everything(example)
    reference = statistics.median(samples["kubectl version --client"]) if kubectl else None
    rows = []
    for name, taken in samples.items():
        row: dict[str, Any] = {"command": name, **figures(taken)}
        row["vs_kubectl"] = round(row["median_ms"] / reference, 2) if reference else None
        fast = name.startswith("ingot ")
        row["target"] = ("PASS" if row["median_ms"] <= TARGET_MS else "FAIL") if fast else "-"
        rows.append(row)
    deploy_row = {"command": "ingot deploy (nothing changed)", **figures(deploy_samples),
                  "vs_kubectl": round(statistics.median(deploy_samples) / reference, 2) if reference else None}
    deploy_row["target"] = "PASS" if deploy_row["median_ms"] <= DEPLOY_TARGET_MS else "FAIL"
    rows.append(deploy_row)
    return {"rows": rows, "samples": samples, "deploy_samples": deploy_samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--deploys", type=int, default=5)
    parser.add_argument("--json", default="bench/results/cli.json")
    args = parser.parse_args()
    # An edge of its own, never the machine's (/var/lib/ingot/edge).
    os.environ["INGOT_EDGE_HOME"] = tempfile.mkdtemp(prefix="ingot-edge-")
    try:
        with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
            result = measure(args.runs, args.deploys, Path(tmp))
    finally:
        stop_edge(Path(os.environ["INGOT_EDGE_HOME"]))
    print_table(f"CLI latency, {args.runs} runs each, agent running (round-robin with the baselines; "
                f"target ≤ {TARGET_MS:g} ms, a no-change deploy ≤ {DEPLOY_TARGET_MS:g} ms)", result["rows"])
    write_json(args.json, {"benchmark": "cli", "runs": args.runs, "python": sys.executable,
                           "cpus": os.cpu_count(), "load_average": os.getloadavg(), **result})
    return 0 if all(r["target"] != "FAIL" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
