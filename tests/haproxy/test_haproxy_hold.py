"""strategy.hold on HAProxy: new requests wait in haproxy (a Lua action over `hold.map`) while the old release
finishes, never sent to a server before; the hold ends at `release_hold`, at its deadline with nobody to end
it, and outlives its router (an edge killed mid-hold): a router adopting the haproxy goes on holding until
the deadline it is given, or ends the hold at once without one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from ingot.routers.haproxy import HAProxyRouter, parse_stat
from ingot.routers.testing import TestBackend
from tests.haproxy.helpers import client, poll_stats, routed


async def waiting(router: HAProxyRouter) -> int:
    """Sessions in the router's backend that are on no server: the held ones."""
    raw = parse_stat(await router.api.run(f"show stat {router.backend} 6 -1"))
    return raw["BACKEND"]["scur"] - sum(row["scur"] for name, row in raw.items() if name != "BACKEND")


async def until_waiting(router: HAProxyRouter, count: int) -> None:
    deadline = time.monotonic() + 10
    while await waiting(router) != count:
        assert time.monotonic() < deadline, f"expected {count} held requests, have {await waiting(router)}"
        await asyncio.sleep(0.01)


def test_hold_keeps_new_requests_until_the_old_release_is_done(run: Any, haproxy_bin: str, workdir: Path) -> None:
    async def body() -> None:
        a, b = TestBackend("A-1"), TestBackend("B-1")
        async with routed(workdir, haproxy_bin, {"A": [a], "B": [b]}, {"A": 100}) as (router, base), \
                client(base) as http:
            assert router.holds
            slow = asyncio.create_task(http.get("/sleep?s=0.8"))
            await poll_stats(router, lambda s: s["A"].in_flight == 1, "the slow request on A")
            await router.hold(5.0)
            await router.set_weights({"B": 100})
            held = [asyncio.create_task(http.get("/")) for _ in range(5)]
            await until_waiting(router, 5)
            assert not any(t.done() for t in held)
            assert await router.release_hold() == 5
            assert (await slow).text == "A-1"
            ended = time.monotonic()
            answers = await asyncio.gather(*held)
            assert [r.headers["X-Backend"] for r in answers] == ["B-1"] * 5
            assert time.monotonic() - ended < 1.0  # let go at once, not at the deadline
            stats = await poll_stats(router, lambda s: s["B"].requests == 5, "B's five")
            assert stats["A"].requests == 1  # held only while A had its request, and never sent to A
            # Bounded even if nobody ends it: haproxy lets the request go at the deadline itself.
            await router.hold(0.4)
            began = time.monotonic()
            response = await http.get("/")
            assert response.headers["X-Backend"] == "B-1" and 0.3 < time.monotonic() - began < 2.0
            assert (await router.api.run(f"show map {router.hold_map}")).strip()  # the stale entry, harmless
            assert await router.release_hold() == 0
            assert not (await router.api.run(f"show map {router.hold_map}")).strip()
            began = time.monotonic()
            await http.get("/")
            assert time.monotonic() - began < 0.3  # no hold, no wait

    run(body)


def test_a_hold_outlives_its_router_until_the_deadline_given_to_the_next(run: Any, haproxy_bin: str,
                                                                        workdir: Path) -> None:
    async def body() -> None:
        a = TestBackend("A-1")
        await a.start()
        first = HAProxyRouter(("127.0.0.1", 0), name="t", workdir=workdir, haproxy=haproxy_bin)
        second = third = None
        try:
            await first.set_backends("A", [a.address])
            await first.set_weights({"A": 100})
            await first.start()
            await first.hold(30.0)
            deadline = first.hold_until
            assert first._poller is not None
            first._poller.cancel()  # its owner is killed mid-hold: haproxy goes on, holding
            host, port = first.listen_address
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False, timeout=40) as http:
                request = asyncio.create_task(http.get("/"))
                await until_waiting(first, 1)
                # The next owner is given the persisted deadline before it starts (as the edge does): held still.
                second = HAProxyRouter(first.listen_address, name="t", workdir=workdir, haproxy=haproxy_bin)
                await second.set_backends("A", [a.address])
                await second.set_weights({"A": 100})
                second.hold_until = deadline
                await second.start()
                assert second.pid == first.pid
                await asyncio.sleep(0.2)
                assert not request.done() and await waiting(second) == 1
                assert await second.release_hold() == 1
                assert (await request).headers["X-Backend"] == "A-1"
                # One that is given no deadline (the hold was released, or is past) ends a hold it finds.
                await second.hold(30.0)
                assert second._poller is not None
                second._poller.cancel()
                request = asyncio.create_task(http.get("/"))
                await until_waiting(second, 1)
                third = HAProxyRouter(first.listen_address, name="t", workdir=workdir, haproxy=haproxy_bin)
                await third.set_backends("A", [a.address])
                await third.set_weights({"A": 100})
                await third.start()
                assert (await asyncio.wait_for(request, 5)).headers["X-Backend"] == "A-1"
        finally:
            await (third or second or first).stop()
            await a.stop()

    run(body)


def test_without_a_hold_the_releases_overlap(run: Any, haproxy_bin: str, workdir: Path) -> None:
    """The contrast: a switch without the hold sends new requests to B while A still answers one."""
    async def body() -> None:
        a, b = TestBackend("A-1"), TestBackend("B-1")
        async with routed(workdir, haproxy_bin, {"A": [a], "B": [b]}, {"A": 100}) as (router, base), \
                client(base) as http:
            slow = asyncio.create_task(http.get("/sleep?s=0.8"))
            await poll_stats(router, lambda s: s["A"].in_flight == 1, "the slow request on A")
            await router.set_weights({"B": 100})
            assert (await http.get("/")).headers["X-Backend"] == "B-1"
            assert not slow.done()  # B served while A was still answering
            assert (await slow).text == "A-1"

    run(body)
