"""The health bookkeeping both routers share (`ingot.routers.health`): rules and single probes.

The routers' behaviour with it (ejection, return, fail-open, under load) is in tests/contract/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from ingot.routers.base import HealthCheck
from ingot.routers.health import BackendHealth, HealthMonitor, address_key, fail_open, probe_http, serving
from ingot.routers.testing import TestBackend
from tests.support.harness import free_port
from tests.support.routers import run

__all__ = ["run"]  # the fixture


def monitor(backends: list[BackendHealth]) -> tuple[HealthMonitor, list[int]]:
    changes: list[int] = []
    mon = HealthMonitor("test", targets=lambda: backends, changed=lambda: changes.append(1), running=lambda: False)
    return mon, changes


def test_fall_and_rise_count_probes_in_a_row() -> None:
    b = BackendHealth(("127.0.0.1", 1))
    mon, changes = monitor([b])
    mon.configure(HealthCheck(path="/healthz", fall=3, rise=2))
    for ok in (False, False, True, False, False):  # a pass in between starts the count again
        mon.probe_done(b, ok, "x", time.monotonic())
    assert not b.ejected
    mon.probe_done(b, False, "HTTP 500", time.monotonic())
    assert b.ejected and b.status() == "ejected: 3 probes of /healthz in a row failed, last: HTTP 500"
    mon.probe_done(b, True, "HTTP 200", time.monotonic())
    assert b.ejected
    mon.probe_done(b, True, "HTTP 200", time.monotonic())
    assert not b.ejected and b.status() == "up"
    assert len(changes) == 2


def test_a_pass_from_a_probe_sent_before_the_ejection_does_not_count() -> None:
    b = BackendHealth(("127.0.0.1", 1))
    mon, _ = monitor([b])
    mon.configure(HealthCheck(path="/healthz", fall=1, rise=1))
    before = time.monotonic()
    mon.probe_done(b, False, "no answer", time.monotonic())
    assert b.ejected
    mon.probe_done(b, True, "HTTP 200", before)  # held by a stopped process, answered on resume
    assert b.ejected
    mon.probe_done(b, True, "HTTP 200", time.monotonic())
    assert not b.ejected


def test_failed_requests_eject_and_an_answer_resets_the_count() -> None:
    b = BackendHealth(("127.0.0.1", 1))
    mon, _ = monitor([b])
    mon.request_failed(b, "connection refused")  # no check yet: nothing counts
    assert b.fails == 0
    mon.configure(HealthCheck(max_failures=3))
    mon.request_failed(b, "connection refused", count=2)
    mon.request_answered(b)
    mon.request_failed(b, "connection refused", count=2)
    assert not b.ejected
    mon.request_failed(b, "closed without answering")
    assert b.status() == "ejected: 3 requests in a row failed, last: closed without answering"


def test_a_check_that_ejects_nothing_brings_every_backend_back() -> None:
    backends = [BackendHealth(("127.0.0.1", p)) for p in (1, 2)]
    mon, changes = monitor(backends)
    mon.configure(HealthCheck(max_failures=1))
    mon.request_failed(backends[0], "x")
    mon.configure(HealthCheck(max_failures=1))  # equal: nothing changes
    assert backends[0].ejected
    mon.configure(HealthCheck(max_failures=0))
    assert not any(b.ejected for b in backends) and len(changes) == 2


def test_fail_open_only_when_every_weighted_backend_is_ejected() -> None:
    a, b = BackendHealth(("h", 1)), BackendHealth(("h", 2))
    a.ejected = True
    assert not fail_open([[a], [b]]) and serving([a, b], False) == [b]
    b.ejected = True
    assert fail_open([[a], [b]]) and serving([a, b], True) == [a, b]
    assert not fail_open([[], []])  # nothing to fail open to
    assert address_key(("::1", 80)) == "[::1]:80" and address_key(("10.0.0.1", 80)) == "10.0.0.1:80"


@asynccontextmanager
async def server(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[int]:
    srv = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()


def test_probe_verdicts(run: Any) -> None:
    async def body() -> None:
        backend = await TestBackend("A").start()
        try:
            assert await probe_http(backend.address, "/healthz", 1) == (True, "HTTP 200")
            assert await probe_http(backend.address, "/status?code=302", 1) == (True, "HTTP 302")
            assert await probe_http(backend.address, "/status?code=404", 1) == (False, "HTTP 404")
            backend.healthy = False
            assert await probe_http(backend.address, "/healthz", 1) == (False, "HTTP 503")
            assert await probe_http(backend.address, "*", 1, method="OPTIONS", any_status=True) == (True, "HTTP 200")
            assert await probe_http(backend.address, "/sleep?s=2", 0.2) == (False, "no answer within 0.2 s")
            assert backend.probes == 2 and backend.requests == 4
        finally:
            await backend.stop()
        assert await probe_http(("127.0.0.1", free_port()), "/", 1) == (False, "connection refused")

        async def hang_up(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"SSH-2.0-OpenSSH\r\n")
            w.close()

        async with server(hang_up) as port:
            assert await probe_http(("127.0.0.1", port), "/", 1) == (False, "closed without answering")
        async with server(garbage) as port:
            ok, why = await probe_http(("127.0.0.1", port), "/", 1)
            assert not ok and why.startswith("not an HTTP answer")

    run(body)
