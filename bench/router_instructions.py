"""Instructions per proxied request of the built-in router, which the machine's load does not distort.

    python -m bench.router_instructions [--requests 4000] [--connections 4]

This machine's virtual CPUs count no instructions for `perf stat` (`<not supported>`), so the router runs
under valgrind's callgrind (user-space instructions only: the kernel's share of each socket call is not in
it), with the bench backend (bench/_backend.py) and a fixed client in a process of its own: keep-alive
connections, one GET at a time on each, every answer checked. It runs twice, with 400 requests and with 400 +
`--requests`, and reports the difference over `--requests`: start-up, imports and the first connections cancel
out. Slow (valgrind runs Python ~50 times slower): about a minute a run here.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: `bench` is a package

from bench._common import free_port, terminate

HERE = Path(__file__).resolve().parent
REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
BASE_REQUESTS = 400


def drive(port: int, requests: int, connections: int) -> None:
    """Send `requests` GETs over `connections` keep-alive connections, one at a time on each (the `_client` role)."""
    def one_connection(count: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(count):
                sock.sendall(REQUEST)
                buf = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise SystemExit("the router closed a keep-alive connection")
                    buf += chunk
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[: end + 2])
                        if length is not None and len(buf) >= end + 4 + int(length.group(1)):
                            break
                if not buf.startswith(b"HTTP/1.1 200 "):
                    raise SystemExit(f"unexpected answer: {buf[:80]!r}")

    failures: list[BaseException] = []

    def run(count: int) -> None:
        try:
            one_connection(count)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(requests // connections,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def callgrind_total(requests: int, connections: int, out_dir: Path) -> int:
    """User-space instructions of a router process that served `requests` (+ one readiness probe)."""
    backend_port, router_port = free_port(), free_port()
    out = out_dir / f"callgrind.{requests}.out"
    backend = subprocess.Popen([sys.executable, str(HERE / "_backend.py"), "--port", str(backend_port)],
                               stdout=subprocess.DEVNULL)
    # The interpreter's own path: a launcher script (pyenv's shim) would be what valgrind measured.
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", os.path.realpath(sys.executable),
               str(HERE / "router_bench.py"), "_router", str(router_port), str(backend_port), "-"]
    router = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                drive(router_port, 1, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the router under valgrind did not answer within 300 s") from None
                time.sleep(0.5)
        subprocess.run([sys.executable, __file__, "_client", str(router_port), str(requests), str(connections)],
                       check=True)
    finally:
        router.terminate()
        router.wait(timeout=120)
        terminate([backend])
    totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise SystemExit(f"no totals in {out}")
    return int(totals.group(1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        drive(int(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = callgrind_total(BASE_REQUESTS, args.connections, Path(tmp))
        more = callgrind_total(BASE_REQUESTS + args.requests, args.connections, Path(tmp))
    print(f"instructions per request: {(more - base) / args.requests:,.0f} "
          f"(callgrind totals {base:,} for {BASE_REQUESTS}, {more:,} for {BASE_REQUESTS + args.requests})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
