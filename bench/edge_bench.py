"""Benchmark of the edge's data planes against a plain, hand-configured HAProxy, in one run.

    python -m bench.edge_bench [--duration 5] [--rounds 3] [--rate 5000] [--json bench/results/edge.json]

One backend for everything: bench/_backend.py (uvloop, one fixed keep-alive answer per request head,
about 200k req/s here, far above what any proxy below reaches on one core). Subjects, each a process
of its own pinned to the same CPU (`taskset`/`sched_setaffinity`; haproxy inherits it and so runs one
thread):

- direct: wrk straight at the backend;
- builtin: ingot's BuiltinRouter (one release, that backend);
- ingot-haproxy: ingot's HAProxyRouter (its config, its runtime commands filling a server slot);
- plain-haproxy: haproxy with a hand-written config (one `server` line, `option forwardfor`);
- haproxy-front / builtin-front: ingot's fronts (the edge's shared listeners: routes by host and path,
  certificates by SNI), over HTTP and TLS; each is measured when its module is in this tree, else its slot
  is reported as skipped (`front_kinds`);
- over TLS: plain haproxy with a certificate (the same ECDSA P-256 one as the fronts').

Figures: wrk `-t1 -c32` req/s and p50/p99 (rounds alternate between subjects; medians), each subject's ratio
to plain haproxy taken round by round (the median of those, and their spread: the targets use it), the latency at
a fixed `--rate` from an open-loop client of our own (bench/_rate_client.py, a separate process; wrk2 is
not available), and TLS handshakes per second (a Python client in its own process: full handshakes with
SNI, no session reuse, one at a time, so a latency-bound rate of one client; this openssl's `s_time`
cannot send SNI, which strict-sni requires). Targets: ingot-haproxy >= 90% of
plain haproxy's req/s; builtin >= 50% of it with added p99 (over direct, at `--rate`) <= 2 ms. A missed
target is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: `bench` is a package

from bench._common import (
    console,
    cpu_plan,
    free_port,
    print_table,
    run_wrk,
    serve_until_signalled,
    terminate,
    wait_for_port,
    write_json,
)

HERE = Path(__file__).resolve().parent
TARGET_HAPROXY_RATIO = 0.90
TARGET_BUILTIN_RATIO = 0.50
TARGET_ADDED_P99_MS = 2.0

PLAIN_HAPROXY = """\
global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 75s
    timeout server 60s
frontend plain
    bind 127.0.0.1:{port}
{tls_bind}    default_backend app
backend app
    server app 127.0.0.1:{backend}
"""


# ---- subjects (each its own process) -------------------------------------------------------------------


def serve_builtin(port: int, backend: int) -> None:
    from ingot.routers.builtin import BuiltinRouter, install_fast_loop

    install_fast_loop()
    asyncio.run(serve_until_signalled(BuiltinRouter(("127.0.0.1", port), name="bench"), backend))


def serve_ingot_haproxy(port: int, backend: int, workdir: str) -> None:
    from ingot.routers.haproxy import HAProxyRouter

    asyncio.run(serve_until_signalled(HAProxyRouter(("127.0.0.1", port), name="bench", workdir=Path(workdir)),
                                      backend))


async def serve_front(kind: str, http: int, https: int, backend: int, workdir: Path, cert: bytes, key: bytes) -> None:
    """One of ingot's fronts (the edge's shared listeners) with one route, `localhost` and `127.0.0.1` (plain
    HTTP, no redirect) to the backend, and a certificate for `localhost`; until SIGTERM."""
    import signal

    from ingot.edge.front import Binding, Route
    from ingot.routers.base import ClientPolicy

    front: Any
    if kind == "haproxy":
        from ingot.edge.haproxy_front import HAProxyFront

        front = HAProxyFront(workdir, http=("127.0.0.1", http), https=("127.0.0.1", https))
    else:
        from ingot.edge.builtin_front import BuiltinFront

        front = BuiltinFront(("127.0.0.1", http), ("127.0.0.1", https))
    await front.start()
    router = front.router("bench", "bench", ClientPolicy())
    await router.start()
    await router.set_backends("bench", [("127.0.0.1", backend)])
    await router.set_weights({"bench": 100})
    await front.set_certificate("localhost", cert, key)
    await front.set_table([Binding(Route(host=h, redirect=False), "bench", "/bench", "bench")
                           for h in ("localhost", "127.0.0.1")])
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await front.stop()


def front_kinds() -> dict[str, str | None]:
    """ingot's fronts by kind: None when measurable here, else why the slot is skipped."""
    import importlib.util

    kinds: dict[str, str | None] = {}
    for kind, module in (("haproxy", "ingot.edge.haproxy_front"), ("builtin", "ingot.edge.builtin_front")):
        kinds[kind] = None if importlib.util.find_spec(module) else f"skipped: {module} is not in this tree"
    return kinds


def serve_tls_front(kind: str, http: int, https: int, backend: int, workdir: str, cert: str, key: str) -> None:
    from ingot.routers.builtin import install_fast_loop

    install_fast_loop()  # the loop the edge process runs on (edge/server.py `run_edge`)
    asyncio.run(serve_front(kind, http, https, backend, Path(workdir), Path(cert).read_bytes(),
                            Path(key).read_bytes()))


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed ECDSA P-256 certificate for `localhost`: (cert, key, cert+key for haproxy)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = directory / "cert.pem", directory / "key.pem", directory / "combined.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)
    return paths


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None and shutil.which("taskset") else cmd


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise SystemExit("haproxy is not installed (bash scripts/provision-haproxy)")
    return found


# ---- measurements ------------------------------------------------------------------------------------


def rate_run(port: int, rate: float, seconds: float, cpu: int | None) -> dict[str, Any]:
    cmd = pinned([sys.executable, str(HERE / "_rate_client.py"), "127.0.0.1", str(port), str(rate), str(seconds)], cpu)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def handshakes_per_s(port: int, seconds: int, cpu: int | None) -> dict[str, Any]:
    """Full TLS handshakes per second from one client process, one after another (no session reuse)."""
    cmd = pinned([sys.executable, str(Path(__file__).resolve()), "_handshakes", str(port), str(seconds)], cpu)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def handshake_client(port: int, seconds: float) -> dict[str, Any]:
    """The `_handshakes` role: connect, handshake with SNI `localhost` (TLS 1.3, ALPN http/1.1), close; repeat.
    Python passes no session to reuse, so every one is a full handshake; the certificate is not verified."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    count, failed = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost"):
                count += 1
        except OSError:
            failed += 1
    elapsed = time.perf_counter() - start
    return {"handshakes": count, "failed": failed, "seconds": round(elapsed, 3), "per_s": round(count / elapsed, 1)}


def serving(url: str, timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while httpx.get(url, timeout=2.0).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} does not answer 200")
        time.sleep(0.05)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("requests_per_s", "p50_ms", "p99_ms"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(median(values), 3) if values else None
    out["errors"] = sum(r["error_total"] for r in runs)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cpus = cpu_plan(["proxy", "backend", "load"])
    tmp = Path(tempfile.mkdtemp(prefix="ingot-edge-bench-"))
    cert, key, combined = make_certificate(tmp)
    haproxy = haproxy_binary()
    ports = {name: free_port() for name in ("backend", "builtin", "ingot-haproxy", "plain-haproxy",
                                             "plain-haproxy-tls")}
    procs: list[subprocess.Popen[Any]] = []
    skipped: dict[str, str] = {}
    try:
        backend_cmd = [sys.executable, str(HERE / "_backend.py"), "--port", str(ports["backend"])]
        procs.append(subprocess.Popen(pinned(backend_cmd, cpus["backend"]), stdout=subprocess.DEVNULL))
        me = [sys.executable, str(Path(__file__).resolve())]
        procs.append(subprocess.Popen(pinned([*me, "_builtin", str(ports["builtin"]), str(ports["backend"])],
                                             cpus["proxy"])))
        procs.append(subprocess.Popen(pinned([*me, "_ingot_haproxy", str(ports["ingot-haproxy"]), str(ports["backend"]),
                                              str(tmp / "ingot-haproxy")], cpus["proxy"])))
        plain_cfg = tmp / "plain.cfg"
        tls_bind = f"    bind 127.0.0.1:{ports['plain-haproxy-tls']} ssl crt {combined} alpn h2,http/1.1\n"
        plain_cfg.write_text(PLAIN_HAPROXY.format(port=ports["plain-haproxy"], backend=ports["backend"],
                                                  tls_bind=tls_bind))
        procs.append(subprocess.Popen(pinned([haproxy, "-db", "-f", str(plain_cfg)], cpus["proxy"])))
        http_subjects = {"direct": ports["backend"], "builtin": ports["builtin"],
                         "ingot-haproxy": ports["ingot-haproxy"], "plain-haproxy": ports["plain-haproxy"]}
        tls_subjects = {"plain-haproxy-tls": ports["plain-haproxy-tls"]}
        for port in [*http_subjects.values(), *tls_subjects.values()]:
            wait_for_port("127.0.0.1", port, timeout=20)
        for kind, why in front_kinds().items():
            if why is not None:
                skipped[f"{kind}-front"] = why
                continue
            http, https = free_port(), free_port()
            proc = subprocess.Popen(pinned([*me, "_front", kind, str(http), str(https), str(ports["backend"]),
                                            str(tmp / kind), str(cert), str(key)], cpus["proxy"]))
            try:
                wait_for_port("127.0.0.1", https, timeout=20)
                serving(f"http://127.0.0.1:{http}/")
            except (TimeoutError, OSError) as exc:
                skipped[f"{kind}-front"] = f"skipped: the {kind} front did not come up ({exc})"
                terminate([proc])
                continue
            procs.append(proc)
            http_subjects[f"{kind}-front"] = http
            tls_subjects[f"{kind}-front-tls"] = https
        for port in http_subjects.values():
            serving(f"http://127.0.0.1:{port}/")  # the routers' first runtime commands (servers, weights) landed

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*http_subjects, *tls_subjects]}
        urls = {**{n: f"http://127.0.0.1:{p}/" for n, p in http_subjects.items()},
                **{n: f"https://localhost:{p}/" for n, p in tls_subjects.items()}}
        for round_no in range(1, args.rounds + 1):
            for name, url in urls.items():
                console.print(f"[dim]round {round_no}/{args.rounds} {name}: wrk {args.duration:g}s on {url}[/]")
                run_wrk(url, args.warmup, args.connections, cpu=cpus["load"])
                runs[name].append(run_wrk(url, args.duration, args.connections, cpu=cpus["load"]))
        at_rate = {}
        for name, port in http_subjects.items():
            console.print(f"[dim]{name}: {args.rate:g} req/s for {args.duration:g}s (open loop)[/]")
            at_rate[name] = rate_run(port, args.rate, args.duration, cpus["load"])
        handshakes = {}
        for name, port in tls_subjects.items():
            console.print(f"[dim]{name}: TLS handshakes for {args.handshake_seconds}s (one client, no reuse)[/]")
            handshakes[name] = handshakes_per_s(port, args.handshake_seconds, cpus["load"])
        return {"cpus": cpus, "runs": runs, "at_rate": at_rate, "handshakes": handshakes, "skipped": skipped}
    finally:
        terminate(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def round_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each subject's req/s over plain haproxy's (over TLS: plain haproxy's over TLS) round by round, the two
    measured back to back in one round, so that a slow stretch of a shared machine weighs on both: the median of
    those ratios, and their spread (min, max)."""
    out: dict[str, dict[str, Any]] = {}
    for name, subject in runs.items():
        base = runs["plain-haproxy-tls" if name.endswith("-tls") else "plain-haproxy"]
        ratios = [s["requests_per_s"] / b["requests_per_s"] for s, b in zip(subject, base, strict=True)
                  if s.get("requests_per_s") and b.get("requests_per_s")]
        out[name] = {"median": round(median(ratios), 3), "min": round(min(ratios), 3),
                     "max": round(max(ratios), 3)} if ratios else {"median": None, "min": None, "max": None}
    return out


def verdicts(ratios: dict[str, dict[str, Any]], at_rate: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def ratio(name: str) -> float | None:
        value: float | None = ratios[name]["median"]
        return value

    added = None
    if at_rate.get("builtin", {}).get("p99_ms") is not None and at_rate.get("direct", {}).get("p99_ms") is not None:
        added = round(at_rate["builtin"]["p99_ms"] - at_rate["direct"]["p99_ms"], 3)
    h, b = ratio("ingot-haproxy"), ratio("builtin")
    return [
        {"target": f"ingot-haproxy >= {TARGET_HAPROXY_RATIO:.0%} of plain haproxy req/s", "measured": h,
         "verdict": "PASS" if h is not None and h >= TARGET_HAPROXY_RATIO else "FAIL"},
        {"target": f"builtin >= {TARGET_BUILTIN_RATIO:.0%} of plain haproxy req/s", "measured": b,
         "verdict": "PASS" if b is not None and b >= TARGET_BUILTIN_RATIO else "FAIL"},
        {"target": f"builtin added p99 <= {TARGET_ADDED_P99_MS:g} ms at the fixed rate", "measured": added,
         "verdict": "PASS" if added is not None and added <= TARGET_ADDED_P99_MS else "FAIL"},
    ]


def report(data: dict[str, Any]) -> None:
    summary, at_rate, plain = data["summary"], data["at_rate"], data["summary"]["plain-haproxy"]["requests_per_s"]
    rows = []
    for name, s in summary.items():
        baseline = plain if not name.endswith("-tls") else summary["plain-haproxy-tls"]["requests_per_s"]
        rate = at_rate.get(name, {})
        r = data["ratios"][name]
        rows.append({"subject": name, "req/s": s["requests_per_s"],
                     "vs plain haproxy": round(s["requests_per_s"] / baseline, 3) if baseline else None,
                     "ratio by round (median, min-max)": f"{r['median']} ({r['min']}-{r['max']})",
                     "p50 ms": s["p50_ms"], "p99 ms": s["p99_ms"], "errors": s["errors"],
                     f"p50 ms @{data['config']['rate']:g}/s": rate.get("p50_ms"),
                     f"p99 ms @{data['config']['rate']:g}/s": rate.get("p99_ms"),
                     "handshakes/s": data["handshakes"].get(name, {}).get("per_s")})
    print_table(f"edge data planes (wrk -t1 -c{data['config']['connections']}, median of "
                f"{data['config']['rounds']} runs; same backend, proxy pinned to CPU {data['host']['cpus']['proxy']})",
                rows)
    for name, why in data["skipped"].items():
        console.print(f"[yellow]{name}: {why}[/]")
    print_table("targets", data["targets"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    role = argv[:1]
    if role == ["_builtin"]:
        serve_builtin(int(argv[1]), int(argv[2]))
        return 0
    if role == ["_ingot_haproxy"]:
        serve_ingot_haproxy(int(argv[1]), int(argv[2]), argv[3])
        return 0
    if role == ["_handshakes"]:
        print(json.dumps(handshake_client(int(argv[1]), float(argv[2]))))
        return 0
    if role == ["_front"]:
        serve_tls_front(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6], argv[7])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measured run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=5000.0, help="req/s of the fixed-rate latency runs")
    parser.add_argument("--handshake-seconds", type=int, default=5)
    parser.add_argument("--json", default=str(HERE / "results" / "edge.json"))
    args = parser.parse_args(argv)
    started = time.time()
    measured = measure(args)
    summary = {name: summarize(runs) for name, runs in measured["runs"].items()}
    data: dict[str, Any] = {
        "benchmark": "edge",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "host": {"python": platform.python_version(), "platform": platform.platform(),
                 "cpus_available": len(os.sched_getaffinity(0)), "cpus": measured["cpus"],
                 "load_average": os.getloadavg()},
        "config": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                   "rate": args.rate, "backend": "bench/_backend.py (uvloop fixed responder)"},
        "summary": summary, "at_rate": measured["at_rate"], "handshakes": measured["handshakes"],
        "skipped": measured["skipped"], "runs": measured["runs"],
    }
    data["ratios"] = round_ratios(measured["runs"])
    data["targets"] = verdicts(data["ratios"], measured["at_rate"])
    report(data)
    console.print(f"results written to {write_json(args.json, data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
