"""The two state stores side by side: signed ledger appends (one transaction each, as ingot records them)
and a newest-first read, on SQLite and on a PostgreSQL server started here (tests/support/postgres.py),
in the same run; PostgreSQL's figures as ratios of SQLite's. Also two processes appending at once.

    python -m bench.store_backends_bench [--appends 500] [--json bench/results/store_backends.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.postgres import running_server

from bench._common import print_table, write_json
from ingot import ledger
from ingot.store import Store

_APPENDER = ("import sys; from pathlib import Path; from ingot import ledger; from ingot.store import Store\n"
             "store = Store(Path(sys.argv[1]), url=sys.argv[3] or None)\n"
             "for n in range(int(sys.argv[2])):\n"
             "    ledger.record(store, actor='bench', action='build', payload={'n': n})\n")


def measure(name: str, url: str | None, appends: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix=f"ingot-bench-{name}-"))
    store = Store(state, url=url, local=url is None)
    started = time.perf_counter()
    for number in range(appends):
        ledger.record(store, actor="bench", action="build", service="web", payload={"n": number})
    append_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(50):
        ledger.latest(store, limit=20, service="web")
    read_ms = (time.perf_counter() - started) / 50 * 1000
    # Two processes appending at once into the same store (each its own connection, or session).
    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(state), str(appends // 2), url or ""],
                                 env={**os.environ, "INGOT_DATABASE_URL": ""}) for _ in range(2)]
    assert [child.wait() for child in children] == [0, 0]
    concurrent_s = time.perf_counter() - started
    checked, problem = ledger.verify_chain(store)
    assert problem is None and checked == appends * 2
    store.close()
    return {"store": name, "appends/s": round(appends / append_s), "latest 20 (ms)": round(read_ms, 2),
            "2 processes: s for all": round(concurrent_s, 2), "chain": f"{checked} verified"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--json", default="bench/results/store_backends.json")
    args = parser.parse_args()
    rows = [measure("sqlite", None, args.appends)]
    with running_server(port=int(os.environ.get("INGOT_BENCH_PG_PORT") or 0) or None) as server:
        rows.append(measure("postgresql", server.url(server.new_database()), args.appends))
    base = rows[0]
    rows.append({"store": "postgresql / sqlite",
                 **{key: round(rows[1][key] / base[key], 2) for key in ("appends/s", "latest 20 (ms)",
                                                                       "2 processes: s for all")}})
    load = os.getloadavg()[0]
    print_table(f"state stores, {args.appends} appends (load average {load:.1f})", rows)
    print(f"wrote {write_json(args.json, {'appends': args.appends, 'load_average': load, 'rows': rows})}")


if __name__ == "__main__":
    main()
