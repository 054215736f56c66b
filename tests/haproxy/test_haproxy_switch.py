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
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

CLIENT_THREADS = 4
FLIPS = 10

pytestmark = pytest.mark.integration


# ---- the load client (runs in its own process) ---------------------------------------------------


def client_main(url: str) -> None:
    """Hammer `url` until a line arrives on stdin; print progress lines, then a final report."""
    import threading
    from collections import Counter

    import httpx

    lock = threading.Lock()
    stop = threading.Event()
    by_release: Counter[str] = Counter()
    failures: list[str] = []
    total = [0]

    def check(response: httpx.Response, expect_sha: bool) -> str | None:
        release = response.headers.get("x-ingot-release", "")
        if response.status_code != 200:
            return f"HTTP {response.status_code} from {release or 'router'}: {response.text[:120]!r}"
        if release not in ("A", "B"):
            return f"unexpected release {release!r}"
        if expect_sha:
            return None if response.json().get("length") == 1024 else f"bad echo {response.text[:80]!r}"
        if not response.text.startswith(release + "-"):
            return f"release {release} answered by backend {response.text!r}"
        return None

    def worker(n: int) -> None:
        body = bytes(range(256)) * 4
        with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as http:
            i = 0
            while not stop.is_set():
                i += 1
                post = n > 0 and i % 5 == n  # some requests carry a body, to exercise replays
                path = "/sleep?s=0.2" if n == 0 else "/"  # one slow client, so drains have to wait
                try:
                    response = http.post("/sha256", content=body) if post else http.get(path)
                    problem = check(response, post)
                except httpx.HTTPError as exc:
                    problem, response = f"{type(exc).__name__}: {exc}", None
                with lock:
                    total[0] += 1
                    if problem is not None:
                        failures.append(problem)
                    elif response is not None:
                        by_release[response.headers["x-ingot-release"]] += 1

    def report(final: bool) -> None:
        with lock:
            line = {"total": total[0], "failed": len(failures), "by_release": dict(by_release)}
            if final:
                line |= {"final": True, "failures": failures[:20]}
        print(json.dumps(line), flush=True)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    while not stop.wait(0.05):
        report(final=False)
    for thread in threads:
        thread.join(timeout=15)
    report(final=True)


# ---- the test --------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if await result if not isinstance(result, bool) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


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

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        f"http://{host}:{port}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    latest: dict[str, Any] = {"total": 0, "by_release": {}}

    async def follow() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            latest.update(json.loads(line))

    async def in_flight(release: str) -> bool:
        return (await router.refresh())[release].in_flight > 0

    follower = asyncio.create_task(follow())
    drains: list[float] = []
    try:
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
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(follower, 5)
        same_worker = (await router.api.run("show info")).split("\nPid: ")[1].split()[0] == worker_pid
        stats = {name: s.as_dict() for name, s in (await router.refresh()).items()}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        follower.cancel()
        await router.stop()
        for pool in pools.values():
            for backend in pool:
                await backend.stop()
    return {"client": latest, "stats": stats, "drains": drains, "same_worker": same_worker}


def test_ten_flips_with_drains_lose_no_request(workdir: Path, haproxy_bin: str) -> None:
    from tests.haproxy.helpers import haproxy_pids_of

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


if __name__ == "__main__":
    client_main(sys.argv[1])
