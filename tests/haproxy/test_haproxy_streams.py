"""WebSockets and server-sent events through HAProxy, and the cut of WebSockets at the end of a drain.

haproxy tunnels an Upgrade itself (`timeout tunnel` keeps a quiet WebSocket open); at the drain timeout the
router has it close the release's tunnels (`shutdown session`) and counts them. Unlike the built-in router,
no close frame is sent (the client sees the connection close), and an event stream is not cut: haproxy
cannot tell it from a slow response, which a drain must let finish.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingot.routers.haproxy import HAProxyRouter
from tests.support.routers import stream_app

__all__ = ["stream_app"]  # the fixture


async def started(workdir: Path, haproxy: str, pool: tuple[str, int]) -> HAProxyRouter:
    router = HAProxyRouter(("127.0.0.1", 0), name="streams", workdir=workdir, haproxy=haproxy)
    await router.start()
    await router.set_backends("A", [pool])
    await router.set_backends("B", [pool])
    await router.set_weights({"A": 100})
    return router


def test_streams_pass_through_and_are_cut_at_the_drain_timeout(run: Any, haproxy_bin: str, workdir: Path,
                                                               stream_app: tuple[str, int]) -> None:
    async def body() -> None:
        router = await started(workdir, haproxy_bin, stream_app)
        try:
            host, port = router.listen_address
            async with connect(f"ws://{host}:{port}/ws", open_timeout=5) as ws:
                assert ws.response is not None and ws.response.headers["X-Ingot-Release"] == "A"
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 5) == "1:hi"
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /events?every=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                arrived = []
                while len(arrived) < 3:
                    if (await asyncio.wait_for(reader.readline(), 5)).startswith(b"data: "):
                        arrived.append(time.monotonic())
                assert arrived[-1] - arrived[0] > 0.3  # streamed as sent, not buffered
                await router.set_weights({"B": 100})
                assert await router.drain("A", 1.0) is False  # the event stream is still in flight
                assert router.drain_cut("A") == 1
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                for _ in range(2):  # still streaming, as a slow response would still be answered
                    while not (await asyncio.wait_for(reader.readline(), 5)).startswith(b"data: "):
                        pass
                writer.close()
        finally:
            await router.stop()

    run(body)
