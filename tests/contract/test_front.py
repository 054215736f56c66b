"""What every `Front` (ingot.edge.front) promises, on each implementation (tests/contract/front_kits.py):
routing by host and path, 404 for what no route claims, SNI certificates (and none for unknown
names), certificates replaced without dropping connections, ACME HTTP-01 answers, redirect and HSTS."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ingot.edge.front import Binding, Front, Route
from ingot.routers.base import ClientPolicy, Router
from ingot.routers.testing import TestBackend
from tests.contract.front_kits import FRONT_KINDS, new_front
from tests.support.certs import TestCA, afetch

Run = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@pytest.fixture(params=FRONT_KINDS)
def front_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@asynccontextmanager
async def serving_front(kind: str, home: Path, sites: dict[str, list[Route]],
                        clients: ClientPolicy | None = None) -> AsyncIterator[tuple[Front, dict[str, Router]]]:
    """A started front with one router per site (a backend answering the site's name) bound to its routes;
    `clients`: the shared listeners' limits (the machine's settings)."""
    front = new_front(kind, home, clients)
    await front.start()
    backends: list[TestBackend] = []
    routers: dict[str, Router] = {}
    bindings = []
    try:
        for site, routes in sites.items():
            backend = await TestBackend(site).start()
            backends.append(backend)
            router = front.router(f"id-{site}", f"p/{site}", ClientPolicy())
            await router.start()
            await router.set_backends("r1", [backend.address])
            await router.set_weights({"r1": 1})
            routers[site] = router
            bindings += [Binding(route, f"id-{site}", owner=f"/state/{site}", name=f"p/{site}") for route in routes]
        await front.set_table(bindings)
        yield front, routers
    finally:
        for router in routers.values():
            await router.stop()
        await front.stop()
        for backend in backends:
            await backend.stop()


def _off(host: str, path: str = "/") -> Route:
    return Route(host=host, path=path, tls="off")


def test_routes_by_host_and_longest_path_and_404_otherwise(run: Run, front_kind: str, tmp_path: Path) -> None:
    async def body() -> None:
        sites = {"app": [_off("app.example.com")], "api": [_off("app.example.com", "/api")],
                 "wild": [_off("*.example.com")], "deep": [_off("*.deep.example.com")],
                 "docs": [_off("only.example.org", "/docs/")]}
        async with serving_front(front_kind, tmp_path, sites) as (front, _):
            http = front.http_address
            assert http is not None
            assert (await afetch(http, "app.example.com", "/x")).body == b"app"
            assert (await afetch(http, "APP.example.com:80", "/api/v1")).body == b"api"
            assert (await afetch(http, "app.example.com", "/apix")).body == b"app"
            assert (await afetch(http, "other.example.com", "/")).body == b"wild"
            assert (await afetch(http, "z.deep.example.com", "/")).body == b"deep"  # the longest suffix wins
            assert (await afetch(http, "example.com", "/")).status == 404  # *.example.com is not example.com
            assert (await afetch(http, "only.example.org", "/docs")).body == b"docs"
            assert (await afetch(http, "only.example.org", "/")).status == 404  # no route for that path
            missing = await afetch(http, "nothing.test", "/")
            assert missing.status == 404 and b"no site" in missing.body
            assert "x-ingot-release" not in missing.headers
            await front.set_table([])  # the whole table replaced at once
            assert (await afetch(http, "app.example.com", "/")).status == 404

    run(body)


def test_sni_selects_the_certificate_and_unknown_names_fail(run: Run, front_kind: str, tmp_path: Path,
                                                             ca: TestCA) -> None:
    async def body() -> None:
        sites = {"a": [Route("a.example.com", hsts=600)], "b": [Route("*.b.example.com")]}
        async with serving_front(front_kind, tmp_path, sites) as (front, _):
            https = front.https_address
            assert https is not None
            await front.set_certificate("a.example.com", *ca.issue("a.example.com"))
            await front.set_certificate("*.b.example.com", *ca.issue("*.b.example.com"))
            tls = ca.client_context()
            first = await afetch(https, "a.example.com", tls=tls)
            assert first.body == b"a" and first.headers["strict-transport-security"] == "max-age=600"
            assert (await afetch(https, "x.b.example.com", tls=tls)).body == b"b"
            forwarded = json.loads((await afetch(https, "a.example.com", "/headers", tls=tls)).body)
            assert ["x-forwarded-proto", "https"] in forwarded and ["x-forwarded-host", "a.example.com"] in forwarded
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await afetch(https, "unknown.example.com", tls=tls)
            # A name with a certificate but no route: the edge answers 404 itself.
            await front.set_certificate("lonely.example.com", *ca.issue("lonely.example.com"))
            assert (await afetch(https, "lonely.example.com", tls=tls)).status == 404
            await front.remove_certificate("lonely.example.com")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await afetch(https, "lonely.example.com", tls=tls)

    run(body)


def test_a_replaced_certificate_serves_new_handshakes_and_keeps_open_connections(
        run: Run, front_kind: str, tmp_path: Path, ca: TestCA) -> None:
    async def body() -> None:
        async with serving_front(front_kind, tmp_path, {"a": [Route("a.example.com")]}) as (front, _):
            https = front.https_address
            assert https is not None
            await front.set_certificate("a.example.com", *ca.issue("a.example.com", serial=1001))
            tls = ca.client_context()
            held = await _open_tls(https, "a.example.com", tls)
            pid = getattr(front, "pid", None)
            await front.set_certificate("a.example.com", *ca.issue("a.example.com", serial=1002))
            assert getattr(front, "pid", None) == pid  # HAProxy: the same process, never reloaded
            assert (await afetch(https, "a.example.com", tls=tls)).peer_serial == 1002
            # The connection opened before still works (in a thread: the loop under test must keep running).
            assert (await asyncio.to_thread(_again, held)).startswith(b"HTTP/1.1 200")

    run(body)


def _again(held: ssl.SSLSocket) -> bytes:
    with held:
        held.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        return _one_response(held)


def _one_response(sock: ssl.SSLSocket) -> bytes:
    """One whole response (head and Content-Length body), however the server splits it into records: what is
    left unread would be taken for the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


async def _open_tls(address: tuple[str, int], host: str, tls: ssl.SSLContext) -> ssl.SSLSocket:
    def connect() -> ssl.SSLSocket:
        sock = tls.wrap_socket(socket.create_connection(address, timeout=5), server_hostname=host)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert _one_response(sock).startswith(b"HTTP/1.1 200")
        return sock

    return await asyncio.to_thread(connect)


def test_plain_http_answers_challenges_and_redirects_tls_routes(run: Run, front_kind: str, tmp_path: Path) -> None:
    async def body() -> None:
        sites = {"a": [Route("a.example.com")], "b": [Route("b.example.com", redirect=False)],
                 "c": [_off("c.example.com")]}
        async with serving_front(front_kind, tmp_path, sites) as (front, _):
            http = front.http_address
            assert http is not None
            front.challenges["tok-1"] = "tok-1.thumbprint"
            for host in ("a.example.com", "c.example.com", "anything.invalid"):  # any host, before routing
                challenge = await afetch(http, host, "/.well-known/acme-challenge/tok-1")
                assert (challenge.status, challenge.body) == (200, b"tok-1.thumbprint")
            del front.challenges["tok-1"]
            assert (await afetch(http, "anything.invalid", "/.well-known/acme-challenge/tok-1")).status == 404
            moved = await afetch(http, "a.example.com", "/p/q?x=1")
            https = front.https_address
            port = "" if https is None or https[1] == 443 else f":{https[1]}"  # on 443 no port is named
            assert moved.status == 308 and moved.headers["location"] == f"https://a.example.com{port}/p/q?x=1"
            assert (await afetch(http, "b.example.com", "/")).body == b"b"  # redirect: false serves plain HTTP
            plain = await afetch(http, "c.example.com", "/")
            assert plain.body == b"c" and "strict-transport-security" not in plain.headers

    run(body)


def test_the_router_it_makes_keeps_the_router_contract(run: Run, front_kind: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with serving_front(front_kind, tmp_path, {"a": [_off("a.example.com")]}) as (front, routers):
            router = routers["a"]
            assert isinstance(router, Router)
            http = front.http_address
            assert http is not None
            for _ in range(3):
                assert (await afetch(http, "a.example.com")).status == 200
            refresh = getattr(router, "refresh", None)
            stats = await refresh() if refresh is not None else router.stats()
            assert stats["r1"].requests >= 3
            await router.set_weights({"r1": 0})
            assert (await afetch(http, "a.example.com")).status == 503

    run(body)



def test_each_route_names_its_release_or_not_by_its_own_release_header(run: Run, tmp_path: Path) -> None:
    """The built-in front: whether the release is named is the route's service's `router.release_header`,
    per request on one keep-alive connection. Whose X-Forwarded-For is kept is the listener's (the default:
    nobody's) whatever the route: README, routes. (The HAProxy front applies the defaults to every route.)"""
    async def body() -> None:
        import httpx

        front = new_front("builtin", tmp_path)
        await front.start()
        policies = {"quiet": ClientPolicy(trusted_proxies=("127.0.0.0/8",), release_header=False),
                    "plain": ClientPolicy()}
        routers: list[Router] = []
        backends: list[TestBackend] = []
        try:
            bindings = []
            for site, policy in policies.items():
                backend = await TestBackend(site).start()
                backends.append(backend)
                router = front.router(f"id-{site}", f"p/{site}", policy)
                await router.start()
                await router.set_backends("r1", [backend.address])
                await router.set_weights({"r1": 1})
                routers.append(router)
                bindings.append(Binding(_off(f"{site}.example.com"), f"id-{site}", owner="/s", name=f"p/{site}"))
            await front.set_table(bindings)
            assert front.http_address is not None
            host, port = front.http_address
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False, timeout=10,
                                         limits=httpx.Limits(max_connections=1)) as http:
                for site in ["quiet", "plain", "quiet", "plain"]:  # one connection, the host changing each time
                    response = await http.get("/headers", headers={"Host": f"{site}.example.com",
                                                                   "X-Forwarded-For": "203.0.113.9"})
                    assert response.headers["x-backend"] == site
                    assert ("x-ingot-release" in response.headers) == (site == "plain")
                    forwarded = [v for k, v in response.json() if k.lower() == "x-forwarded-for"]
                    assert forwarded == ["127.0.0.1"]  # the listener's trust: a route's own list is not applied
        finally:
            for router in routers:
                await router.stop()
            await front.stop()
            for backend in backends:
                await backend.stop()

    run(body)


def test_the_machines_listener_limits_apply_on_the_shared_listeners(run: Run, front_kind: str,
                                                                  tmp_path: Path) -> None:
    """settings.json's `head_timeout` and `trusted_proxies` (README, "Client limits with routes"): a client
    that never finishes its head is cut at the machine's deadline while another is served, and what stands in
    front of the edge (here loopback) has its X-Forwarded-For kept, on every route."""
    async def body() -> None:
        import time

        import httpx

        machine = ClientPolicy(head_timeout=1.0, trusted_proxies=("127.0.0.0/8",))
        async with serving_front(front_kind, tmp_path, {"app": [_off("app.example.com")]}, machine) as (front, _):
            assert front.http_address is not None
            host, port = front.http_address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Slow: ")  # never ends its head
            await writer.drain()
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False, timeout=10) as http:
                response = await http.get("/headers", headers={"Host": "app.example.com",
                                                               "X-Forwarded-For": "203.0.113.9"})
            assert response.headers["x-backend"] == "app"
            forwarded = [v for k, v in response.json() if k.lower() == "x-forwarded-for"]
            # A trusted peer's header kept, the peer added (haproxy adds it as a second field line: the same list).
            assert ", ".join(forwarded) == "203.0.113.9, 127.0.0.1", forwarded
            left = await asyncio.wait_for(reader.read(), timeout=8)  # the default's 10 s would pass this
            waited = time.monotonic() - started
            writer.close()
            assert waited < 5, waited
            assert left == b"" or left.startswith(b"HTTP/1.1 408"), left

    run(body)
