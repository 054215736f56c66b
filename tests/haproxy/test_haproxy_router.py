"""`HAProxyRouter` against a real haproxy: backends are in-process h11 servers (`TestBackend`).

What every router does (weights, pools, drains, stats, health) is in tests/contract/; here is what
is HAProxy's own: the weight translation, server names and deletion, haproxy's processes.
Every test that starts haproxy runs under both the default asyncio loop and uvloop (the agent uses
uvloop if present).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ingot.errors import OperationFailed
from ingot.routers.base import ClientPolicy
from ingot.routers.haproxy import HAProxyRouter, parse_stat, passive_delta, server_weights
from ingot.routers.haproxy_config import BACKEND
from ingot.routers.testing import TestBackend
from tests.haproxy.helpers import client, poll_stats, routed
from tests.support.routers import haproxy_pids_of

# ---- the weight translation (pure) ------------------------------------------------------------------


def test_server_weights_split_by_release_not_by_server() -> None:
    assert server_weights({"A": 50, "B": 50}, {"A": 1, "B": 3}) == {"A": 3, "B": 1}
    assert server_weights({"A": 100, "B": 0}, {"A": 2, "B": 2}) == {"A": 1}
    assert server_weights({"A": 1, "B": 9}, {"A": 2, "B": 3}) == {"A": 1, "B": 6}
    assert server_weights({"A": 5}, {}) == {}  # no servers: nothing to weigh


def test_server_weights_scale_into_haproxy_range() -> None:
    got = server_weights({"A": 1, "B": 999}, {"A": 7, "B": 1})
    assert max(got.values()) == 256 and got["A"] >= 1
    # Release shares stay close to the asked ones: B's share is 999/1000.
    share_b = got["B"] / (got["B"] + 7 * got["A"])
    assert abs(share_b - 0.999) < 0.03, got


def test_parse_stat_reads_columns_by_name() -> None:
    rows = parse_stat("# pxname,svname,scur,req_tot,lastsess\nreleases,A__1,2,10,-1\n\n")
    assert rows == {"A__1": {"pxname": 0, "svname": 0, "scur": 2, "req_tot": 10, "lastsess": 0}}
    with pytest.raises(OperationFailed):
        parse_stat("Unknown command.\n")


def test_passive_delta_counts_failed_attempts_once() -> None:
    before = {"eresp": 1, "econ": 0, "wredis": 4, "hrsp_2xx": 10}
    # Refused connects leave only redispatches behind.
    assert passive_delta(before, {**before, "wredis": 9}) == (5, 0, "connection failed")
    # An empty answer is in eresp, and its retry elsewhere in wredis too: counted once.
    assert passive_delta(before, {**before, "eresp": 4, "wredis": 7})[:2] == (3, 0)
    # Any answer (a 5xx too) counts as one.
    assert passive_delta(before, {**before, "hrsp_5xx": 2})[:2] == (0, 2)


# ---- against haproxy ---------------------------------------------------------------------------------


def test_x_forwarded_for_and_release_header(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"rel-1.a_b": [TestBackend("A-1")]}
        trusted = ClientPolicy(trusted_proxies=("127.0.0.0/8",))  # else a client's X-Forwarded-For is dropped
        async with routed(workdir, haproxy_bin, pools, {"rel-1.a_b": 1}, clients=trusted) as (_, base), \
                client(base) as http:
            plain = await http.get("/headers", headers={"Host": "shop.example"})
            chained = await http.get("/headers", headers={"X-Forwarded-For": "10.0.0.1"})
        assert plain.headers["x-ingot-release"] == "rel-1.a_b"
        seen = {name.lower(): value for name, value in plain.json()}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "shop.example"
        # haproxy adds its own X-Forwarded-For line after the client's: the same list, per RFC 9110.
        forwarded = [value for name, value in chained.json() if name.lower() == "x-forwarded-for"]
        assert ", ".join(forwarded) == "10.0.0.1, 127.0.0.1"

    run(body)


def test_replaced_pool_servers_free_their_slot_and_their_counts_are_kept(run: Any, workdir: Path,
                                                                        haproxy_bin: str) -> None:
    async def body() -> None:
        old, new, newer = TestBackend("A-old"), TestBackend("A-new"), TestBackend("A-newer")
        await new.start()
        await newer.start()
        try:
            async with routed(workdir, haproxy_bin, {"A": [old]}, {"A": 1}, slots=2) as (router, base), \
                    client(base) as http:
                assert {(await http.get("/")).text for _ in range(5)} == {"A-old"}
                await router.set_backends("A", [new.address])
                assert {(await http.get("/")).text for _ in range(5)} == {"A-new"}
                stats = await poll_stats(router, lambda s: s["A"].requests == 10, "both pools' counts")
                assert stats["A"].requests == 10 and stats["A"].errors_5xx == 0
                assert {r for r, _ in (await router.placed()).values()} == {"A"}
                assert len(await router.placed()) == 1  # the old instance's slot was freed once idle
                # The freed slot takes the next instance; its counts start from what the slot had.
                await router.set_backends("A", [newer.address])
                assert {(await http.get("/")).text for _ in range(5)} == {"A-newer"}
                stats = await poll_stats(router, lambda s: s["A"].requests == 15, "three instances' counts")
                assert stats["A"].requests == 15 and stats["A"].errors_5xx == 0
        finally:
            await new.stop()
            await newer.stop()

    run(body)


def test_past_its_slots_a_router_adds_servers_and_warns(run: Any, workdir: Path, haproxy_bin: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend(f"A-{i}") for i in range(3)]}
        async with routed(workdir, haproxy_bin, pools, {"A": 1}, slots=2) as (router, base), client(base) as http:
            answers = [await http.get("/") for _ in range(30)]
            assert {r.text for r in answers} == {"A-0", "A-1", "A-2"}
            assert {r.headers["x-ingot-release"] for r in answers} == {"A"}
            assert sorted(await router.placed()) == ["s1", "s2", "x1"]  # x1: added at runtime
            await router.set_backends("A", [b.address for b in pools["A"][:2]])
            deadline = time.monotonic() + 10
            while "x1" in await router.placed():  # deleted once idle
                assert time.monotonic() < deadline, "the added server was never deleted"
                await asyncio.sleep(0.05)
        assert "all 2 server slots are taken" in caplog.text

    run(body)


def test_slot_servers_reuse_backend_connections_under_load(run: Any, workdir: Path, haproxy_bin: str) -> None:
    """The measured bug: servers added at runtime made a new connection per request (`connect` = `req_tot`)."""
    async def body() -> None:
        pools = {"A": [TestBackend("A-1"), TestBackend("A-2")]}
        async with routed(workdir, haproxy_bin, pools, {"A": 1}) as (router, base):
            wrk = shutil.which("wrk")  # provisioned by scripts/test
            assert wrk, "wrk is needed for load from another process"
            proc = await asyncio.create_subprocess_exec(wrk, "-t1", "-c8", "-d1s", f"{base}/",
                                                        stdout=asyncio.subprocess.DEVNULL)
            assert await proc.wait() == 0
            rows = parse_stat(await router.api.run(f"show stat {BACKEND} 4 -1"))
            used = [rows[name] for name in await router.placed()]
            requests = sum(r["req_tot"] for r in used)
            connects = sum(r["connect"] for r in used)
            assert requests >= 500 and sum(r["reuse"] for r in used) > 0, used
            assert connects * 10 < requests, (connects, requests)

    run(body)


def test_a_failed_start_leaves_no_haproxy(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            router = HAProxyRouter(taken.getsockname(), name="web", workdir=workdir, haproxy=haproxy_bin)
            with pytest.raises(OperationFailed, match="already in use"):
                await router.start()
        assert haproxy_pids_of(workdir) == []

    run(body)


def test_missing_haproxy_is_a_clear_error(run: Any, workdir: Path) -> None:
    async def body() -> None:
        router = HAProxyRouter(("127.0.0.1", 0), workdir=workdir, haproxy="no-such-haproxy")
        with pytest.raises(OperationFailed, match="no-such-haproxy"):
            await router.start()

    run(body)


def test_stop_leaves_no_haproxy_and_start_again_runs_a_new_one(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        backend = await TestBackend("A-1").start()
        router = HAProxyRouter(("127.0.0.1", 0), name="restart", workdir=workdir, haproxy=haproxy_bin)
        try:
            await router.set_backends("A", [backend.address])
            await router.set_weights({"A": 1})
            await router.start()
            first = haproxy_pids_of(workdir)
            assert len(first) == 2  # master and worker
            await router.stop()
            assert haproxy_pids_of(workdir) == []
            await router.start()
            host, port = router.listen_address
            async with client(f"http://{host}:{port}") as http:
                assert (await http.get("/")).text == "A-1"
            assert len(haproxy_pids_of(workdir)) == 2 and not set(haproxy_pids_of(workdir)) & set(first)
        finally:
            await router.stop()
            await backend.stop()
        assert haproxy_pids_of(workdir) == []

    run(body)
