"""`ingot scale web 40` from 2 replicas on the process runtime, against a lower bound measured in the same run.

Lower bound: the 38 app processes started directly, in parallel, and polled healthy with the same
health policy (bench/deploy_bench.py's). ingot's figures: the whole `ingot scale` command as a user runs
it (CLI start included, `ingot --version` alone is measured too) and the operation in the agent (from its
`scale.start` to its `scale.finish` ledger entries), for each batch size, then back to 2; a load client
in a separate process counts failed requests meanwhile.

    python bench/scale_bench.py [--to 40] [--batch 10 38] [--json bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import ExampleProject, load, make_example, stop_everything

from bench._common import print_table, write_json
from bench.deploy_bench import lower_bound


def operation_seconds(project: ExampleProject) -> float:
    """The last scale's own time in the agent, from its ledger entries."""
    from ingot import ledger
    from ingot.store import Store

    store = Store(project.state)
    try:
        entries = ledger.entries(store, actions=["scale.start", "scale.finish"])
        return round(entries[-1].at - entries[-2].at, 3)
    finally:
        store.close()


def timed(project: ExampleProject, *args: str) -> float:
    started = time.perf_counter()
    project.ingot(*args, check=True, timeout=600)
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=int, default=40)
    parser.add_argument("--batch", type=int, nargs="+", default=[10, 38])
    parser.add_argument("--json", type=Path, default=Path("bench/results/scale.json"))
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
        work = Path(tmp)
        project = make_example(work, replicas=2, min_ready="0s")
        project.env["INGOT_HEAL_INTERVAL"] = "0"
        try:
            project.ingot("deploy", check=True)  # starts the agent; not measured
            cli = timed(project, "--version")
            bound = round(lower_bound(project, args.to - 2), 3)
            for batch in args.batch:
                with load(project.url, work, connections=2) as report:
                    up = timed(project, "scale", "web", str(args.to), "--batch", str(batch))
                    up_op = operation_seconds(project)
                    down = timed(project, "scale", "web", "2")
                    down_op = operation_seconds(project)
                rows.append({"scale": f"2 -> {args.to} -> 2", "batch": batch, "lower_bound_s": bound,
                             "up_cli_s": up, "up_agent_s": up_op, "ratio": round(up_op / bound, 2),
                             "down_cli_s": down, "down_agent_s": down_op, "cli_start_s": cli,
                             "requests_during": report["requests"], "failed_requests": len(report["failures"]),
                             "failures": sorted(set(report["failures"]))[:5]})
        finally:
            stop_everything(project)
    print_table(f"ingot scale 2 -> {args.to} -> 2 on the process runtime (lower bound: {args.to - 2} processes "
                "started directly and polled healthy)", [{k: v for k, v in r.items() if k != "failures"} for r in rows])
    for row in rows:
        for failure in row["failures"]:  # type: ignore[attr-defined]
            print(f"batch {row['batch']}: failed request: {failure}")
    write_json(args.json, {"benchmark": "scale", "to": args.to, "rows": rows})


if __name__ == "__main__":
    main()
