"""CLI latency: `ingot --version`, `status`, `history`, `logs` with the agent running, against kubectl.

The bundled example is deployed (2 replicas), then each command runs `--runs` times as a fresh process
(`python -m ingot ...`, the interpreter running this benchmark), round-robin with the same run's
baselines so that a busy machine weighs on all of them alike: `kubectl version --client` (the target's
reference), `python -c pass` (the interpreter's own start, the floor of any Python CLI) and the full CLI
for the same commands (INGOT_FAST_PATH=0: what they cost before the fast path). A no-change
`ingot deploy` (everything already live, answered by the agent: ingot.deploy_check) is one of the
round-robin's commands too, and the full CLI's no-change deploy runs in the first `--deploys` rounds
(it takes seconds: not in every round). Median and p90 in ms, the ratio to kubectl's median, and
PASS/FAIL against the targets (≤ 150 ms each; a no-change deploy ≤ 300 ms). The load average is
printed and recorded with the figures.

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
DEPLOY = "ingot deploy (nothing changed)"
FULL_DEPLOY = "full CLI: ingot deploy (nothing changed)"
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
    cases[DEPLOY] = ([*ingot, "deploy"], env)
    full_deploy = ([*ingot, "deploy"], {**env, "INGOT_FAST_PATH": "0"})
    samples: dict[str, list[float]] = {name: [] for name in (*cases, FULL_DEPLOY)}
    try:
        example.ingot("deploy", check=True)
        for argv, case_env in cases.values():  # warm the page cache and the agent's parsed spec
            timed(argv, example.root, case_env)
        answered = _answered(example)
        for round_number in range(runs):
            for name, (argv, case_env) in cases.items():
                samples[name].append(timed(argv, example.root, case_env))
            if round_number < deploys:
                samples[FULL_DEPLOY].append(timed(full_deploy[0], example.root, full_deploy[1]))
        answered = _answered(example) - answered
    finally:
        stop_everything(example)
    if answered < runs:  # a figure of the full CLI under the fast path's name would be a lie
        raise RuntimeError(f"the agent answered {answered} of {runs} no-change deploys: the rest fell back")
    reference = statistics.median(samples["kubectl version --client"]) if kubectl else None
    rows = []
    for name, taken in samples.items():
        row: dict[str, Any] = {"command": name, **figures(taken)}
        row["vs_kubectl"] = round(row["median_ms"] / reference, 2) if reference else None
        target = DEPLOY_TARGET_MS if name == DEPLOY else TARGET_MS
        row["target"] = ("PASS" if row["median_ms"] <= target else "FAIL") if name.startswith("ingot ") else "-"
        rows.append(row)
    return {"rows": rows, "samples": samples}


def _answered(example: Any) -> int:
    """How many no-change deploys the agent has answered (`ping`), to tell the fast path from a fallback."""
    from ingot.agent.client import AgentClient
    from ingot.paths import StatePaths

    return int(AgentClient(StatePaths(example.state.resolve())).call("ping")["deploy_answers"])


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
    load = [round(x, 2) for x in os.getloadavg()]
    print_table(f"CLI latency, {args.runs} runs each, agent running (round-robin with the baselines; "
                f"target ≤ {TARGET_MS:g} ms, a no-change deploy ≤ {DEPLOY_TARGET_MS:g} ms); "
                f"{os.cpu_count()} CPUs, load average {load[0]} {load[1]} {load[2]}", result["rows"])
    write_json(args.json, {"benchmark": "cli", "runs": args.runs, "python": sys.executable,
                           "cpus": os.cpu_count(), "load_average": load, **result})
    return 0 if all(r["target"] != "FAIL" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
