"""The builtin router against real sockets on 127.0.0.1: backends are in-process h11 servers.

What every router does (weights, pools, drains, stats, health) is in tests/contract/; here is what
is the builtin proxy's own: HTTP framing, streaming, headers, retries and timeouts.
Every test runs under both the default asyncio loop and uvloop (the agent uses uvloop if present).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ingot.routers.base import ClientPolicy
from ingot.routers.builtin import BuiltinRouter
from ingot.routers.testing import TestBackend, blob_chunks, serving
from tests.support.routers import run

__all__ = ["run"]  # the fixture

@asynccontextmanager
async def routed(
    pools: dict[str, list[TestBackend]], weights: dict[str, int], **router_options: Any
) -> AsyncIterator[tuple[BuiltinRouter, str]]:
    """Backends started, a router over them with `weights`; yields (router, base URL)."""
    router = BuiltinRouter(("127.0.0.1", 0), name="test", **router_options)
    async with serving(router, pools, weights) as base:
        yield router, base


def client(base: str, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=10.0, **options)


# ---- raw HTTP, for what httpx will not send -------------------------------------------------------


async def raw_connect(router: BuiltinRouter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*router.listen_address)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response, framed by hand (independently of the router's parser)."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status < 200 or head or status in (204, 304):
        return status, headers, b""
    if "chunked" in headers.get("transfer-encoding", ""):
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await reader.read()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2.0) == b""
    except ConnectionError:
        return True


# ---- streaming and keep-alive -----------------------------------------------------------------------


def test_chunked_bodies_stream_intact_both_ways(run: Any) -> None:
    size = 5 * 1024 * 1024 + 17

    async def upload() -> AsyncIterator[bytes]:
        for piece in blob_chunks(size, "up"):
            yield piece

    async def body() -> None:
        expected_up = hashlib.sha256(b"".join(blob_chunks(size, "up"))).hexdigest()
        expected_down = hashlib.sha256(b"".join(blob_chunks(size, "down"))).hexdigest()
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (_, base), client(base) as http:
            sent = await http.post("/sha256", content=upload())
            assert sent.status_code == 200
            assert sent.request.headers["transfer-encoding"] == "chunked"
            assert sent.json() == {"sha256": expected_up, "length": size}

            digest, received = hashlib.sha256(), 0
            async with http.stream("GET", f"/blob?size={size}&seed=down") as response:
                assert response.headers["transfer-encoding"] == "chunked"
                async for piece in response.aiter_raw():
                    digest.update(piece)
                    received += len(piece)
            assert (received, digest.hexdigest()) == (size, expected_down)

            fixed = b"x" * (3 * 1024 * 1024)
            sent = await http.post("/sha256", content=fixed)  # Content-Length framing
            assert sent.json() == {"sha256": hashlib.sha256(fixed).hexdigest(), "length": len(fixed)}

    run(body)


def test_keep_alive_reuses_upstream_connections(run: Any) -> None:
    async def body() -> None:
        backend = TestBackend("A-1")
        async with routed({"A": [backend]}, {"A": 1}) as (_, base), client(base) as http:
            for _ in range(100):
                assert (await http.get("/")).status_code == 200
        assert backend.requests == 100
        assert backend.connections <= 2

    run(body)


def test_close_delimited_response_is_forwarded_and_client_closed(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(b"GET /close-delimited HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, payload = await read_response(reader)
            writer.close()
        assert (status, payload) == (200, b"A-1")
        assert headers["connection"] == "close"

    run(body)


def test_head_204_and_http10_keep_framing_right(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = await read_response(reader, head=True)
            assert (status, headers["content-length"]) == (200, "3")
            writer.write(b"GET /status?code=204 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, payload = await read_response(reader)
            assert (status, payload) == (204, b"")
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # same connection still in sync
            assert (await read_response(reader))[2] == b"A-1"
            writer.close()

            reader, writer = await raw_connect(router)
            writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, payload = await read_response(reader)
            assert (status, payload, headers["connection"]) == (200, b"A-1", "keep-alive")
            writer.write(b"GET /blob?size=1000 HTTP/1.0\r\n\r\n")  # chunked upstream, 1.0 client
            status, headers, payload = await read_response(reader)
            assert "transfer-encoding" not in headers and len(payload) == 1000
            assert await closed_by_peer(reader)
            writer.close()

            reader, writer = await raw_connect(router)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, headers, payload = await read_response(reader)
            assert (status, payload, headers["connection"]) == (200, b"A-1", "close")
            assert await closed_by_peer(reader)
            writer.close()

    run(body)


def test_pipelined_requests_are_answered_in_order(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(
                b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            first, second, third = [await read_response(reader) for _ in range(3)]
            writer.close()
        assert first[2] == b"A-1"
        assert json.loads(second[2])["sha256"] == hashlib.sha256(b"abc").hexdigest()
        assert third[2].startswith(b"[")

    run(body)


def test_expect_100_continue_is_answered(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await read_response(reader)
            assert interim[0] == 100
            writer.write(b"hello")
            status, _, payload = await read_response(reader)
            writer.close()
        assert status == 200
        assert json.loads(payload) == {"sha256": hashlib.sha256(b"hello").hexdigest(), "length": 5}

    run(body)


# ---- headers ----------------------------------------------------------------------------------------


def test_each_request_on_a_keep_alive_connection_gets_its_own_head(run: Any) -> None:
    """A connection's repeated headers are rewritten once and remembered (headers.request_head_for_backend): a
    later request with other headers, or the same ones in HTTP/1.0, must not get the remembered rewrite."""
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)

            async def seen(request: bytes) -> tuple[dict[str, str], dict[str, str]]:
                writer.write(request)
                status, response_headers, payload = await read_response(reader)
                assert status == 200
                return response_headers, {name.lower(): value for name, value in json.loads(payload)}

            one = b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX-Kept: 1\r\n\r\n"
            for _ in range(3):  # the second and third from the memo
                _, backend = await seen(one)
                assert (backend["host"], backend["x-forwarded-host"], backend["x-kept"]) == ("a.example",) * 2 + ("1",)
            _, backend = await seen(b"GET /headers HTTP/1.1\r\nHost: b.example\r\n\r\n")
            assert (backend["host"], backend["x-forwarded-host"]) == ("b.example", "b.example")
            assert "x-kept" not in backend
            # The same headers as the last request, in HTTP/1.0: no keep-alive, a 1.0 answer framed for it.
            writer.write(b"GET /blob?size=1000 HTTP/1.0\r\nHost: b.example\r\n\r\n")
            status, response_headers, payload = await read_response(reader)
            assert status == 200 and "transfer-encoding" not in response_headers and len(payload) == 1000
            assert await closed_by_peer(reader)
            writer.close()

    run(body)


def test_each_response_on_a_pooled_connection_gets_its_own_head(run: Any) -> None:
    """A backend connection's repeated response head is rewritten once and remembered (Exchange.response_head):
    the same head answering a HEAD, an HTTP/1.0 client or a client that asked to close must still be framed and
    closed for that exchange, not as the remembered one was."""
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            for _ in range(3):  # the second and third from the memo, on the one pooled backend connection
                writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, payload = await read_response(reader)
                assert (status, payload, headers["x-ingot-release"]) == (200, b"A-1", "A")
                assert "connection" not in headers
            writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = await read_response(reader, head=True)
            assert (status, headers["content-length"]) == (200, "3")
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # in sync: the HEAD's answer had no body
            assert (await read_response(reader))[2] == b"A-1"
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, headers, payload = await read_response(reader)
            assert (status, payload, headers["connection"]) == (200, b"A-1", "close")
            assert await closed_by_peer(reader)
            writer.close()

            reader, writer = await raw_connect(router)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[2] == b"A-1"
            writer.write(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")  # the same backend head, for a 1.0 client
            status, headers, payload = await read_response(reader)
            assert (status, payload, headers["connection"]) == (200, b"A-1", "close")
            assert await closed_by_peer(reader)
            writer.close()

    run(body)


def test_a_remembered_chunked_head_is_not_reused_for_an_http10_client_asking_to_keep_alive(run: Any) -> None:
    """The memo's key holds the client's HTTP version: a 1.0 client (even one sending `Connection: keep-alive`)
    must never get the chunked framing remembered from 1.1 answers on the same backend connection."""
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            wanted = b"".join(blob_chunks(3000, "m"))
            reader, writer = await raw_connect(router)
            for _ in range(2):
                writer.write(b"GET /blob?size=3000&seed=m HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, payload = await read_response(reader)
                assert (status, headers.get("transfer-encoding"), payload) == (200, "chunked", wanted)
            writer.close()
            reader, writer = await raw_connect(router)
            writer.write(b"GET /blob?size=3000&seed=m HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
            status, headers, payload = await read_response(reader)
            writer.close()
            assert status == 200 and "chunked" not in headers.get("transfer-encoding", ""), headers
            assert payload == wanted  # the bytes themselves, not chunk framing

    run(body)


def test_forwarded_headers_added_and_hop_by_hop_stripped(run: Any) -> None:
    async def body() -> None:
        # From a trusted proxy, the client's X-Forwarded-For is kept (tests/security: from others it is not).
        trusted = ClientPolicy(trusted_proxies=("127.0.0.0/8",))
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}, clients=trusted) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(
                b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                b"TE: trailers\r\nProxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
            )
            status, response_headers, payload = await read_response(reader)
            writer.close()
        assert status == 200
        assert response_headers["x-ingot-release"] == "A"
        seen = {name.lower(): value for name, value in json.loads(payload)}
        assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "shop.example"
        assert seen["host"] == "shop.example"
        assert seen["x-kept"] == "yes"
        for hop in ("x-secret", "keep-alive", "te", "proxy-authorization", "upgrade", "connection"):
            assert hop not in seen, hop

    run(body)


def test_httpx_sees_x_forwarded_for(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (_, base), client(base) as http:
            seen = dict((await http.get("/headers")).json())
        assert seen["x-forwarded-for"] == "127.0.0.1"

    run(body)


# ---- failures -----------------------------------------------------------------------------------




@asynccontextmanager
async def accepts_then_closes() -> AsyncIterator[tuple[str, int]]:
    """A port that accepts connections and closes them unanswered: what a container engine's port
    forwarder does for a container that just died."""
    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_a_backend_hanging_up_on_fresh_connections_is_skipped_for_idempotent_requests(run: Any) -> None:
    async def body() -> None:
        alive = TestBackend("A-1")
        async with (accepts_then_closes() as dying, routed({"A": [alive]}, {"A": 1}) as (router, base),
                    client(base) as http):
            await router.set_backends("A", [dying, alive.address])
            # A POST may have been acted on before the hang-up: it is never sent twice, so one that
            # lands on the dying backend fails (the backends take turns).
            posts = [(await http.post("/sha256", content=b"x")).status_code for _ in range(4)]
            assert 502 in posts and 200 in posts
            errors = router.stats()["A"].errors_5xx
            statuses = [(await http.get("/")).status_code for _ in range(20)]
            assert statuses == [200] * 20
            assert router.stats()["A"].errors_5xx == errors

    run(body)



def test_reused_connection_closed_by_the_backend_is_retried(run: Any) -> None:
    async def body() -> None:
        # Closes every keep-alive connection when its second request arrives, unanswered.
        racy = TestBackend("A-1", close_reused=1.0)
        async with routed({"A": [racy]}, {"A": 1}) as (router, base), client(base) as http:
            for i in range(10):
                assert (await http.get("/")).status_code == 200
                sent = await http.post("/sha256", content=b"payload-%d" % i)
                assert sent.json()["sha256"] == hashlib.sha256(b"payload-%d" % i).hexdigest()
            assert router.stats()["A"].errors_5xx == 0
        assert racy.requests == 20
        assert racy.connections >= 19  # every reuse failed and was replayed on a fresh connection

    run(body)


def test_upstream_read_timeout_answers_504(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}, read_timeout=0.3) as (router, base):
            async with client(base) as http:
                response = await http.get("/sleep?s=3")
            assert response.status_code == 504
            assert router.stats()["A"].errors_5xx == 1

    run(body)


def test_answer_before_the_body_ended_closes_cleanly(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 0}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (503, "close")
            assert await closed_by_peer(reader)  # shut down at once, while the rest is read and dropped
            writer.close()

    run(body)


def test_garbage_and_huge_heads_are_rejected(run: Any) -> None:
    async def body() -> None:
        async with routed({"A": [TestBackend("A-1")]}, {"A": 1}) as (router, _):
            reader, writer = await raw_connect(router)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            assert (await read_response(reader))[0] == 400
            writer.close()
            reader, writer = await raw_connect(router)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
            assert (await read_response(reader))[0] == 431
            writer.close()

    run(body)
