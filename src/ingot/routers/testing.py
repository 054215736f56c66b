"""An in-process HTTP backend for router tests (asyncio streams + h11, independent of httptools).

Routes (any method):
  /                 200, body = the backend's name
  /healthz          200 "ok" while `healthy` is True, else 503 (counted in `probes`, not `requests`)
  /headers          200, JSON list of the request's [name, value] header pairs
  /sleep?s=1.5      sleeps, then answers like /
  /status?code=500  that status, body = name
  /sha256           reads the whole request body, answers JSON {sha256, length}
  /blob?size=N&seed=S  a chunked body of N deterministic bytes (see `blob_chunks`)
  /close-delimited  200 without Content-Length or chunking, body = name, then closes
Every response carries `X-Backend: <name>`.

`BackendProcess` runs one in a process of its own (`python -m ingot.routers.testing NAME`), for the
faults only a process can have: killed (SIGKILL), or stopped (SIGSTOP: the kernel still accepts
its connections, nothing answers them).

Misbehaviours that routers must survive, all off by default:
  `close_reused`   probability that a request arriving on a reused keep-alive connection is met
                   with a close instead of an answer (the race of a backend closing an idle
                   connection just as the router reuses it);
  `drop_rate`      after a response, closes the connection without announcing it, with this
                   probability (idle keep-alive connections closing under the router's feet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from ingot.routers.base import Address, Router

BLOB_PIECE = 64 * 1024


def blob_chunks(size: int, seed: str = "x") -> Iterator[bytes]:
    """The bytes `/blob` sends, in pieces: cheap to generate, not trivially compressible."""
    block = hashlib.sha256(seed.encode()).digest() * (BLOB_PIECE // 32)
    counter = 0
    while size > 0:
        piece = block[: min(size, BLOB_PIECE)]
        # Vary each piece so a duplicated or dropped piece changes the hash.
        piece = counter.to_bytes(8, "big") + piece[8:] if len(piece) >= 8 else piece
        yield piece
        size -= len(piece)
        counter += 1


class TestBackend:
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        name: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        close_reused: float = 0.0,
        drop_rate: float = 0.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.close_reused = close_reused
        self.drop_rate = drop_rate
        self.connections = 0
        self.requests = 0  # every request but the probes of /healthz
        self.probes = 0
        self.healthy = True
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._rng = random.Random(name)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    async def start(self) -> TestBackend:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop like a killed process: listener closed, every connection reset."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._server = None
        self._stopping.set()  # wakes handlers asleep in /sleep: a killed process answers nothing
        # Not cancelled: Python 3.11's start_server logs cancelled handlers as errors.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                if served and self.close_reused and self._rng.random() < self.close_reused:
                    break
                if not await self._handle(conn, event, reader, writer):
                    break
                served += 1
                if conn.our_state is h11.MUST_CLOSE or self._rng.random() < self.drop_rate:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()

    async def _handle(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False if the connection must close afterwards."""
        url = urlsplit(request.target.decode())
        if url.path == "/healthz":
            self.probes += 1
        else:
            self.requests += 1
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        digest = hashlib.sha256()
        length = 0
        async for chunk in _body(conn, reader):
            digest.update(chunk)
            length += len(chunk)
        status, body = 200, self.name.encode()
        if url.path == "/healthz":
            status, body = (200, b"ok") if self.healthy else (503, b"unhealthy")
        elif url.path == "/headers":
            body = json.dumps([[k.decode(), v.decode()] for k, v in request.headers]).encode()
        elif url.path == "/sleep":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), float(query.get("s", "1")))
            if self._stopping.is_set():
                return False
        elif url.path == "/status":
            status = int(query.get("code", "200"))
        elif url.path == "/sha256":
            body = json.dumps({"sha256": digest.hexdigest(), "length": length}).encode()
        elif url.path == "/blob":
            await self._send_blob(conn, writer, int(query.get("size", "0")), query.get("seed", "x"))
            return True
        elif url.path == "/close-delimited":
            # h11 will not frame a response this way for an HTTP/1.1 request, so write it raw.
            writer.write(b"HTTP/1.1 200 OK\r\nX-Backend: " + body + b"\r\n\r\n" + body)
            await writer.drain()
            return False
        headers = [("X-Backend", self.name), ("Content-Length", str(len(body)))]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        if request.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True

    async def _send_blob(self, conn: h11.Connection, writer: asyncio.StreamWriter, size: int, seed: str) -> None:
        headers = [("X-Backend", self.name), ("Transfer-Encoding", "chunked")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        for piece in blob_chunks(size, seed):
            writer.write(conn.send(h11.Data(data=piece)) or b"")
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        return event


async def _body(conn: h11.Connection, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:
            raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")


@asynccontextmanager
async def serving(router: Router, pools: dict[str, list[TestBackend]],
                  weights: dict[str, int]) -> AsyncIterator[str]:
    """Start the backends and `router` over them with `weights`; yield the base URL; stop all after."""
    for pool in pools.values():
        for backend in pool:
            await backend.start()
    await router.start()
    try:
        for release, pool in pools.items():
            await router.set_backends(release, [b.address for b in pool])
        await router.set_weights(weights)
        host, port = router.listen_address
        yield f"http://{host}:{port}"
    finally:
        await router.stop()
        for pool in pools.values():
            for backend in pool:
                await backend.stop()


class BackendProcess:
    """A `TestBackend` in a child process: `kill()` is a real kill -9, `pause()` a real SIGSTOP."""

    __test__ = False

    def __init__(self, name: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    async def start(self) -> BackendProcess:
        """Spawn it (on `port`, or any free port the first time) and wait until it listens."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingot.routers.testing", self.name, "--host", self.host, "--port", str(self.port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        if not line.startswith(b"listening "):
            await self.stop()
            raise RuntimeError(f"backend process {self.name} did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def kill(self) -> None:
        """kill -9, and wait until it is gone (its port refuses connections from then on)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self) -> None:
        await self.kill()  # SIGKILL ends a stopped process too


async def _serve_forever(name: str, host: str, port: int) -> None:
    backend = await TestBackend(name, host=host, port=port).start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"listening {backend.host} {backend.port}", flush=True)
    await done.wait()
    await backend.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a TestBackend until SIGTERM (see BackendProcess).")
    parser.add_argument("name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.name, args.host, args.port))


if __name__ == "__main__":
    main()
