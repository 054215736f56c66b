"""Long-lived connections through the builtin router: WebSocket tunnels, server-sent events, their cut at
the end of a drain, and the hold of new requests during a switch.

The WebSocket and SSE backend is tests/support/stream_app.py in a process of its own (the one the deploy
tests run as instances); the WebSocket client is the `websockets` library, an implementation independent
of the router's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingot.routers.builtin import BuiltinRouter
from ingot.routers.testing import TestBackend
from tests.support.routers import run, stream_app

__all__ = ["run", "stream_app"]  # the fixtures

async def started(pools: dict[str, list[tuple[str, int]]], weights: dict[str, int]) -> BuiltinRouter:
    router = BuiltinRouter(("127.0.0.1", 0), name="streams")
    await router.start()
    for release, pool in pools.items():
        await router.set_backends(release, pool)
    await router.set_weights(weights)
    return router


async def until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def open_events(router: BuiltinRouter, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*router.listen_address)
    writer.write(f"GET /events?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def next_event(reader: asyncio.StreamReader) -> str:
    """The next `data:` line, whatever the framing around it (chunk sizes are skipped)."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        if not line and reader.at_eof():
            raise EOFError
        if line.startswith("data: "):
            return line[6:]


def test_websocket_echo_passes_through_and_counts_as_a_stream(run: Any, stream_app: tuple[str, int]) -> None:
    async def body() -> None:
        router = await started({"A": [stream_app]}, {"A": 100})
        try:
            host, port = router.listen_address
            async with connect(f"ws://{host}:{port}/ws", open_timeout=5) as ws:
                assert ws.response is not None and ws.response.headers["X-Ingot-Release"] == "A"
                for i in range(3):
                    await ws.send(f"hello {i}")
                    assert await asyncio.wait_for(ws.recv(), 5) == f"1:hello {i}"
                big = "x" * 300_000  # more than one read and one socket buffer: flow control both ways
                await ws.send(big)
                assert await asyncio.wait_for(ws.recv(), 10) == "1:" + big
                assert router.stats()["A"].streams == 1 and router.stats()["A"].in_flight == 1
            await until(lambda: router.stats()["A"].in_flight == 0, "the tunnel to end with the client's close")
            assert router.stats()["A"].streams == 0
            # An ordinary request still works on the same router (the backend's pool is not poisoned).
            async with httpx.AsyncClient(trust_env=False) as http:
                assert (await http.get(f"http://{host}:{port}/")).status_code == 200
        finally:
            await router.stop()

    run(body)


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_server_sent_events_arrive_as_sent(run: Any, stream_app: tuple[str, int], framing: str) -> None:
    async def body() -> None:
        router = await started({"A": [stream_app]}, {"A": 100})
        try:
            close = "&close=1" if framing == "close-delimited" else ""
            reader, writer = await open_events(router, f"every=0.3&n=4{close}")
            arrived = []
            for i in range(1, 5):
                data = await next_event(reader)
                arrived.append(time.monotonic())
                assert data.split()[:2] == ["1", str(i)]
                if i == 1:
                    assert router.stats()["A"].streams == 1
            # Unbuffered: each event came when it was sent (0.3 s apart), not all at the end.
            assert arrived[-1] - arrived[0] > 0.6, arrived
            writer.close()
            await until(lambda: router.stats()["A"].in_flight == 0, "the stream to end")
        finally:
            await router.stop()

    run(body)


def test_drain_keeps_streams_until_its_timeout_then_cuts_them(run: Any, stream_app: tuple[str, int]) -> None:
    async def body() -> None:
        router = await started({"A": [stream_app], "B": [stream_app]}, {"A": 100})
        try:
            host, port = router.listen_address
            async with connect(f"ws://{host}:{port}/ws", open_timeout=5) as old:
                reader, writer = await open_events(router, "every=0.1")
                await next_event(reader)
                await router.set_weights({"B": 100})
                drain = asyncio.create_task(router.drain("A", 1.0))
                # Meanwhile the old connection still works on A, and a new one goes to B.
                await old.send("still here")
                assert await asyncio.wait_for(old.recv(), 5) == "1:still here"
                async with connect(f"ws://{host}:{port}/ws", open_timeout=5) as new:
                    assert new.response is not None and new.response.headers["X-Ingot-Release"] == "B"
                    assert not drain.done()
                    started_at = time.monotonic()
                    assert await drain is True  # nothing but the streams was left: they are not "in flight"
                    assert time.monotonic() - started_at < 1.5
                    assert router.drain_cut("A") == 2
                    with pytest.raises(ConnectionClosed) as closed:
                        await asyncio.wait_for(old.recv(), 5)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                    with pytest.raises(EOFError):
                        while True:
                            await next_event(reader)
                    writer.close()
                    await new.send("on B")  # the cut is A's alone
                    assert await asyncio.wait_for(new.recv(), 5) == "1:on B"
            stats = router.stats()
            assert stats["A"].in_flight == 0 and stats["A"].streams == 0
        finally:
            await router.stop()

    run(body)


@asynccontextmanager
async def a_slow_request_on_a() -> AsyncIterator[tuple[BuiltinRouter, httpx.AsyncClient, asyncio.Task[Any]]]:
    """Releases A (all the weight) and B, and a request that A takes 0.6 s to answer, under way."""
    a, b = TestBackend("A-1"), TestBackend("B-1")
    await a.start()
    await b.start()
    router = await started({"A": [a.address], "B": [b.address]}, {"A": 100})
    try:
        host, port = router.listen_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False, timeout=10) as http:
            slow = asyncio.create_task(http.get("/sleep?s=0.6"))
            await until(lambda: router.stats()["A"].in_flight == 1, "the slow request on A")
            yield router, http, slow
    finally:
        await router.stop()
        await a.stop()
        await b.stop()


def test_hold_keeps_new_requests_until_the_old_release_is_done(run: Any) -> None:
    async def body() -> None:
        async with a_slow_request_on_a() as (router, http, slow):
            await router.hold(3.0)
            await router.set_weights({"B": 100})
            held = [asyncio.create_task(http.get("/")) for _ in range(5)]
            await until(lambda: router._held is not None and len(router._held) == 5, "the requests to be held")
            assert not any(t.done() for t in held)
            assert await router.release_hold() == 5
            assert (await slow).text == "A-1"
            answers = await asyncio.gather(*held)
            assert [r.headers["X-Backend"] for r in answers] == ["B-1"] * 5
            # Held only while A still had its request: answered after it, never by A.
            assert router.stats()["A"].requests == 1
            # And a hold is bounded even if nobody ends it.
            await router.hold(0.3)
            assert (await http.get("/")).headers["X-Backend"] == "B-1"

    run(body)


def test_without_a_hold_the_releases_overlap(run: Any) -> None:
    """The contrast: a switch without the hold sends new requests to B while A still answers one."""
    async def body() -> None:
        async with a_slow_request_on_a() as (router, http, slow):
            await router.set_weights({"B": 100})
            assert (await http.get("/")).headers["X-Backend"] == "B-1"
            assert not slow.done()  # B served while A was still answering
            assert (await slow).text == "A-1"

    run(body)


def test_an_upgrade_the_backend_declines_is_answered_and_the_connection_closed(run: Any) -> None:
    async def body() -> None:
        backend = TestBackend("A-1")
        await backend.start()
        router = await started({"A": [backend.address]}, {"A": 100})
        try:
            reader, writer = await asyncio.open_connection(*router.listen_address)
            writer.write(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
            rest = await asyncio.wait_for(reader.read(), 5)  # to the end: closed after the answer
            if b"chunked" in head.lower():
                rest = rest.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
            seen = {name.lower(): value for name, value in json.loads(rest)}
            # The Upgrade went on to the backend (it used to be dropped: WebSockets got the app's 404).
            assert seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
            writer.close()
            async with httpx.AsyncClient(trust_env=False) as http:
                host, port = router.listen_address
                assert (await http.get(f"http://{host}:{port}/")).text == "A-1"
            assert router.stats()["A"].in_flight == 0 and router.stats()["A"].streams == 0
        finally:
            await router.stop()
            await backend.stop()

    run(body)


def test_a_cut_inside_a_backend_frame_closes_without_a_frame_of_its_own(run: Any, stream_app: tuple[str, int]) -> None:
    async def body() -> None:
        router = await started({"A": [stream_app]}, {"A": 100})
        try:
            reader, writer = await asyncio.open_connection(*router.listen_address)
            writer.write(b"GET /ws?stall=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101")
            start = await asyncio.wait_for(reader.readexactly(12), 5)  # the start of a 100-byte frame
            await router.set_weights({})
            await router.drain("A", 0.05)
            assert router.drain_cut("A") == 1
            # Nothing after it: a close frame of the router's own here would have been read as payload.
            assert start[:2] == b"\x81\x64" and await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            await router.stop()

    run(body)


def test_drain_backends_cuts_the_streams_of_the_leaving_backends_only(run: Any, stream_app: tuple[str, int]) -> None:
    async def body() -> None:
        other = TestBackend("A-2")
        await other.start()
        router = await started({"A": [stream_app]}, {"A": 100})
        try:
            host, port = router.listen_address
            async with connect(f"ws://{host}:{port}/ws", open_timeout=5) as ws:
                await router.set_backends("A", [stream_app, other.address])
                assert await router.drain_backends("A", [stream_app], 0.2) is True
                assert router.drain_cut("A") == 1
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            async with httpx.AsyncClient(trust_env=False) as http:
                assert (await http.get(f"http://{host}:{port}/")).text == "A-2"  # the release serves on
        finally:
            await router.stop()
            await other.stop()

    run(body)
