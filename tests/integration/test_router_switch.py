"""Zero failed requests while the builtin router flips traffic A -> B -> A ten times.

The load comes from a separate process (this file run as a script: httpx clients with keep-alive,
in threads) so that it never shares the router's event loop or GIL. Each flip is what a deploy
does: start a fresh pool for the target release, point the router at it, move the weights,
drain the old release, then kill the old instances (listener closed, connections reset). The
backends also close some keep-alive connections without warning, after a response or just as a
new request arrives on them: the races a router must absorb without the client noticing. Some
requests are slow, so that drains have something to wait for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.switch_load import switch_load, wait_until

FLIPS = 10

pytestmark = pytest.mark.integration


# ---- the test --------------------------------------------------------------------------------------


async def switch_scenario() -> dict[str, Any]:
    from ingot.routers.builtin import BuiltinRouter
    from ingot.routers.testing import TestBackend

    async def start_pool(release: str, generation: int) -> list[TestBackend]:
        pool = [TestBackend(f"{release}-{generation}-{i}", drop_rate=0.05, close_reused=0.02) for i in range(2)]
        for backend in pool:
            await backend.start()
        return pool

    router = BuiltinRouter(("127.0.0.1", 0), name="switch")
    await router.start()
    pools = {"A": await start_pool("A", 0)}
    await router.set_backends("A", [b.address for b in pools["A"]])
    await router.set_weights({"A": 100})
    host, port = router.listen_address

    drains: list[float] = []
    try:
        async with switch_load(f"http://{host}:{port}") as latest:
            await wait_until(lambda: latest["total"] >= 200, "the client to get going")
            current = "A"
            for flip in range(1, FLIPS + 1):
                target = "B" if current == "A" else "A"
                pools[target] = await start_pool(target, flip)
                await wait_until(lambda c=current: router.stats()[c].in_flight > 0, "a request in flight")  # type: ignore[misc]
                await router.set_backends(target, [b.address for b in pools[target]])
                await router.set_weights({target: 100, current: 0})
                started = time.monotonic()
                assert await router.drain(current, timeout=10), f"flip {flip}: {current} did not drain"
                drains.append(time.monotonic() - started)
                for backend in pools.pop(current):
                    await backend.stop()  # like killed instances: connections reset
                mark = latest["by_release"].get(target, 0)
                await wait_until(
                    lambda t=target, m=mark: latest["by_release"].get(t, 0) >= m + 100,  # type: ignore[misc]
                    f"flip {flip}: traffic on {target}",
                )
                current = target
    finally:
        stats = {name: s.as_dict() for name, s in router.stats().items()}
        await router.stop()
        for pool in pools.values():
            for backend in pool:
                await backend.stop()
    return {"client": latest, "stats": stats, "drains": drains}


def test_ten_flips_with_drains_lose_no_request() -> None:
    from ingot.routers.builtin import install_fast_loop

    install_fast_loop()
    try:
        result = asyncio.run(asyncio.wait_for(switch_scenario(), 240))
    finally:
        asyncio.set_event_loop_policy(None)
    client = result["client"]
    assert client.get("final"), client
    assert client["failed"] == 0, client["failures"]
    assert set(client["by_release"]) == {"A", "B"}
    assert sum(client["by_release"].values()) == client["total"] >= 1000
    assert all(s["errors_5xx"] == 0 for s in result["stats"].values()), result["stats"]
    assert max(result["drains"]) > 0.05  # the slow client's requests were waited for
    assert sum(s["requests"] for s in result["stats"].values()) >= client["total"]
