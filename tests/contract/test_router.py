"""What every `Router` operation means (`ingot.routers.base`), checked on each implementation.

Backends are in-process h11 servers (`TestBackend`); each test runs on every router kind and on
both event loops. Health checks are in test_health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from typing import Any

import pytest

from ingot.errors import OperationFailed
from ingot.routers.base import ReleaseStats, Router
from ingot.routers.testing import TestBackend
from tests.contract.conftest import MakeRouter
from tests.contract.helpers import client, routed, stats_when
from tests.support.harness import free_port


async def in_flight(router: Router, release: str, n: int = 1) -> None:
    await stats_when(router, lambda s: s[release].in_flight == n, f"{n} request(s) of {release} in flight")


# ---- weights --------------------------------------------------------------------------------------


def test_implements_the_protocol_and_weights_are_checked(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        router = make_router()
        assert isinstance(router, Router)
        with pytest.raises(ValueError, match="integer >= 0"):
            await router.set_weights({"A": -1})
        await router.set_weights({"A": 2, "B": 0})  # before start: kept, applied at start
        assert router.weights() == {"A": 2, "B": 0}
        await router.set_weights({"B": 1})
        assert router.weights() == {"A": 0, "B": 1}  # not named: weight 0
        assert router.backend_health() == {"A": {}, "B": {}}

    run(body)


def test_weight_0_gets_nothing(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1"), TestBackend("A-2")], "B": [TestBackend("B-1")]}
        async with routed(make_router(), pools, {"A": 100, "B": 0}) as (_, base), client(base) as http:
            answers = [await http.get("/") for _ in range(40)]
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["x-ingot-release"] for r in answers} == {"A"}
        by_backend = Counter(r.text for r in answers)
        assert set(by_backend) == {"A-1", "A-2"} and min(by_backend.values()) >= 15, by_backend
        assert pools["B"][0].requests == 0

    run(body)


def test_weights_split_by_release_not_by_backend(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend(f"B-{i}") for i in range(3)]}
        async with routed(make_router(), pools, {"A": 50, "B": 50}) as (_, base), client(base) as http:
            answers = [await http.get("/") for _ in range(240)]
        by_release = Counter(r.headers["x-ingot-release"] for r in answers)
        assert abs(by_release["A"] - 120) <= 12 and abs(by_release["B"] - 120) <= 12, by_release
        by_backend = Counter(r.text for r in answers)
        assert all(abs(by_backend[f"B-{i}"] - 40) <= 8 for i in range(3)), by_backend

    run(body)


def test_uneven_weights_are_respected_and_smooth(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1")]}
        async with routed(make_router(), pools, {"A": 3, "B": 1}) as (_, base), client(base) as http:
            order = [(await http.get("/")).headers["x-ingot-release"] for _ in range(40)]
        assert order.count("A") == 30 and order.count("B") == 10
        assert "BB" not in "".join(order)  # smooth: no bursts of the smaller release

    run(body)


def test_no_weighted_release_answers_503_in_plain_text(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        async with routed(make_router(), {"A": [TestBackend("A-1")]}, {"A": 0}) as (_, base), client(base) as http:
            response = await http.get("/")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/plain")
        assert "no release has weight" in response.text

    run(body)


# ---- failures ---------------------------------------------------------------------------------------


def test_a_refusing_backend_is_skipped_without_client_errors(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        alive = TestBackend("A-1")
        async with routed(make_router(), {"A": [alive]}, {"A": 1}) as (router, base), client(base) as http:
            await router.set_backends("A", [("127.0.0.1", free_port()), alive.address])
            statuses = [(await http.get("/")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert alive.requests == 20

    run(body)


def test_a_release_whose_only_backend_refuses_answers_5xx_counted_for_it(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        async with routed(make_router(), {}, {}) as (router, base), client(base) as http:
            await router.set_backends("A", [("127.0.0.1", free_port())])
            await router.set_weights({"A": 1})
            response = await http.get("/")
            assert response.status_code in (502, 503)  # haproxy says 503 once its retries found nothing
            stats = await stats_when(router, lambda s: s["A"].requests == 1, "the failed request to count")
            assert stats["A"].errors_5xx == 1
            assert (await http.get("/")).status_code in (502, 503)  # and the client connection still works

    run(body)


def test_a_release_with_no_answering_backend_fails_over_to_another(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        async with routed(make_router(), {"B": [TestBackend("B-1")]}, {}) as (router, base), client(base) as http:
            await router.set_backends("A", [("127.0.0.1", free_port())])
            await router.set_weights({"A": 50, "B": 50})
            answers = [await http.get("/") for _ in range(20)]
            assert {r.status_code for r in answers} == {200}
            assert {r.headers["x-ingot-release"] for r in answers} == {"B"}
            stats = await stats_when(router, lambda s: s["B"].requests == 20, "B's requests")
            assert stats["A"].errors_5xx == 0  # counted for the release that answered

    run(body)


# ---- pools and drains ---------------------------------------------------------------------------------


def test_set_backends_moves_new_requests_to_the_new_pool(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        old, new = TestBackend("A-old"), TestBackend("A-new")
        await new.start()
        try:
            async with routed(make_router(), {"A": [old]}, {"A": 1}) as (router, base), client(base) as http:
                assert {(await http.get("/")).text for _ in range(5)} == {"A-old"}
                await router.set_backends("A", [new.address])
                assert {(await http.get("/")).text for _ in range(10)} == {"A-new"}
                assert router.weights() == {"A": 1}
                stats = await stats_when(router, lambda s: s["A"].requests == 15, "both pools' requests")
                assert stats["A"].errors_5xx == 0
        finally:
            await new.stop()

    run(body)


def test_drain_takes_the_release_out_of_rotation_and_waits_for_in_flight(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1")]}
        async with routed(make_router(), pools, {"A": 1, "B": 1}) as (router, base), client(base) as http:
            assert await router.drain("nope", timeout=0)  # an unknown release is drained
            slow = asyncio.create_task(http.get("/sleep?s=0.8"))
            await in_flight(router, "A")
            assert not await router.drain("A", timeout=0.05)  # times out with the request in flight
            started = time.monotonic()
            drained = asyncio.create_task(router.drain("A", timeout=10))
            # Out of rotation at once although its weight is still 1: everything goes to B.
            during = [(await http.get("/")).headers["x-ingot-release"] for _ in range(10)]
            assert await drained
            waited = time.monotonic() - started
            response = await slow
            assert router.weights() == {"A": 1, "B": 1}
            assert {(await http.get("/")).headers["x-ingot-release"] for _ in range(6)} == {"B"}
            assert await router.drain("A", timeout=0.01)  # idle: at once
            await router.set_weights({"A": 1, "B": 1})  # a weight given again brings it back
            assert {(await http.get("/")).headers["x-ingot-release"] for _ in range(6)} == {"A", "B"}
        assert (response.status_code, response.headers["x-ingot-release"], response.text) == (200, "A", "A-1")
        assert during == ["B"] * 10
        assert 0.2 < waited < 5, waited

    run(body)


def test_drain_backends_keeps_the_release_serving_with_its_weight(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pool = [TestBackend("A-1"), TestBackend("A-2")]
        async with routed(make_router(), {"A": pool}, {"A": 1}) as (router, base), client(base) as http:
            slow = asyncio.create_task(http.get("/sleep?s=0.5"))
            await in_flight(router, "A")
            # In flight at the router comes before the backend has read the request: wait for that too.
            for _ in range(500):
                if any(b.requests for b in pool):
                    break
                await asyncio.sleep(0.01)
            busy = next(b for b in pool if b.requests == 1)
            other = next(b for b in pool if b is not busy)
            started = time.monotonic()
            drained = asyncio.create_task(router.drain_backends("A", [busy.address], timeout=10))
            during = [(await http.get("/")).text for _ in range(10)]
            assert await drained
            waited = time.monotonic() - started
            response = await slow
            assert router.weights() == {"A": 1}
            assert set(router.backend_health()["A"]) == {f"127.0.0.1:{other.port}"}
            slow = asyncio.create_task(http.get("/sleep?s=0.5"))
            await in_flight(router, "A")
            assert not await router.drain_backends("A", [other.address], timeout=0.05)  # False on timeout
            assert (await slow).status_code == 200  # and the request still finishes
        assert (response.status_code, response.text) == (200, busy.name)
        assert during == [other.name] * 10
        assert 0.1 < waited < 5, waited

    run(body)


def test_remove_release_forgets_it_and_others_keep_serving(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1")]}
        async with routed(make_router(), pools, {"A": 1, "B": 1}) as (router, base), client(base) as http:
            await router.remove_release("A")
            assert set(router.weights()) == {"B"} and set(router.stats()) == {"B"}
            assert set(router.backend_health()) == {"B"}
            assert {(await http.get("/")).headers["x-ingot-release"] for _ in range(10)} == {"B"}
            stats = await stats_when(router, lambda s: s["B"].requests >= 10, "B's requests")
            assert set(stats) == {"B"}
            await router.remove_release("A")  # again: nothing to do
        assert pools["A"][0].requests == 0

    run(body)


# ---- stats ----------------------------------------------------------------------------------------


def test_stats_count_requests_5xx_and_latency_per_release(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-1")], "B": [TestBackend("B-1"), TestBackend("B-2")]}
        async with routed(make_router(), pools, {"A": 1}) as (router, base), client(base) as http:
            for path in ["/"] * 6 + ["/status?code=500"] * 2 + ["/sleep?s=0.15"]:
                await http.get(path)
            await router.set_weights({"B": 1})
            for path in ["/"] * 3 + ["/status?code=503"]:
                await http.get(path)
            stats = await stats_when(
                router, lambda s: s["A"].requests == 9 and s["B"].requests == 4, "the counters to arrive"
            )
        a, b = stats["A"], stats["B"]
        assert (a.requests, a.errors_5xx, a.in_flight) == (9, 2, 0)
        assert (b.requests, b.errors_5xx, b.in_flight) == (4, 1, 0)
        assert 0 < a.p50_ms <= a.p99_ms and a.mean_ms > 0
        assert 150 <= a.p99_ms < 1000  # the one slow request
        assert set(a.as_dict()) == {"requests", "errors_5xx", "in_flight", "p50_ms", "p99_ms", "mean_ms", "streams"}
        assert a.streams == 0
        assert ReleaseStats().as_dict()["p99_ms"] == 0.0

    run(body)


# ---- lifecycle ------------------------------------------------------------------------------------


def test_address_in_use_is_an_operation_failure_naming_the_address(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            router = make_router(("127.0.0.1", port), name="web")
            with pytest.raises(OperationFailed) as caught:
                await router.start()
        assert f"127.0.0.1:{port}" in caught.value.message
        assert "already in use" in caught.value.message

    run(body)


def test_stop_closes_connections_and_start_again_keeps_pools_and_counters(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        backend = await TestBackend("A-1").start()
        router = make_router()
        try:
            await router.set_backends("A", [backend.address])
            await router.set_weights({"A": 1})
            await router.start()
            host, port = router.listen_address
            async with client(f"http://{host}:{port}") as http:
                assert (await http.get("/")).text == "A-1"
            await stats_when(router, lambda s: s["A"].requests == 1, "the first request")
            reader, writer = await asyncio.open_connection(host, port)  # an idle client connection
            await router.stop()
            with contextlib.suppress(ConnectionError):  # a reset is closed too
                assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by the stop
            writer.close()
            assert router.stats()["A"].requests == 1  # counters survive the stop
            with socket.create_server((host, port)):  # the port is free again
                pass

            await router.start()
            host, port = router.listen_address
            async with client(f"http://{host}:{port}") as http:
                assert (await http.get("/")).text == "A-1"
            stats = await stats_when(router, lambda s: s["A"].requests == 2, "counts across restarts")
            assert stats["A"].errors_5xx == 0
        finally:
            await router.stop()
            await backend.stop()

    run(body)
