"""A minimal, fast HTTP/1.1 backend for benchmarks: one fixed small keep-alive response per request.

It does not parse HTTP properly: it counts request heads (blank-line terminators) and answers each
with the same bytes, which is enough for bodiless GETs from wrk and keeps the backend far from
being the bottleneck of what is measured.

    python bench/_backend.py --port 8001 [--cpu 0] [--body hello]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None  # type: ignore[assignment]


def make_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class FixedResponder(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # Keep the last 3 bytes so a terminator split across reads is still seen.
        buf = self.tail + data
        count = buf.count(b"\r\n\r\n")
        self.tail = buf[-3:]
        if count and self.transport is not None:
            self.transport.write(self.response * count)


async def serve(host: str, port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    response = make_response(body)
    server = await loop.create_server(lambda: FixedResponder(response), host, port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"backend listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--body", default="hello from the bench backend\n")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    run = uvloop.run if uvloop is not None else asyncio.run
    run(serve(args.host, args.port, args.body.encode()))


if __name__ == "__main__":
    main()
