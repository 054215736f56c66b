"""Attacks on the API and the routers from clients that do not play by the rules (issue 10, point 6).

The routers are attacked in-process (built-in and HAProxy, with short deadlines) and through the whole stack
(a deployed environment, its router in the edge); the API through a real `ingot serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ingot.routers.base import ClientPolicy, Router
from ingot.routers.builtin import BuiltinRouter
from ingot.routers.testing import TestBackend, serving
from tests.support.api_server import Served, finished
from tests.support.api_server import serving as api_serving
from tests.support.harness import ExampleProject, make_example, poll, stop_everything
from tests.support.routers import haproxy_bin, kill_haproxy_of

__all__ = ["haproxy_bin"]

KINDS = ["builtin", "haproxy"]


# ---- routers, in-process ---------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def make_router(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[ClientPolicy], Router]]:
    workdirs: list[Path] = []
    haproxy: str | None = request.getfixturevalue("haproxy_bin") if request.param == "haproxy" else None

    def make(policy: ClientPolicy) -> Router:
        if haproxy is None:
            return BuiltinRouter(("127.0.0.1", 0), name="hostile", clients=policy)
        from ingot.routers.haproxy import HAProxyRouter

        workdirs.append(tmp_path / f"hap{len(workdirs)}")
        return HAProxyRouter(("127.0.0.1", 0), name="hostile", workdir=workdirs[-1], haproxy=haproxy, clients=policy)

    yield make
    for workdir in workdirs:
        kill_haproxy_of(workdir)


@contextlib.asynccontextmanager
async def routed(router: Router) -> AsyncIterator[tuple[str, int]]:
    async with serving(router, {"A": [TestBackend("A-1")]}, {"A": 1}):
        yield router.listen_address


async def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` raw and read until the router closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
                if b"\r\n\r\n" in data and b"Connection: close" not in data and b"connection: close" not in data:
                    break
    writer.close()
    return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0


def test_a_duplicate_malformed_or_missing_host_is_400(make_router: Callable[[ClientPolicy], Router]) -> None:
    async def body() -> None:
        async with routed(make_router(ClientPolicy())) as address:
            duplicate = await exchange(address, b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
            malformed = await exchange(address, b"GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n")
            missing = await exchange(address, b"GET / HTTP/1.1\r\nX-Other: 1\r\n\r\n")
            good = await exchange(address, b"GET / HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n")
        assert [status_of(r) for r in (duplicate, malformed, missing, good)] == [400, 400, 400, 200]

    asyncio.run(body())


def test_a_spoofed_x_forwarded_for_is_replaced_unless_the_peer_is_trusted(
        make_router: Callable[[ClientPolicy], Router]) -> None:
    spoof = b"GET /headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"

    def forwarded(raw: bytes) -> str:
        pairs = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        return ", ".join(v for n, v in pairs if n.lower() == "x-forwarded-for")

    async def body() -> tuple[str, str]:
        async with routed(make_router(ClientPolicy(trusted_proxies=("10.0.0.0/8",)))) as address:
            untrusted = await exchange(address, spoof)
        async with routed(make_router(ClientPolicy(trusted_proxies=("127.0.0.1/32",)))) as address:
            trusted = await exchange(address, spoof)
        return forwarded(untrusted), forwarded(trusted)

    untrusted, trusted = asyncio.run(body())
    assert untrusted == "127.0.0.1"  # the client's claim is gone: only the peer the router saw
    assert trusted == "6.6.6.6, 127.0.0.1"


def test_the_release_header_can_be_turned_off(make_router: Callable[[ClientPolicy], Router]) -> None:
    async def body() -> tuple[bytes, bytes]:
        request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        async with routed(make_router(ClientPolicy())) as address:
            named = await exchange(address, request)
        async with routed(make_router(ClientPolicy(release_header=False))) as address:
            unnamed = await exchange(address, request)
        return named, unnamed

    named, unnamed = asyncio.run(body())
    assert b"x-ingot-release: a" in named.lower()
    assert status_of(unnamed) == 200 and b"x-ingot-release" not in unnamed.lower()


def test_a_slowloris_client_is_cut_off_at_the_head_deadline_while_others_are_served(
        make_router: Callable[[ClientPolicy], Router]) -> None:
    deadline = 2.0

    async def slowloris(address: tuple[str, int]) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(*address)
        started = time.monotonic()
        got = b""
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 100:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                async with asyncio.timeout(1.0):  # one byte a second, unless the router has answered or closed
                    got = await reader.read(4096)
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        elapsed = time.monotonic() - started
        writer.close()
        return elapsed, got

    async def others(base: str, stop: asyncio.Event) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5) as http:
            while not stop.is_set():
                statuses.append((await http.get("/")).status_code)
                await asyncio.sleep(0.05)
        return statuses

    async def body() -> tuple[float, bytes, list[int]]:
        async with routed(make_router(ClientPolicy(head_timeout=deadline))) as (host, port):
            stop = asyncio.Event()
            served = asyncio.create_task(others(f"http://{host}:{port}", stop))
            elapsed, got = await slowloris((host, port))
            stop.set()
            return elapsed, got, await served

    elapsed, got, statuses = asyncio.run(body())
    assert deadline <= elapsed < deadline + 2.0, elapsed  # the sweep runs every 0.5 s; haproxy's timer is exact
    assert got == b"" or status_of(got) == 408
    assert len(statuses) > 10 and set(statuses) == {200}


def test_a_slow_body_is_cut_off_below_the_minimum_rate() -> None:
    """Built-in router only: haproxy has no minimum body rate (its inactivity timeout bounds a slow body)."""
    async def body() -> float:
        router = BuiltinRouter(("127.0.0.1", 0), clients=ClientPolicy(head_timeout=1.0, min_body_rate=100))
        async with routed(router) as address:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                for _ in range(20):  # 10 bytes a second, far below 100
                    writer.write(b"x" * 10)
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            if await reader.read(4096) == b"":
                                break
            writer.close()
            assert router.slow_bodies == 1  # type: ignore[attr-defined]
            return time.monotonic() - started

    elapsed = asyncio.run(body())
    assert elapsed < 6.0, elapsed  # 1 s of grace, then 1 s per 100 bytes received: cut after a few seconds


def test_connections_past_the_cap_are_answered_503_and_the_others_kept(
        make_router: Callable[[ClientPolicy], Router]) -> None:
    cap = 50

    async def body() -> tuple[list[int], int]:
        async with routed(make_router(ClientPolicy(max_connections=cap, head_timeout=30))) as address:
            idle = [await asyncio.open_connection(*address) for _ in range(cap)]
            await asyncio.sleep(0.2)  # the router has seen them all (accepting is asynchronous)
            over = [status_of(await exchange(address, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", 5)) for _ in range(3)]
            await asyncio.sleep(0.2)  # the refused ones are closed on the router's side too
            # One of the held connections is still served.
            reader, writer = idle[0]
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            for _, w in idle:
                w.close()
            return over, status_of(head)

    over, held = asyncio.run(body())
    assert over == [503, 503, 503]
    assert held == 200


# ---- the whole stack: a deployed environment, its router in the edge ----------------------------------------


@pytest.fixture
def deployed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ExampleProject]:
    router_yaml = getattr(request, "param", "")
    example = make_example(tmp_path, replicas=1)
    spec = example.root / "ingot.yaml"
    port = example.port
    spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{port}"}}',
                                             f'router: {{listen: "127.0.0.1:{port}"{router_yaml}}}'))
    assert router_yaml in spec.read_text()
    try:
        example.ingot("deploy", check=True)
        yield example
    finally:
        stop_everything(example)


def raise_own_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(wanted, hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _answer(url: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        status = httpx.get(url, timeout=5, trust_env=False).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.monotonic() - started


@pytest.mark.parametrize("deployed", [", head_timeout: 120s"], indirect=True)
def test_ten_thousand_idle_connections_do_not_stop_a_new_client(deployed: ExampleProject) -> None:
    """With the default cap, 10,000 idle connections (open, nothing sent, and kept open past the usual head
    deadline) leave room: new clients are served at once, every time."""
    example = deployed
    limit = raise_own_open_files(10_000 + 200)
    count = min(10_000, limit - 200)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.connect(("127.0.0.1", example.port))
            held.append(sock)
        poll(lambda: _answer(example.url)[0] == 200, timeout=30, what="a new client served")
        answers = [_answer(example.url) for _ in range(20)]
        assert [status for status, _ in answers] == [200] * 20
        assert max(took for _, took in answers) < 1.0, answers
    finally:
        for sock in held:
            sock.close()
    assert count == 10_000, f"only {count} connections could be opened here (RLIMIT_NOFILE {limit})"


@pytest.mark.parametrize("deployed", [", max_connections: 300, head_timeout: 120s"], indirect=True)
def test_past_the_cap_a_new_client_is_answered_503_at_once(deployed: ExampleProject) -> None:
    """At the cap a new client is told at once (503), not left hanging; one connection fewer and it is served."""
    example = deployed
    held = [socket.create_connection(("127.0.0.1", example.port)) for _ in range(300)]
    try:
        _, took = poll(lambda: (a := _answer(example.url))[0] == 503 and a, timeout=30, what="a 503 past the cap")
        assert took < 1.0, took
        for sock in held[:10]:
            sock.close()
        del held[:10]
        _, took = poll(lambda: (a := _answer(example.url))[0] == 200 and a, timeout=30, what="served under the cap")
        assert took < 1.0, took
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("deployed", [", head_timeout: 2s"], indirect=True)
def test_a_slowloris_client_of_a_deployed_router_is_cut_off(deployed: ExampleProject) -> None:
    example = deployed
    sock = socket.create_connection(("127.0.0.1", example.port))
    sock.settimeout(1.0)
    started = time.monotonic()
    got = b"x"
    for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 100:
        try:
            sock.send(bytes([byte]))
            got = sock.recv(4096)
            break
        except TimeoutError:
            assert example.get()["version"] == "1"  # the others are served meanwhile
        except ConnectionError:
            got = b""
            break
    elapsed = time.monotonic() - started
    sock.close()
    assert 2.0 <= elapsed < 4.0, elapsed
    assert got == b"" or status_of(got) == 408


# ---- the API -----------------------------------------------------------------------------------------------


@pytest.fixture
def served(deployed: ExampleProject) -> Iterator[tuple[ExampleProject, Served]]:
    with api_serving(deployed) as server:
        yield deployed, server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def latency_probe(url: str) -> Iterator[list[float]]:
    """GETs in a thread for the block's duration; yields their latencies (seconds) as they come."""
    seen: list[float] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(trust_env=False, timeout=10) as http:
            while not stop.is_set():
                started = time.monotonic()
                http.get(url).raise_for_status()
                seen.append(time.monotonic() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=15)


def post_huge(url: str, *, chunked: bool, token: str | None = None, size: int = 200 * 1024 * 1024) -> tuple[bytes, int]:
    """POST a `size` body as fast as the server takes it; the answer and how many body bytes were sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = [b"POST /api/v1/deploy HTTP/1.1", b"Host: x", b"Content-Type: application/json"]
    head.append(b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size)
    if token:
        head.append(b"Authorization: Bearer " + token.encode())
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
    piece = b"x" * (1024 * 1024)
    if chunked:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent = 0
    sock.setblocking(False)
    answer = b""
    deadline = time.monotonic() + 30
    while sent < size and time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            answer += sock.recv(65536)
        if answer:
            break
        try:
            sent += sock.send(piece)
        except BlockingIOError:
            time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in answer and (more := sock.recv(65536)):
            answer += more
    sock.close()
    return answer, sent


def test_a_200_mb_post_is_refused_at_once_with_memory_flat_and_the_router_unaffected(
        served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    pid = server.process.pid
    with latency_probe(example.url) as before:
        poll(lambda: len(before) >= 20, what="a baseline of router latencies")
    rss_before = rss_mb(pid)
    with latency_probe(example.url) as during:
        started = time.monotonic()
        declared, _ = post_huge(server.url, chunked=False)  # no token, Content-Length 200 MB
        anonymous, _ = post_huge(server.url, chunked=True)  # no token, no length
        authorised, sent = post_huge(server.url, chunked=True, token=server.token)  # a token, no length
        took = time.monotonic() - started
        poll(lambda: len(during) >= 20, what="router latencies during the attack")
    assert status_of(declared) == 413
    assert status_of(anonymous) == 401
    assert status_of(authorised) == 413
    assert sent < 50 * 1024 * 1024, sent  # cut at the 1 MiB cap (plus what the socket buffers held)
    assert took < 10, took
    grown = rss_mb(pid) - rss_before
    assert grown < 50, f"serve's RSS grew by {grown:.0f} MB"
    typical, attacked = statistics.median(before), statistics.median(during)
    print(f"refused in {took:.2f} s (3 posts), {sent / 2**20:.1f} MiB sent before the 413, RSS +{grown:.1f} MB, "
          f"router median {typical * 1000:.1f} ms before / {attacked * 1000:.1f} ms during")
    assert attacked < max(0.1, 5 * typical), (typical, attacked)


def test_failed_authentications_are_logged_without_the_token_and_slowed(
        served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    times = []
    with server.client("guess-0123456789") as wrong:
        for _ in range(6):
            started = time.monotonic()
            assert wrong.get("/api/v1/services").status_code == 401
            times.append(time.monotonic() - started)
    assert times[0] >= 0.09 and times[2] >= 0.19, times  # 0.1 s, then doubling up to --auth-delay (0.2 s here)
    assert times[5] < 1.5, times  # held at --auth-delay: without its ceiling the 6th waits 3.2 s
    with server.client() as right:
        started = time.monotonic()
        assert right.get("/api/v1/services").status_code == 200
        assert time.monotonic() - started < 2
    log = poll(lambda: (t := (example.root / "serve.log").read_text()).count("failed authentication") >= 4 and t,
               what="the failures in serve's log")
    assert "from 127.0.0.1: GET /api/v1/services (unknown token" in log
    assert "guess-0123456789" not in log


def test_a_read_token_cannot_deploy_and_the_actor_is_the_token_name(
        served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    reader = example.ingot("token", "add", "dashboard-ro", "--scope", "read", check=True).out.strip()
    deployer = example.ingot("token", "add", "ci", "--scope", "deploy", check=True).out.strip()
    listed = {t["name"]: t["scope"] for t in example.ingot("token", "list", "--json", check=True).json}
    assert listed == {"default": "admin", "dashboard-ro": "read", "ci": "deploy"}
    stored = (example.state / "keys" / "api-tokens.json").read_text()
    assert reader not in stored and deployer not in stored  # hashes only
    example.set_version("2")
    with server.client(reader) as ro, server.client(deployer) as ci:
        assert ro.get("/api/v1/services").status_code == 200
        refused = ro.post("/api/v1/deploy", json={})
        assert refused.status_code == 403 and "scope read" in refused.json()["detail"]
        assert example.get()["version"] == "1"
        deployed = ci.post("/api/v1/deploy", json={}, headers={"X-Ingot-Actor": "someone-else"})
        assert finished(ci, deployed)["state"] == "succeeded"
    assert example.get()["version"] == "2"
    assert example.ingot("history", "--json", check=True).json[0]["actor"] == "ci (api)"
    example.ingot("token", "revoke", "ci", check=True)
    with server.client(deployer) as gone:
        assert gone.get("/api/v1/services").status_code == 401


def test_docs_load_nothing_from_elsewhere(served: tuple[ExampleProject, Served]) -> None:
    _, server = served
    with server.client("") as anonymous:
        page = anonymous.get("/docs")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert "//" not in page.text.replace("<!doctype html>", "")  # every URL on the page is local
        assert anonymous.get("/docs/swagger-ui-bundle.js").status_code == 200
        assert anonymous.get("/docs/swagger-ui.css").status_code == 200
        assert anonymous.get("/docs/index.html").status_code == 404


def test_serve_speaks_tls_from_cert_and_key_files(deployed: ExampleProject, tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    bad = deployed.ingot("serve", "--tls-cert", str(cert_file))
    assert bad.code == 2 and "--tls-key" in bad.err
    with api_serving(deployed, "--tls-cert", str(cert_file), "--tls-key", str(key_file)) as server:
        assert server.url.startswith("https://")
        import ssl

        with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(cert_file)),
                          trust_env=False,
                          headers={"Authorization": f"Bearer {server.token}"}) as http:
            assert http.get("/api/v1/services").status_code == 200


def test_loopback_is_told_apart_from_the_network() -> None:
    from ingot.api.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")



def test_a_bad_trusted_proxy_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                             f'router: {{listen: "127.0.0.1:{example.port}", '
                                             'trusted_proxies: ["10.0.0.0/8", "not-a-network"]}'))
    result = example.ingot("validate")
    assert result.code == 2, result.out + result.err
    assert "trusted_proxies" in result.err and "'not-a-network' is not an address or CIDR" in result.err
