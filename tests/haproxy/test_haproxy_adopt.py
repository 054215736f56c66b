"""A router that starts where an earlier owner's haproxy still runs adopts it (the edge restarting)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ingot.routers.haproxy import HAProxyRouter, parse_servers_state, running_master
from ingot.routers.testing import TestBackend
from tests.haproxy.helpers import client


def test_a_running_haproxy_is_adopted_and_reconciled_with_runtime_commands(run: Any, haproxy_bin: str,
                                                                           workdir: Path) -> None:
    async def body() -> None:
        a1, a2, b1 = TestBackend("A-1"), TestBackend("A-2"), TestBackend("B-1")
        for backend in (a1, a2, b1):
            await backend.start()
        first = HAProxyRouter(("127.0.0.1", 0), name="t", workdir=workdir, haproxy=haproxy_bin)
        await first.start()
        second = None
        try:
            await first.set_backends("A", [a1.address, a2.address])
            await first.set_weights({"A": 1})
            pid = first.pid
            assert first._poller is not None
            first._poller.cancel()  # its owner dies here: haproxy is left running, nobody stops it
            # The next owner knows the new intent (A-1 gone, B added) and starts in the same workdir.
            second = HAProxyRouter(first.listen_address, name="t", workdir=workdir, haproxy=haproxy_bin)
            await second.set_backends("A", [a2.address])
            await second.set_backends("B", [b1.address])
            await second.set_weights({"A": 1, "B": 1})
            await second.start()
            assert second.pid == pid == running_master(workdir)  # the same haproxy, not a new one
            host, port = second.listen_address
            async with client(f"http://{host}:{port}") as http:
                names = {(await http.get("/")).text for _ in range(20)}
            assert names == {"A-2", "B-1"}

            async def held() -> set[tuple[str, int]]:
                return {(release, addr[1]) for release, addr in (await second.placed()).values()}

            deadline = time.monotonic() + 10
            while ("A", a1.address[1]) in await held():  # drained, then its slot freed once idle
                assert time.monotonic() < deadline, "the slot of A-1 was never freed"
                await asyncio.sleep(0.05)
            assert await held() == {("A", a2.address[1]), ("B", b1.address[1])}
            # Every slot is a configured server: none was added at runtime (they would never reuse connections).
            names = {s.name for s in parse_servers_state(await second.api.run("show servers state releases"))}
            assert names == {f"s{n}" for n in range(1, second.slots + 1)}
        finally:
            await (second or first).stop()
            for backend in (a1, a2, b1):
                await backend.stop()
        assert running_master(workdir) is None

    run(body)
