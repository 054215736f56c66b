"""Passive and active health (`HealthCheck`, `Router.set_health`), checked on each implementation.

The quick cases use in-process backends whose /healthz can be made to fail. The fault cases use
backends in processes of their own (`BackendProcess`), killed (kill -9) or stopped (SIGSTOP: the
kernel still accepts their connections, nothing answers), under load from another process
(tests/support/switch_load.py); they must leave the pool within 3 s and come back after passing
probes, with no failed request beyond what a kill cuts off.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from ingot.routers.base import HealthCheck, Router
from ingot.routers.health import address_key
from ingot.routers.testing import BackendProcess, TestBackend
from tests.contract.conftest import MakeRouter
from tests.contract.helpers import client, health, health_becomes, routed, stats_when
from tests.support.harness import free_port
from tests.support.routers import runner
from tests.support.switch_load import CLIENT_THREADS, switch_load, wait_until

# Fast probes, so the tests are quick; the fault tests hold routers to the 3 s of the contract.
QUICK = HealthCheck(path="/healthz", interval=0.1, timeout=0.5, fall=2, rise=2, max_failures=3)
UNDER_LOAD = HealthCheck(path="/healthz", interval=0.25, timeout=0.5, fall=2, rise=2, max_failures=3)
EJECT_WITHIN = 3.0

# The fault tests run on one loop (uvloop, what the data plane uses when it is there): their point
# is the router's reaction, which the loop does not change, and each takes seconds.
run_once = runner("uvloop")


def test_health_check_is_validated() -> None:
    with pytest.raises(ValueError, match="path"):
        HealthCheck(path="healthz")
    with pytest.raises(ValueError, match="interval"):
        HealthCheck(interval=0)
    with pytest.raises(ValueError, match="fall"):
        HealthCheck(fall=0)
    with pytest.raises(ValueError, match="max_failures"):
        HealthCheck(max_failures=-1)
    assert not HealthCheck(max_failures=0).ejects and HealthCheck(path="/h", max_failures=0).ejects


def test_nothing_is_ejected_until_set_health(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        sick = TestBackend("A-1")
        sick.healthy = False
        async with routed(make_router(), {"A": [sick]}, {"A": 1}) as (router, base), client(base) as http:
            for _ in range(5):
                assert (await http.get("/")).status_code == 200
            assert router.backend_health() == {"A": {address_key(sick.address): "up"}}
        assert sick.probes == 0

    run(body)


def test_a_backend_failing_its_probes_gets_nothing_until_it_passes_again(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pool = [TestBackend(f"A-{i}") for i in range(3)]
        sick = pool[0]
        async with routed(make_router(), {"A": pool}, {"A": 1}) as (router, base), client(base) as http:
            await router.set_health(QUICK)
            await router.set_health(QUICK)  # the same check again changes nothing
            sick.healthy = False
            await health_becomes(router, "A", sick.address, "ejected")
            assert "/healthz" in health(router, "A", sick.address)
            assert "HTTP 503" in health(router, "A", sick.address)
            served = sick.requests
            answers = [await http.get("/") for _ in range(30)]
            assert {r.status_code for r in answers} == {200}
            assert sick.requests == served  # no new request while ejected
            assert Counter(r.text for r in answers).keys() == {"A-1", "A-2"}
            # Ejection is the router's view: weights and pools are as the caller set them.
            assert router.weights() == {"A": 1}
            assert set(router.backend_health()["A"]) == {address_key(b.address) for b in pool}

            sick.healthy = True
            await health_becomes(router, "A", sick.address, "up")
            assert sick.probes >= 2  # rise
            assert "A-0" in {(await http.get("/")).text for _ in range(12)}

    run(body)


def test_a_check_set_before_start_applies_once_started_and_again_after_a_restart(
    run: Any, make_router: MakeRouter
) -> None:
    async def body() -> None:
        sick, well = TestBackend("A-0"), TestBackend("A-1")
        sick.healthy = False
        router = make_router()
        await router.set_health(QUICK)
        async with routed(router, {"A": [sick, well]}, {"A": 1}):
            await health_becomes(router, "A", sick.address, "ejected")
            await router.stop()
            sick.healthy = True
            await router.start()
            await health_becomes(router, "A", sick.address, "up")  # probes run again

    run(body)


def test_set_backends_keeps_the_health_of_the_addresses_it_keeps(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        sick, well, fresh = TestBackend("A-0"), TestBackend("A-1"), TestBackend("A-2")
        sick.healthy = False
        await fresh.start()
        try:
            async with routed(make_router(), {"A": [sick, well]}, {"A": 1}) as (router, _):
                await router.set_health(QUICK)
                await health_becomes(router, "A", sick.address, "ejected")
                await router.set_backends("A", [sick.address, well.address, fresh.address])
                assert health(router, "A", sick.address).startswith("ejected")
                assert health(router, "A", fresh.address) == "up"
                assert health(router, "A", well.address) == "up"
        finally:
            await fresh.stop()

    run(body)


def test_every_backend_ejected_fails_open(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pools = {"A": [TestBackend("A-0"), TestBackend("A-1")], "B": [TestBackend("B-0")]}
        async with routed(make_router(), pools, {"A": 1, "B": 1}) as (router, base), client(base) as http:
            await router.set_health(QUICK)
            for backend in pools["A"]:
                backend.healthy = False
            for backend in pools["A"]:
                await health_becomes(router, "A", backend.address, "ejected")
            # A release with no backend left in rotation gives its share to the others...
            assert {(await http.get("/")).headers["x-ingot-release"] for _ in range(10)} == {"B"}
            assert router.weights() == {"A": 1, "B": 1}
            # ...but when every backend of every weighted release is out, they all serve anyway:
            # a 503 to everyone is worse than trying backends the probes may be wrong about.
            pools["B"][0].healthy = False
            await health_becomes(router, "B", pools["B"][0].address, "ejected")
            answers = [await http.get("/") for _ in range(20)]
            assert {r.status_code for r in answers} == {200}
            assert {r.headers["x-ingot-release"] for r in answers} == {"A", "B"}
            assert all(s.startswith("ejected") for pool in router.backend_health().values() for s in pool.values())

    run(body)


def test_5xx_answers_do_not_eject(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        pool = [TestBackend("A-0"), TestBackend("A-1")]
        async with routed(make_router(), {"A": pool}, {"A": 1}) as (router, base), client(base) as http:
            await router.set_health(HealthCheck(max_failures=2, interval=0.1))
            assert {(await http.get("/status?code=500")).status_code for _ in range(20)} == {500}
            await stats_when(router, lambda s: s["A"].errors_5xx == 20, "the 5xx to be counted")  # and observed
            assert set(router.backend_health()["A"].values()) == {"up"}

    run(body)


async def _hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # accepts, then closes unanswered: what a dead container's port forwarder does


def test_failed_requests_eject_passively_and_probes_bring_back_what_answers(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        alive = TestBackend("A-0")
        refusing = ("127.0.0.1", free_port())
        hangs_up = await asyncio.start_server(_hang_up, "127.0.0.1", 0)
        closing = ("127.0.0.1", int(hangs_up.sockets[0].getsockname()[1]))
        try:
            async with routed(make_router(), {"A": [alive]}, {"A": 1}) as (router, base), client(base) as http:
                # No path: passive only, and `OPTIONS *` probes of the ejected.
                await router.set_health(HealthCheck(path=None, max_failures=3, interval=0.1, rise=2))
                await router.set_backends("A", [alive.address, refusing, closing])

                async def ejected() -> bool:
                    assert (await http.get("/")).status_code == 200  # GETs are retried elsewhere
                    return all(health(router, "A", a).startswith("ejected") for a in (refusing, closing))

                await wait_until(ejected, "both failing backends to be ejected")
                assert "requests in a row failed" in health(router, "A", refusing)
                served = alive.requests
                assert {(await http.get("/")).status_code for _ in range(10)} == {200}
                assert alive.requests == served + 10
                # Back once something answers there again; the one that hangs up stays out.
                revived = await TestBackend("A-r", port=refusing[1]).start()
                try:
                    await health_becomes(router, "A", refusing, "up")
                    assert health(router, "A", closing).startswith("ejected")
                    assert "A-r" in {(await http.get("/")).text for _ in range(10)}
                finally:
                    await revived.stop()
        finally:
            hangs_up.close()

    run(body)


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # reads the request, answers nothing, until the other side closes
    writer.close()


def test_no_response_head_in_time_counts_as_a_failed_request(run: Any, make_router: MakeRouter) -> None:
    async def body() -> None:
        alive = TestBackend("A-0")
        silent_server = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
        silent = ("127.0.0.1", int(silent_server.sockets[0].getsockname()[1]))
        router = make_router(read_timeout=0.2)
        try:
            async with routed(router, {"A": [alive]}, {"A": 1}) as (_, base), client(base) as http:
                await router.set_health(HealthCheck(max_failures=2, interval=0.1))
                await router.set_backends("A", [alive.address, silent])
                statuses: Counter[int] = Counter()

                async def ejected() -> bool:
                    statuses[(await http.get("/")).status_code] += 1
                    return health(router, "A", silent).startswith("ejected")

                await wait_until(ejected, "the silent backend to be ejected")
                assert statuses[504] >= 2  # never sent elsewhere: the request had gone out
                assert "requests in a row failed" in health(router, "A", silent)
                assert health(router, "A", alive.address) == "up"
                assert [(await http.get("/")).text for _ in range(6)] == ["A-0"] * 6
        finally:
            silent_server.close()

    run(body)


# ---- faults under load, backends in processes of their own ---------------------------------------------


async def _pool_under_load(router: Router, n: int = 3) -> list[BackendProcess]:
    pool = [await BackendProcess(f"A-{i}").start() for i in range(n)]
    await router.start()
    await router.set_backends("A", [b.address for b in pool])
    await router.set_weights({"A": 1})
    await router.set_health(UNDER_LOAD)
    return pool


async def _answered_by(router: Router, n: int = 20) -> set[str]:
    """Who answers `n` requests made now, each within 2 s (the load's own may be stuck)."""
    host, port = router.listen_address
    async with client(f"http://{host}:{port}", timeout=2.0) as http:
        answers = [await http.get("/") for _ in range(n)]
    assert {r.status_code for r in answers} == {200}
    return {r.text for r in answers}


@pytest.mark.integration
def test_a_stopped_backend_leaves_the_pool_within_3s_under_load_and_returns(make_router: MakeRouter) -> None:
    async def body() -> dict[str, Any]:
        router = make_router()
        pool: list[BackendProcess] = []
        try:
            pool = await _pool_under_load(router)
            victim = pool[0]
            host, port = router.listen_address
            async with switch_load(f"http://{host}:{port}") as load:
                await wait_until(lambda: load["total"] >= 300, "the load to get going")
                victim.pause()
                out = await health_becomes(router, "A", victim.address, "ejected", timeout=10)
                reason = health(router, "A", victim.address)
                assert victim.name not in await _answered_by(router)
                victim.resume()
                back = await health_becomes(router, "A", victim.address, "up", timeout=10)
                assert victim.name in await _answered_by(router)
                mark = load["total"]
                await wait_until(lambda: load["total"] >= mark + 200, "the load to go on")
            return {"out": out, "back": back, "reason": reason, "load": dict(load)}
        finally:
            await router.stop()
            for backend in pool:
                await backend.stop()

    result = run_once(body)
    print(f"stopped backend ejected after {result['out']:.2f} s ({result['reason']}), back {result['back']:.2f} s "
          f"after SIGCONT; load: {result['load']['total']} requests")
    assert result["out"] < EJECT_WITHIN
    assert "no answer within" in result["reason"]
    # The requests the stopped process held were answered once it resumed: none failed.
    assert result["load"]["failed"] == 0, result["load"]["failures"]


@pytest.mark.integration
def test_a_killed_backend_leaves_the_pool_within_3s_under_load_and_a_restarted_one_returns(
    make_router: MakeRouter,
) -> None:
    async def body() -> dict[str, Any]:
        router = make_router()
        pool: list[BackendProcess] = []
        try:
            pool = await _pool_under_load(router)
            victim = pool[0]
            host, port = router.listen_address
            async with switch_load(f"http://{host}:{port}") as load:
                await wait_until(lambda: load["total"] >= 300, "the load to get going")
                await victim.kill()
                started = time.monotonic()
                out = await health_becomes(router, "A", victim.address, "ejected", timeout=10)
                reason = health(router, "A", victim.address)
                failed_when_out = load["failed"]
                mark = load["total"]
                await wait_until(lambda: load["total"] >= mark + 300, "the load to go on without it")
                assert victim.name not in await _answered_by(router)
                failed_after = load["failed"] - failed_when_out
                pool[0] = victim = await BackendProcess(victim.name, port=victim.port).start()
                back = await health_becomes(router, "A", victim.address, "up", timeout=10)
                assert victim.name in await _answered_by(router)
                assert time.monotonic() - started < 30
            return {"out": out, "back": back, "reason": reason, "failed_after": failed_after, "load": dict(load)}
        finally:
            await router.stop()
            for backend in pool:
                await backend.stop()

    result = run_once(body)
    print(f"killed backend ejected after {result['out']:.2f} s ({result['reason']}), back {result['back']:.2f} s "
          f"after its restart; load: {result['load']['total']} requests, {result['load']['failed']} failed "
          f"{result['load'].get('failures')}")
    assert result["out"] < EJECT_WITHIN
    # At most the requests in flight on it when it died (a POST cut off is never sent twice),
    # and none once it was out.
    assert result["load"]["failed"] <= CLIENT_THREADS, result["load"]["failures"]
    assert result["failed_after"] == 0, result["load"]["failures"]
