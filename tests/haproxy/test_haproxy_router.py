"""`HAProxyRouter` against a real haproxy: backends are in-process h11 servers (`TestBackend`).

Every test that starts haproxy runs under both the default asyncio loop and uvloop (the agent uses
uvloop if present).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ingot.errors import OperationFailed
from ingot.routers.base import Router
from ingot.routers.haproxy import HAProxyRouter, parse_stat, server_weights
from ingot.routers.haproxy_config import BACKEND
from ingot.routers.testing import TestBackend
from tests.haproxy.helpers import client, poll_stats, routed
from tests.support.routers import haproxy_pids_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# ---- against haproxy ---------------------------------------------------------------------------------


def test_protocol_is_implemented_and_weights_are_checked(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        router = HAProxyRouter(("127.0.0.1", 0), workdir=workdir, haproxy=haproxy_bin)
        assert isinstance(router, Router)
        with pytest.raises(ValueError, match="integer >= 0"):
            await router.set_weights({"A": -1})
        with pytest.raises(ValueError, match="cannot name an haproxy server"):
            await router.set_weights({"a b": 1})
        await router.set_weights({"A": 2, "B": 0})  # before start: kept, applied at start
        assert router.weights() == {"A": 2, "B": 0}
        await router.set_weights({"B": 1})
        assert router.weights() == {"A": 0, "B": 1}  # not named: weight 0

    run(body)


def test_weight_100_0_sends_everything_to_one_release(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1"), TestBackend("A-2")], "B": [TestBackend("B-1")]}
        async with routed(workdir, haproxy_bin, pools, {"A": 100, "B": 0}) as (_, base), client(base) as http:
            answers = [await http.get("/") for _ in range(40)]
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["x-ingot-release"] for r in answers} == {"A"}
        assert Counter(r.text for r in answers) == {"A-1": 20, "A-2": 20}
        assert pools["B"][0].requests == 0

    run(body)


def test_50_50_splits_by_release_with_1_and_3_servers(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend(f"B-{i}") for i in range(3)]}
        async with routed(workdir, haproxy_bin, pools, {"A": 50, "B": 50}) as (_, base), client(base) as http:
            answers = [await http.get("/") for _ in range(240)]
        by_release = Counter(r.headers["x-ingot-release"] for r in answers)
        assert abs(by_release["A"] - 120) <= 12 and abs(by_release["B"] - 120) <= 12, by_release
        by_backend = Counter(r.text for r in answers)
        assert all(abs(by_backend[f"B-{i}"] - 40) <= 8 for i in range(3)), by_backend

    run(body)


def test_x_forwarded_for_and_release_header(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"rel-1.a_b": [TestBackend("A-1")]}
        async with routed(workdir, haproxy_bin, pools, {"rel-1.a_b": 1}) as (_, base), client(base) as http:
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


def test_no_weighted_release_answers_503_in_plain_text(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        async with (
            routed(workdir, haproxy_bin, {"A": [TestBackend("A-1")]}, {"A": 0}) as (_, base),
            client(base) as http,
        ):
            response = await http.get("/")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/plain")
        assert "no release has weight" in response.text

    run(body)


def test_stats_count_requests_5xx_and_latency_per_release(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1"), TestBackend("B-2")]}
        async with routed(workdir, haproxy_bin, pools, {"A": 1}) as (router, base), client(base) as http:
            for path in ["/"] * 6 + ["/status?code=500"] * 2 + ["/sleep?s=0.15"]:
                await http.get(path)
            await router.set_weights({"B": 1})
            for path in ["/"] * 3 + ["/status?code=503"]:
                await http.get(path)
            stats = await poll_stats(
                router, lambda s: s["A"].requests == 9 and s["B"].requests == 4, "the counters to arrive"
            )
        a, b = stats["A"], stats["B"]
        assert (a.requests, a.errors_5xx, a.in_flight) == (9, 2, 0)
        assert (b.requests, b.errors_5xx, b.in_flight) == (4, 1, 0)
        # Means are over each server's last requests: A's one slow request of 9 lifts its mean.
        assert a.mean_ms == a.p50_ms and a.mean_ms >= 150 / 9 - 1
        assert 150 <= a.p99_ms < 1000  # the slowest request since the last polls
        assert b.p99_ms < 150

    run(body)


def test_connect_failures_count_as_5xx_of_the_release(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        async with routed(workdir, haproxy_bin, {}, {}) as (router, base), client(base) as http:
            await router.set_backends("A", [("127.0.0.1", free_port())])
            await router.set_weights({"A": 1})
            response = await http.get("/")
            assert response.status_code in (502, 503)
            stats = await poll_stats(router, lambda s: s["A"].requests == 1, "the failed request to count")
            assert stats["A"].errors_5xx == 1

    run(body)


def test_a_dead_backend_is_skipped_without_client_errors(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        alive = TestBackend("A-1")
        async with routed(workdir, haproxy_bin, {"A": [alive]}, {"A": 1}) as (router, base), client(base) as http:
            await router.set_backends("A", [("127.0.0.1", free_port()), alive.address])
            statuses = [(await http.get("/")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert alive.requests == 20

    run(body)


def test_replaced_pool_servers_are_deleted_and_their_counts_kept(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        old, new = TestBackend("A-old"), TestBackend("A-new")
        await new.start()
        try:
            async with routed(workdir, haproxy_bin, {"A": [old]}, {"A": 1}) as (router, base), client(base) as http:
                assert {(await http.get("/")).text for _ in range(5)} == {"A-old"}
                await router.set_backends("A", [new.address])
                assert {(await http.get("/")).text for _ in range(5)} == {"A-new"}

                async def servers() -> list[str]:
                    return sorted(parse_stat(await router.api.run(f"show stat {BACKEND} 4 -1")))

                stats = await poll_stats(router, lambda s: s["A"].requests == 10, "both pools' counts")
                assert len(await servers()) == 1  # the old server was deleted once idle
                assert stats["A"].requests == 10 and stats["A"].errors_5xx == 0
        finally:
            await new.stop()

    run(body)


def test_drain_waits_for_a_slow_request_that_still_succeeds(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1")]}
        async with routed(workdir, haproxy_bin, pools, {"A": 1}) as (router, base), client(base) as http:
            slow = asyncio.create_task(http.get("/sleep?s=0.6"))
            await poll_stats(router, lambda s: s["A"].in_flight == 1, "the slow request to be in flight")
            await router.set_weights({"A": 0, "B": 1})
            started = time.monotonic()
            drained = asyncio.create_task(router.drain("A", timeout=10))
            during = [(await http.get("/")).headers["x-ingot-release"] for _ in range(10)]
            assert await drained
            waited = time.monotonic() - started
            response = await slow
        assert (response.status_code, response.headers["x-ingot-release"], response.text) == (200, "A", "A-1")
        assert during == ["B"] * 10
        assert 0.2 < waited < 5, waited

    run(body)


def test_drain_times_out_and_unknown_release_is_drained(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        async with routed(workdir, haproxy_bin, {"A": [TestBackend("A-1")]}, {"A": 1}) as (router, base):
            assert await router.drain("nope", timeout=0)
            async with client(base) as http:
                slow = asyncio.create_task(http.get("/sleep?s=1"))
                await poll_stats(router, lambda s: s["A"].in_flight == 1, "the slow request to be in flight")
                assert not await router.drain("A", timeout=0.1)
                assert (await slow).status_code == 200

    run(body)


def test_remove_release_forgets_it_and_others_keep_serving(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1")]}
        async with routed(workdir, haproxy_bin, pools, {"A": 1, "B": 1}) as (router, base), client(base) as http:
            await router.remove_release("A")
            assert set(router.weights()) == {"B"} and set(router.stats()) == {"B"}
            assert {(await http.get("/")).headers["x-ingot-release"] for _ in range(10)} == {"B"}
            stats = await poll_stats(router, lambda s: s["B"].requests >= 10, "B's requests")
            assert set(stats) == {"B"}
        assert pools["A"][0].requests == 0

    run(body)


def test_address_in_use_is_reported_with_the_address(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            router = HAProxyRouter(("127.0.0.1", port), name="web", workdir=workdir, haproxy=haproxy_bin)
            with pytest.raises(OperationFailed) as caught:
                await router.start()
        assert f"127.0.0.1:{port}" in caught.value.message
        assert "already in use" in caught.value.message
        assert haproxy_pids_of(workdir) == []

    run(body)


def test_missing_haproxy_is_a_clear_error(run: Any, workdir: Path) -> None:
    async def body() -> None:
        router = HAProxyRouter(("127.0.0.1", 0), workdir=workdir, haproxy="no-such-haproxy")
        with pytest.raises(OperationFailed, match="no-such-haproxy"):
            await router.start()

    run(body)


def test_stop_leaves_no_haproxy_and_start_again_restores_pools(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        backend = TestBackend("A-1")
        await backend.start()
        router = HAProxyRouter(("127.0.0.1", 0), name="restart", workdir=workdir, haproxy=haproxy_bin)
        try:
            await router.set_backends("A", [backend.address])
            await router.set_weights({"A": 1})
            await router.start()
            assert len(haproxy_pids_of(workdir)) == 2  # master and worker
            host, port = router.listen_address
            async with client(f"http://{host}:{port}") as http:
                assert (await http.get("/")).text == "A-1"
            await router.stop()
            assert haproxy_pids_of(workdir) == []
            assert router.stats()["A"].requests == 1  # counters survive the stop
            with socket.create_server(("127.0.0.1", port)):  # the port is free again
                pass

            await router.start()
            host, port = router.listen_address
            async with client(f"http://{host}:{port}") as http:
                assert (await http.get("/")).text == "A-1"
            stats = await poll_stats(router, lambda s: s["A"].requests == 2, "counts across restarts")
            assert stats["A"].errors_5xx == 0
            assert json.loads(json.dumps(stats["A"].as_dict()))["requests"] == 2
        finally:
            await router.stop()
            await backend.stop()
        assert haproxy_pids_of(workdir) == []

    run(body)


def test_drain_backends_keeps_the_release_serving(run: Any, workdir: Path, haproxy_bin: str) -> None:
    async def body() -> None:
        pool = [TestBackend("A-1"), TestBackend("A-2")]
        async with routed(workdir, haproxy_bin, {"A": pool}, {"A": 1}) as (router, base), client(base) as http:
            slow = asyncio.create_task(http.get("/sleep?s=0.5"))
            await poll_stats(router, lambda s: s["A"].in_flight == 1, "the slow request to be in flight")
            busy = next(b for b in pool if b.requests == 1)
            other = next(b for b in pool if b is not busy)
            started = time.monotonic()
            drained = asyncio.create_task(router.drain_backends("A", [busy.address], timeout=10))
            during = [(await http.get("/")).text for _ in range(10)]
            assert await drained
            waited = time.monotonic() - started
            response = await slow
            assert router.weights() == {"A": 1}
        assert (response.status_code, response.text) == (200, busy.name)
        assert during == [other.name] * 10
        assert 0.1 < waited < 5, waited

    run(body)
