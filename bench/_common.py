"""Helpers shared by the benchmarks in bench/: ports, readiness, wrk runs, tables, JSON results.

Every benchmark measures a baseline in the same run as the thing under test (DESIGN.md,
principle 7), so the helpers here are deliberately generic: nothing in them knows about routers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

# Off a terminal (CI logs, redirects) keep whole columns instead of truncating to 80.
console = Console(width=None if sys.stdout.isatty() else 200)

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^([\d.]+)(us|ms|s|m|h)$")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def wait_for_http(url: str, timeout: float = 10.0) -> int:
    """Poll `url` until it answers at all (any status); return the status. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=1.0).status_code
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last})")


def cpu_plan(roles: Sequence[str]) -> dict[str, int | None]:
    """Give each role its own CPU from the ones we may use, the first role sharing when short.

    Roles listed first are the most important to isolate: with 2 CPUs and roles
    (router, backend, load) the router gets one CPU and the other two share the other.
    """
    cpus = sorted(os.sched_getaffinity(0))
    plan: dict[str, int | None] = {}
    if len(cpus) < 2:
        return dict.fromkeys(roles)
    for i, role in enumerate(roles):
        plan[role] = cpus[-1 - i] if i < len(cpus) else cpus[0]
    return plan


def run_wrk(
    url: str,
    duration: float,
    connections: int = 32,
    threads: int = 1,
    *,
    cpu: int | None = None,
    timeout: str = "5s",
) -> dict[str, Any]:
    """Run wrk with --latency against `url` and return its figures (latencies in ms)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout}"]
    cmd += ["--latency", url]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") else cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    result = parse_wrk(proc.stdout)
    result["command"] = " ".join(cmd)
    return result


def parse_wrk(text: str) -> dict[str, Any]:
    """Figures from wrk's text output: requests/s, latency percentiles (ms) and errors."""
    out: dict[str, Any] = {
        "requests_per_s": 0.0,
        "requests": 0,
        "avg_ms": None,
        "max_ms": None,
        "p50_ms": None,
        "p75_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0},
    }
    for raw in text.splitlines():
        line = raw.strip()
        fields = line.split()
        if line.startswith("Requests/sec:"):
            out["requests_per_s"] = float(fields[1])
        elif line.startswith("Latency ") and len(fields) >= 4:
            out["avg_ms"], out["max_ms"] = _ms(fields[1]), _ms(fields[3])
        elif len(fields) == 2 and fields[0] in ("50%", "75%", "90%", "99%"):
            out[f"p{fields[0][:-1]}_ms"] = _ms(fields[1])
        elif " requests in " in line:
            out["requests"] = int(fields[0])
        elif line.startswith("Socket errors:"):
            for part in line.split(":", 1)[1].split(","):
                name, value = part.split()
                out["errors"][name] = int(value)
        elif line.startswith("Non-2xx or 3xx responses:"):
            out["errors"]["non_2xx_3xx"] = int(fields[-1])
    out["error_total"] = sum(out["errors"].values())
    return out


def _ms(text: str) -> float | None:
    match = _DURATION.match(text)
    if match is None:
        return None
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)], 4)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts; columns are the union of their keys, in first-seen order) as a table."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    text = str(value)
    if text == "PASS":
        return "[bold green]PASS[/]"
    if text == "FAIL":
        return "[bold red]FAIL[/]"
    return text


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as indented JSON, creating parent directories; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return target


def terminate(procs: Iterable[subprocess.Popen[Any]], timeout: float = 5.0) -> None:
    """Stop the processes we started: SIGTERM, then SIGKILL for those that linger."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def serve_until_signalled(router: Any, backend_port: int, *, health: bool = False) -> None:
    """Start `router` with all traffic on one backend (release "bench"), serve until SIGTERM or SIGINT.

    With `health`, the router also probes the backend twice a second and counts failed requests.
    """
    import asyncio
    import signal

    from ingot.routers.base import HealthCheck

    await router.start()
    await router.set_backends("bench", [("127.0.0.1", backend_port)])
    await router.set_weights({"bench": 100})
    if health:
        await router.set_health(HealthCheck(path="/healthz", interval=0.5, timeout=1.0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.stop()
