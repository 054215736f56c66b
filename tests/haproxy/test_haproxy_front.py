"""The edge's shared listeners on haproxy (`HAProxyFront`) against a real haproxy.

What every front promises (routing, 404, SNI, certificate changes, challenges, redirects, HSTS) is tested on
both fronts by tests/contract/test_front.py; here is what is HAProxy's own: its route table's order, h2 over
ALPN, reuse of backend connections, its haproxy started again after a death, and adoption by a new front.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingot.edge.front import Binding, Front, Route
from ingot.routers.base import ClientPolicy, Router
from ingot.routers.testing import TestBackend
from tests.support.routers import haproxy_bin, kill_haproxy_of, runner

__all__ = ["haproxy_bin"]

FRONT_KINDS = ["haproxy"]
MakeFront = Callable[[], Front]


@pytest.fixture(params=FRONT_KINDS)
def make_front(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeFront]:
    haproxy: str = request.getfixturevalue("haproxy_bin")
    workdirs: list[Path] = []

    def make() -> Front:
        from ingot.edge.haproxy_front import HAProxyFront

        workdirs.append(tmp_path / f"front{len(workdirs)}")
        return HAProxyFront(workdirs[-1], http=("127.0.0.1", 0), https=("127.0.0.1", 0), haproxy=haproxy,
                            backends=6, slots=4)

    yield make
    for workdir in workdirs:
        kill_haproxy_of(workdir)


def run(body: Callable[[], Any]) -> Any:
    return runner("asyncio")(body)


def certificate(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `host` (exact or *.domain): (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def binding(host: str, router_id: str, path: str = "/", **options: Any) -> Binding:
    return Binding(Route(host=host, path=path, **options), router_id, owner=f"/p/{router_id}", name=router_id)


@asynccontextmanager
async def fronted(make_front: MakeFront, sites: dict[str, str]) -> AsyncIterator[tuple[Front, dict[str, Router]]]:
    """A started front and one started router per site name, each over one TestBackend answering its name."""
    front = make_front()
    await front.start()
    backends = {name: TestBackend(name) for name in sites}
    routers: dict[str, Router] = {}
    try:
        for name, backend in backends.items():
            await backend.start()
            routers[name] = front.router(name, name, ClientPolicy())
            await routers[name].start()
            await routers[name].set_backends("r1", [backend.address])
            await routers[name].set_weights({"r1": 1})
        yield front, routers
    finally:
        await front.stop()
        for backend in backends.values():
            await backend.stop()


async def get(front: Front, host: str, path: str = "/") -> httpx.Response:
    address = front.http_address
    assert address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        return await http.get(f"http://{address[0]}:{address[1]}{path}", headers={"Host": host})


def tls_context(*trusted: bytes, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata="".join(pem.decode() for pem in trusted))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


async def tls_open(front: Front, sni: str, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = front.https_address
    assert address is not None
    return await asyncio.open_connection(address[0], address[1], ssl=ctx, server_hostname=sni)


async def tls_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                      path: str = "/") -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head.split("\r\n")[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def peer_cert(writer: asyncio.StreamWriter) -> bytes:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode()


# ---- routing ----------------------------------------------------------------------------------------


def test_the_haproxy_route_table_orders_hosts_then_paths_and_closes_each_host() -> None:
    import re

    from ingot.edge.haproxy_front import _cli_word, route_entries

    entries = route_entries([binding("*.a.com", "w", "/x"), binding("app.a.com", "e", "/api/"),
                             binding("*.b.a.com", "d"), binding("app.a.com", "e2"), binding("x.test", "gone")],
                            {"w": "b1", "e": "b2", "d": "b3", "e2": "b4"})
    assert entries == [
        (r"^app\.a\.com/api/", "b2|1|"), (r"^app\.a\.com/", "b4|1|"),  # exact hosts first, longest path first
        (r"^x\.test/", "404|0|"),  # a router the front does not have: 404, never another site
        (r"^[^/]+\.b\.a\.com/", "b3|1|"),  # then wildcards, the longest suffix first
        (r"^[^/]+\.a\.com/x/", "b1|1|"), (r"^[^/]+\.a\.com/", "404|0|"),  # a host without "/" ends in a 404
    ]
    assert re.match(entries[0][0], "app.a.com/api/v1/") and not re.match(entries[0][0], "app.a.com/apix/")
    assert _cli_word(r"^a\.b c;d") == r"^a\\.b\ c\;d"
    with pytest.raises(ValueError, match="host"):
        route_entries([binding("bad host", "w")], {})



# ---- HAProxy's own --------------------------------------------------------------------------------------


def test_haproxy_front_routers_reuse_backend_connections(make_front: MakeFront) -> None:
    async def body() -> None:
        from ingot.routers.haproxy import parse_stat

        async with fronted(make_front, {"app": ""}) as (front, routers):
            await front.set_table([binding("127.0.0.1", "app", tls="off")])
            address = front.http_address
            assert address is not None
            wrk = shutil.which("wrk")  # provisioned by scripts/test
            assert wrk, "wrk is needed for load from another process"
            proc = await asyncio.create_subprocess_exec(wrk, "-t1", "-c8", "-d1s", f"http://{address[0]}:{address[1]}/",
                                                        stdout=asyncio.subprocess.DEVNULL)
            assert await proc.wait() == 0
            router: Any = routers["app"]
            rows = parse_stat(await router.api.run(f"show stat {router.backend} 4 -1"))
            used = [rows[name] for name in await router.placed()]
            requests, connects = sum(r["req_tot"] for r in used), sum(r["connect"] for r in used)
            assert requests >= 500 and sum(r["reuse"] for r in used) > 0, used
            assert connects * 10 < requests, (connects, requests)
            assert (await router.refresh())["r1"].requests >= requests

    run(body)


def test_a_haproxy_that_dies_under_the_front_is_started_again_with_everything(make_front: MakeFront) -> None:
    async def body() -> None:
        import os
        import signal

        from tests.support.switch_load import wait_until

        async with fronted(make_front, {"app": ""}) as (front, _):
            cert, key = certificate("app.test")
            await front.set_certificate("app.test", cert, key)
            await front.set_table([binding("app.test", "app", redirect=False)])
            front.challenges["tok"] = "tok.auth"
            pid = getattr(front, "pid", None)
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)  # a crash or an OOM kill of haproxy (ours: started by this front)

            async def serves() -> bool:
                try:
                    answer = await get(front, "app.test")
                except httpx.HTTPError:
                    return False
                return answer.status_code == 200 and answer.headers.get("x-ingot-release") == "r1"

            await wait_until(serves, "the front to serve again", timeout=15)
            assert getattr(front, "pid", None) not in (None, pid)
            assert (await get(front, "x", "/.well-known/acme-challenge/tok")).text == "tok.auth"
            reader, writer = await tls_open(front, "app.test", tls_context(cert))
            assert (await tls_request(reader, writer, "app.test"))[2] == b"app"
            writer.close()

    run(body)


def test_a_restarted_edge_adopts_the_fronts_haproxy_with_its_routes_servers_and_certificates(
        make_front: MakeFront) -> None:
    async def body() -> None:
        from ingot.edge.haproxy_front import HAProxyFront

        backend, extra = TestBackend("app"), TestBackend("app-2")
        await backend.start()
        await extra.start()
        first: Any = make_front()
        second: Any = None
        try:
            await first.start()
            router = first.router("app", "app", ClientPolicy())
            await router.start()
            await router.set_backends("r1", [backend.address])
            await router.set_weights({"r1": 1})
            cert, key = certificate("app.test")
            await first.set_certificate("app.test", cert, key)
            await first.set_table([binding("app.test", "app", redirect=False)])
            pid = first.pid
            for task in (first.process._poller, router._poller):
                task.cancel()  # the edge dies here: haproxy is left running, nobody stops it
            second = HAProxyFront(first.workdir, http=first.http_address, https=first.https_address,
                                  haproxy=first.haproxy, backends=6, slots=4)
            again = second.router("app", "app", ClientPolicy())
            await again.set_backends("r1", [backend.address, extra.address])  # the new intent: one more
            await again.set_weights({"r1": 1})
            await second.start()
            await again.start()
            assert second.pid == pid  # the same haproxy, not a new one
            assert again.backend == router.backend
            await second.set_table([binding("app.test", "app", redirect=False)])
            names = {(await get(second, "app.test")).text for _ in range(12)}
            assert names == {"app", "app-2"}
            assert {r for r, _ in (await again.placed()).values()} == {"r1"} and len(await again.placed()) == 2
            reader, writer = await tls_open(second, "app.test", tls_context(cert))  # its certificate kept
            assert (await tls_request(reader, writer, "app.test"))[2] in (b"app", b"app-2")
            writer.close()
            renewed = certificate("app.test")
            await second.set_certificate("app.test", *renewed)  # known as loaded: replaced, not added twice
            reader, writer = await tls_open(second, "app.test", tls_context(renewed[0]))
            assert peer_cert(writer) == renewed[0]
            writer.close()
        finally:
            await (second or first).stop()
            await backend.stop()
            await extra.stop()

    run(body)
