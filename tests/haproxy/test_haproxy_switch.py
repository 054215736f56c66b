"""Zero failed requests while the HAProxy router flips traffic A -> B -> A ten times.

The same scenario as the builtin router's (tests/integration/test_router_switch.py): the load comes
from a separate process (this file run as a script: httpx clients with keep-alive, in threads), and
each flip is what a deploy does: start a fresh pool for the target release, point the router at
it, move the weights, drain the old release, then kill the old instances (listener closed,
connections reset). The backends also close some keep-alive connections without warning, after a
response or just as a new request arrives on them, and one client's requests are slow, so that
drains have something to wait for. Every change reaches haproxy through its runtime API: the test
also checks that haproxy was never reloaded (the same worker served throughout).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.switch_load import switch_load, wait_until

FLIPS = 10

pytestmark = pytest.mark.integration


# ---- the test --------------------------------------------------------------------------------------


async def switch_scenario(workdir: Path, haproxy: str) -> dict[str, Any]:
    from ingot.routers.haproxy import HAProxyRouter
    from ingot.routers.testing import TestBackend

    async def start_pool(release: str, generation: int) -> list[TestBackend]:
        pool = [TestBackend(f"{release}-{generation}-{i}", drop_rate=0.05, close_reused=0.02) for i in range(2)]
        for backend in pool:
            await backend.start()
        return pool

    router = HAProxyRouter(("127.0.0.1", 0), name="switch", workdir=workdir, haproxy=haproxy)
    await router.start()
    worker_pid = (await router.api.run("show info")).split("\nPid: ")[1].split()[0]
    pools = {"A": await start_pool("A", 0)}
    await router.set_backends("A", [b.address for b in pools["A"]])
    await router.set_weights({"A": 100})
    host, port = router.listen_address

    async def in_flight(release: str) -> bool:
        return (await router.refresh())[release].in_flight > 0

    drains: list[float] = []
    try:
        async with switch_load(f"http://{host}:{port}") as latest:
            await wait_until(lambda: latest["total"] >= 200, "the client to get going")
            current = "A"
            for flip in range(1, FLIPS + 1):
                target = "B" if current == "A" else "A"
                pools[target] = await start_pool(target, flip)
                await wait_until(lambda c=current: in_flight(c), "a request in flight")  # type: ignore[misc]
                await router.set_backends(target, [b.address for b in pools[target]])
                await router.set_weights({target: 100, current: 0})
                started = time.monotonic()
                assert await router.drain(current, timeout=10), f"flip {flip}: {current} did not drain"
                drains.append(time.monotonic() - started)
                for backend in pools.pop(current):
                    await backend.stop()  # like killed instances: connections reset
                await router.set_backends(current, [])  # what a deploy does once the instances are gone
                mark = latest["by_release"].get(target, 0)
                await wait_until(
                    lambda t=target, m=mark: latest["by_release"].get(t, 0) >= m + 100,  # type: ignore[misc]
                    f"flip {flip}: traffic on {target}",
                )
                current = target
        same_worker = (await router.api.run("show info")).split("\nPid: ")[1].split()[0] == worker_pid
        stats = {name: s.as_dict() for name, s in (await router.refresh()).items()}
    finally:
        await router.stop()
        for pool in pools.values():
            for backend in pool:
                await backend.stop()
    return {"client": latest, "stats": stats, "drains": drains, "same_worker": same_worker}


def test_ten_flips_with_drains_lose_no_request(workdir: Path, haproxy_bin: str) -> None:
    from tests.support.routers import haproxy_pids_of

    result = asyncio.run(asyncio.wait_for(switch_scenario(workdir, haproxy_bin), 240))
    client = result["client"]
    assert client.get("final"), client
    assert client["failed"] == 0, client["failures"]
    assert set(client["by_release"]) == {"A", "B"}
    assert sum(client["by_release"].values()) == client["total"] >= 1000
    assert all(s["errors_5xx"] == 0 for s in result["stats"].values()), result["stats"]
    assert max(result["drains"]) > 0.05  # the slow client's requests were waited for
    # haproxy also counts requests the backends dropped and it replayed, so it may see more.
    assert sum(s["requests"] for s in result["stats"].values()) >= client["total"]
    assert result["same_worker"]  # no reload: one worker served every flip
    assert haproxy_pids_of(workdir) == []
