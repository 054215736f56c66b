"""An open-loop HTTP/1.1 load client at a fixed request rate, for latency at a given load (wrk2 is not here).

    python bench/_rate_client.py HOST PORT RATE SECONDS [--connections 32] [--cpu N] [--json OUT]

Requests are scheduled every 1/RATE s whatever happened to the previous ones; each goes out on an
idle keep-alive connection (one request at a time per connection, no pipelining), or waits for one.
A request's latency runs from its scheduled time to the end of its response, so a stall shows in the
percentiles instead of slowing the client down (no coordinated omission). Responses must carry a
Content-Length (the bench backends' do). Prints one JSON object: achieved rate, p50/p90/p99/max ms, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import deque

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None  # type: ignore[assignment]

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.latencies: list[float] = []
        self.errors = 0
        self.pending: deque[float] = deque()  # scheduled times of requests waiting for a connection
        self.idle: list[Connection] = []

    def submit(self, scheduled: float) -> None:
        if self.idle:
            self.idle.pop().send(scheduled)
        else:
            self.pending.append(scheduled)

    def free(self, conn: Connection) -> None:
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)


class Connection(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, scheduled: float) -> None:
        self.started = scheduled
        assert self.transport is not None
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _LENGTH.search(self.buffer, 0, end + 2)
        size = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) < size:
            return
        if not self.buffer.startswith(b"HTTP/1.1 2"):
            self.client.errors += 1
        self.buffer = self.buffer[size:]
        self.client.latencies.append(time.perf_counter() - self.started)
        self.client.free(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.errors += 1


async def run(host: str, port: int, rate: float, seconds: float, connections: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    client = Client(host, port)
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Connection(client), host, port)
        client.idle.append(conn)
    interval = 1.0 / rate
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        due = int((now - start) / interval) + 1
        while sent < due:
            client.submit(start + sent * interval)
            sent += 1
        await asyncio.sleep(0.0005)
    deadline = time.perf_counter() + 5
    while len(client.latencies) + client.errors < sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in client.latencies)

    def pct(p: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3) if ms else None

    return {"rate_asked": rate, "rate_achieved": round(len(ms) / elapsed, 1), "sent": sent, "answered": len(ms),
            "errors": client.errors, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(ms[-1], 3) if ms else None, "connections": connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    runner = uvloop.run if uvloop is not None else asyncio.run
    result = runner(run(args.host, args.port, args.rate, args.seconds, args.connections))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
