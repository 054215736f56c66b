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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import ExampleProject, free_port, make_example, stop_everything

from bench._common import print_table, write_json
from bench._deploys import measure, poll_healthy


def lower_bound(project: ExampleProject, replicas: int) -> float:
    """Start the app directly `replicas` times and poll each healthy with the same policy."""
    started = time.perf_counter()
    ports = [free_port() for _ in range(replicas)]
    procs = [
        subprocess.Popen([sys.executable, "app.py"], cwd=project.root, env={"PORT": str(p), "PATH": "/usr/bin"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in ports
    ]
    try:
        poll_healthy(ports)
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def run(replicas: int, repeat: int, work: Path) -> dict[str, object]:
    # min_ready 0: the figure is ingot's own work; the settle is a wait the spec asks for on purpose.
    project = make_example(work / f"r{replicas}", replicas=replicas, min_ready="0s")
    try:
        return measure(project, replicas, repeat, work, lambda: lower_bound(project, replicas))
    finally:
        stop_everything(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, default=Path("bench/results/deploy.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingot-bench-") as tmp:
        rows = [run(n, args.repeat, Path(tmp)) for n in args.replicas]
    print_table(
        "deploy and rollback wall time (median), target: deploy <= 1.5 x lower bound + 0.5 s, "
        "zero failed requests",
        rows,
    )
    write_json(args.json, {"benchmark": "deploy", "repeat": args.repeat, "rows": rows})


if __name__ == "__main__":
    main()
