"""A haproxy that dies under a running router (crash, OOM kill) is started again on the same address with the
same pools and weights, without anyone asking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from ingot.routers.haproxy import HAProxyRouter, running_master
from ingot.routers.testing import TestBackend
from tests.haproxy.helpers import client


async def _names(base: str, count: int) -> set[str]:
    async with client(base) as http:
        return {(await http.get("/")).text for _ in range(count)}


def test_a_haproxy_killed_under_a_running_router_is_started_again_with_its_routes(
        run: Any, haproxy_bin: str, workdir: Path) -> None:
    async def body() -> tuple[float, int]:
        a, b = TestBackend("A-1"), TestBackend("B-1")
        for backend in (a, b):
            await backend.start()
        router = HAProxyRouter(("127.0.0.1", 0), name="t", workdir=workdir, haproxy=haproxy_bin)
        await router.start()
        try:
            await router.set_backends("A", [a.address])
            await router.set_backends("B", [b.address])
            await router.set_weights({"A": 0, "B": 1})
            host, port = router.listen_address
            base = f"http://{host}:{port}"
            assert await _names(base, 10) == {"B-1"}
            first = router.pid
            assert first is not None
            os.killpg(first, signal.SIGKILL)  # master and workers: haproxy runs in a session of its own
            killed = time.monotonic()
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if router.pid not in (None, first) and await _names(base, 1) == {"B-1"}:
                        break
                assert time.monotonic() - killed < 10, "haproxy was not started again"
                await asyncio.sleep(0.02)
            back = time.monotonic() - killed
            # Same address, same weights: B only, and both releases still known to the router.
            assert router.listen_address == (host, port)
            assert await _names(base, 20) == {"B-1"}
            await router.set_weights({"A": 1, "B": 0})  # and it is driven as before
            assert await _names(base, 10) == {"A-1"}
            assert running_master(workdir) == router.pid != first
            return back, router.respawns
        finally:
            await router.stop()
            for backend in (a, b):
                await backend.stop()

    back, respawns = run(body)
    assert respawns == 1
    assert back < 3.0, back  # noticed within a poll (0.5 s), started in well under a second more
    assert running_master(workdir) is None
