"""A/B of ingot's generated HAProxy configuration against a plain one, and against itself less one rule.

    python -m bench.haproxy_rules_ab [--rounds 4] [--duration 2] [--only full,-bufreq,plain]

No ingot process: haproxy runs each config variant itself (ingot's `render_config` with its one slot filled
statically), pinned to one CPU, against bench/_backend.py and wrk on the other; variants alternate within
each round, and the medians (with their spread) are printed. It tells what each per-request rule costs,
without the router's Python in the way.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: `bench` is a package

from bench._common import free_port, run_wrk, terminate, wait_for_port
from bench.edge_bench import PLAIN_HAPROXY

HERE = Path(__file__).resolve().parent
# Variant name -> substrings of the lines it leaves out of ingot's config.
DROPS: dict[str, tuple[str, ...]] = {
    "full": (),
    "-host": ("hdr_cnt(host)",),
    "-xffdel": ("del-header X-Forwarded-For",),
    "-xfpxfh": ("X-Forwarded-Proto", "X-Forwarded-Host"),
    "-release": ("X-Ingot-Release", "txn.release"),
    "-bufreq": ("http-buffer-request",),
    "-feconn": ("fe_conn",),
    "-nodelay": ("http-no-delay",),
    "-allrules": ("http-request", "http-response", "http-buffer-request"),
}


def variants(backend: int, workdir: Path) -> dict[str, str]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from ingot.routers import haproxy_config as hc
    from ingot.routers.base import ClientPolicy

    servers_map = workdir / "servers.map"
    servers_map.write_text("s1 bench\n")
    base = hc.render_config(name="ab", socket_path=workdir / "admin.sock", listen_fd=3, maxconn=1000,
                            timeouts=hc.Timeouts(), servers_map=servers_map, slots=1,
                            clients=ClientPolicy(head_timeout=10, max_connections=1000))
    base = base.replace(hc.server_template(1), f"    server s1 127.0.0.1:{backend}")
    out = {name: "\n".join(line for line in base.splitlines() if not any(d in line for d in drops))
           for name, drops in DROPS.items()}
    out["plain"] = PLAIN_HAPROXY.format(port="@PORT@", tls_bind="", backend=backend)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ingot-haproxy-ab-"))
    backend = free_port()
    procs = [subprocess.Popen(["taskset", "-c", "0", sys.executable, str(HERE / "_backend.py"), "--port",
                               str(backend)], stdout=subprocess.DEVNULL)]
    try:
        wait_for_port("127.0.0.1", backend)
        configs = variants(backend, workdir)
        if args.only:
            configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
        results: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, text in configs.items():
                port = free_port()
                path = workdir / f"{name}.cfg"
                path.write_text(text.replace("bind fd@3", "bind 127.0.0.1:@PORT@").replace("@PORT@", str(port)) + "\n")
                proxy = subprocess.Popen(["taskset", "-c", "1", "haproxy", "-db", "-f", str(path)])
                try:
                    wait_for_port("127.0.0.1", port)
                    results[name].append(run_wrk(f"http://127.0.0.1:{port}/", args.duration, cpu=0)["requests_per_s"])
                finally:
                    terminate([proxy])
    finally:
        terminate(procs)
    plain = median(results["plain"]) if results.get("plain") else None
    for name, values in results.items():
        ratio = f"  vs plain {median(values) / plain:.3f}" if plain else ""
        print(f"{name:10s} {median(values):9.0f} req/s (runs {min(values):.0f}-{max(values):.0f}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
