"""The builtin router: an asyncio HTTP/1.1 reverse proxy living inside the agent process.

Design notes (the why; the what is in the code):

- Protocol-level code (`asyncio.Protocol` + httptools callbacks) instead of streams: a request is a
  handful of C-parser callbacks and two socket writes, which is what makes tens of thousands of
  requests/s on one core possible in Python (bench/router_bench.py). Bytes produced while one
  chunk of input is parsed are collected in a list and written once after the parser returns,
  so a small request or response costs one send().
- Bodies are streamed in both directions as the parser hands them over; nothing buffers a whole
  body. Chunked bodies are re-chunked piece by piece (trailers are dropped, as `Trailer` is
  hop-by-hop here). Back-pressure: a full write buffer on one side pauses reading on the other.
- Request bytes are kept (up to `REPLAY_LIMIT`) until the backend's first response byte, so that
  a pooled keep-alive connection the backend closed at the same moment we reused it can be
  replayed once on a fresh connection. That race is the main source of errors during deploys.
- Pipelined client requests are queued and answered strictly one after the other.
- `Expect: 100-continue` is answered by the router itself (like nginx) and not forwarded.
- Upgrade/CONNECT are not proxied: such a request is forwarded as a plain request without its
  Upgrade header, and the client connection is closed after the response.
- `X-Forwarded-For` is appended to; `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced, since
  the router is the hop that knows what the client connected with.
- Timeouts: connect (`connect_timeout`), between bytes while waiting on a backend (`read_timeout`,
  504 before the response started, a cut connection after), idle pooled upstream connections
  (`upstream_idle_timeout`) and idle client keep-alive connections (`client_idle_timeout`),
  enforced by one sweeper task every `SWEEP_INTERVAL` rather than a timer per request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from ingot.errors import OperationFailed
from ingot.routers.base import LATENCY_WINDOW, Address, ReleaseStats

log = logging.getLogger(__name__)

# A backend that refused or timed out a connect gets no new requests for this long.
DOWN_FOR = 1.0
# Request bytes kept for a replay after a reused upstream connection turns out dead.
REPLAY_LIMIT = 64 * 1024
# Request body buffered while an upstream connect is pending before the client is paused.
CONNECT_BUFFER_LIMIT = 256 * 1024
# Request line + headers larger than this are answered with 431 (httptools has no limit itself).
MAX_HEAD_BYTES = 64 * 1024
# Distinct backends tried per request after connect failures before giving up with 502.
MAX_CONNECT_ATTEMPTS = 6
SWEEP_INTERVAL = 0.5
# How long a client that is answered before its request body ended may keep sending before close.
LINGER_SECONDS = 2.0

_perf = time.perf_counter

# Lower-cased request headers that need more than being copied through.
_REQ_SPECIAL = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
_RESP_SPECIAL = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-ingot-release",
    }
)
# Connection-header tokens that name no end-to-end header we would have to remove as well.
_PLAIN_CONNECTION_TOKENS = frozenset({b"", b"keep-alive", b"close", b"upgrade", b"te", b"trailer"})

# Pause reasons of a client connection (bit flags: reading resumes once all are cleared).
_P_UPSTREAM = 1  # the upstream write buffer is full
_P_PIPELINE = 2  # a pipelined request waits behind the active one
_P_BUFFER = 4  # the body buffered during an upstream connect is large

# Response framing towards the client.
_F_NONE, _F_LENGTH, _F_CHUNKED, _F_CLOSE = 0, 1, 2, 3

_STATUS_LINES: dict[int, bytes] = {}
_REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_ERROR_BODIES = {
    400: b"400 Bad Request: the request could not be parsed\n",
    431: b"431 Request Header Fields Too Large\n",
    502: b"502 Bad Gateway: no backend could serve the request\n",
    503: b"503 Service Unavailable: no release has weight\n",
    504: b"504 Gateway Timeout: the backend did not answer in time\n",
}


def install_fast_loop() -> bool:
    """Use uvloop's event loop policy if uvloop is importable; True if it was installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d " % status
    return line


def _extra_connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """Headers named in `Connection` are hop-by-hop too (RFC 9110 7.6.1)."""
    if value is None:
        return frozenset()
    tokens = {t.strip().lower() for t in value.split(b",")}
    return frozenset(tokens - _PLAIN_CONNECTION_TOKENS)


def _is_chunked(transfer_encoding: bytes) -> bool:
    return transfer_encoding.rstrip().lower().endswith(b"chunked")


class _StopParsing(Exception):
    """Raised from a parser callback to end a HEAD response at its headers (httptools cannot skip)."""


# --------------------------------------------------------------------------------------------------
# Pool state
# --------------------------------------------------------------------------------------------------


class _Backend:
    __slots__ = ("addr", "down_until", "host", "idle", "in_flight", "port", "retired")

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self.host, self.port = addr
        self.idle: list[_Upstream] = []  # LIFO: the most recently used connection is the likeliest alive
        self.in_flight = 0
        self.down_until = 0.0
        self.retired = False

    def retire(self) -> None:
        self.retired = True
        idle, self.idle = self.idle, []
        for up in idle:
            up.close()


class _Release:
    __slots__ = (
        "backends",
        "current",
        "errors",
        "header",
        "in_flight",
        "lat",
        "lat_i",
        "lat_n",
        "name",
        "requests",
        "rr",
        "waiters",
        "weight",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.header = b"X-Ingot-Release: " + name.encode("ascii") + b"\r\n"
        self.backends: list[_Backend] = []
        self.weight = 0
        self.current = 0  # smooth weighted round-robin state
        self.rr = 0
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.lat = [0.0] * LATENCY_WINDOW
        self.lat_i = 0
        self.lat_n = 0
        self.waiters: list[asyncio.Future[None]] = []

    def pick(self, tried: list[_Backend] | None, now: float) -> _Backend | None:
        """Least in flight among healthy backends, rotating the start so ties spread evenly.

        A backend marked down is still used when nothing healthy is left: a 1 s blackout of a
        single-instance release would be worse than one more connect attempt.
        """
        backends = self.backends
        n = len(backends)
        if n == 0:
            return None
        start = self.rr
        self.rr = start + 1 if start + 1 < n else 0
        best: _Backend | None = None
        fallback: _Backend | None = None
        for i in range(n):
            b = backends[(start + i) % n]
            if tried is not None and b in tried:
                continue
            if b.down_until > now:
                if fallback is None:
                    fallback = b
                continue
            if best is None or b.in_flight < best.in_flight:
                best = b
                if b.in_flight == 0:
                    break
        return best if best is not None else fallback

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.waiters:
            waiters, self.waiters = self.waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def record(self, status: int, seconds: float | None) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        if seconds is not None:
            i = self.lat_i
            self.lat[i] = seconds
            self.lat_i = i + 1 if i + 1 < LATENCY_WINDOW else 0
            if self.lat_n < LATENCY_WINDOW:
                self.lat_n += 1

    def snapshot(self) -> ReleaseStats:
        n = self.lat_n
        if n == 0:
            return ReleaseStats(self.requests, self.errors, self.in_flight)
        window = sorted(self.lat[:n])
        return ReleaseStats(
            requests=self.requests,
            errors_5xx=self.errors,
            in_flight=self.in_flight,
            p50_ms=_nearest_rank(window, 0.50) * 1000.0,
            p99_ms=_nearest_rank(window, 0.99) * 1000.0,
            mean_ms=sum(window) / n * 1000.0,
        )


def _nearest_rank(ordered: list[float], q: float) -> float:
    idx = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))
    return ordered[idx]


# --------------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------------


class BuiltinRouter:
    """Weighted HTTP/1.1 reverse proxy; see `ingot.routers.base.Router` for the contract.

    Must be used from one event loop (the one `start()` ran in); mutations take effect at once
    and atomically with respect to new requests. Releases and pools survive `stop()`/`start()`.

    - Release choice: smooth weighted round-robin over releases with weight > 0; within a
      release, the backend with the fewest requests in flight (ties rotate).
    - A connect failure marks the backend down for `DOWN_FOR` seconds and the request moves to
      another backend of its release, then of another weighted release (its in-flight count
      moves with it, so `drain` of the first release does not wait for it).
    - Counters: a request counts for the release that answered it; a 502 after every candidate
      failed counts for the release first chosen; 504 and responses cut off by the backend count
      as 5xx too. Requests whose client went away before the answer are not counted.
    - `drain` returns as soon as the in-flight count is 0 at some moment; callers move the weight
      away first. Draining an unknown (or removed) release returns True at once.
    """

    def __init__(
        self,
        listen: Address,
        *,
        name: str = "",
        connect_timeout: float = 2.0,
        upstream_idle_timeout: float = 30.0,
        read_timeout: float = 60.0,
        client_idle_timeout: float = 75.0,
    ) -> None:
        self.name = name
        self.connect_timeout = connect_timeout
        self.upstream_idle_timeout = upstream_idle_timeout
        self.read_timeout = read_timeout
        self.client_idle_timeout = client_idle_timeout
        self._listen = listen
        self._bound: Address | None = None
        self._releases: dict[str, _Release] = {}
        self._active: list[_Release] = []  # weight > 0, in the order weights were given
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[_Client] = set()
        self._upstreams: set[_Upstream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._host_header = b""
        # The loop's clock once started (cheap, and what timers use).
        self._now: Callable[[], float] = time.monotonic

    # ---- Router protocol ---------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        return self._bound if self._bound is not None else self._listen

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"router {self.name!r} is already started")
        loop = asyncio.get_running_loop()
        host, port = self._listen
        try:
            server = await loop.create_server(lambda: _Client(self), host, port, reuse_address=True, backlog=2048)
        except OSError as exc:
            raise self._bind_error(exc) from None
        self._loop = loop
        self._now = loop.time
        self._server = server
        self._stopping = False
        # Keep the configured host (callers compare addresses), but report the port actually bound.
        self._bound = (host, int(server.sockets[0].getsockname()[1]))
        self._host_header = f"{host}:{self._bound[1]}".encode("ascii")
        self._sweeper = loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client in list(self._clients):
            client.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for up in list(self._upstreams):
            up.close()
        for rel in self._releases.values():
            for b in rel.backends:
                b.idle.clear()
        if server is not None:
            await server.wait_closed()
        self._bound = None

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        rel = self._release(release)
        old: dict[Address, _Backend | None] = {b.addr: b for b in rel.backends}
        pool: list[_Backend] = []
        for host, port in addrs:
            addr = (str(host), int(port))
            if any(b.addr == addr for b in pool):
                continue
            kept = old.pop(addr, None)
            pool.append(kept if kept is not None else _Backend(addr))
        for gone in old.values():
            if gone is not None:
                gone.retire()
        rel.backends = pool
        rel.rr = 0

    async def set_weights(self, weights: dict[str, int]) -> None:
        for name, weight in weights.items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"weight of release {name!r} must be an integer >= 0, got {weight!r}")
        for name in weights:
            self._release(name)
        for rel in self._releases.values():
            rel.weight = weights.get(rel.name, 0)
            rel.current = 0
        self._active = [self._releases[n] for n in weights if weights[n] > 0]

    async def drain(self, release: str, timeout: float) -> bool:
        rel = self._releases.get(release)
        if rel is None or rel.in_flight == 0:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rel.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if fut in rel.waiters:
                rel.waiters.remove(fut)
        return True

    async def remove_release(self, release: str) -> None:
        rel = self._releases.pop(release, None)
        if rel is None:
            return
        for b in rel.backends:
            b.retire()
        self._active = [r for r in self._active if r is not rel]

    def stats(self) -> dict[str, ReleaseStats]:
        return {name: rel.snapshot() for name, rel in self._releases.items()}

    def weights(self) -> dict[str, int]:
        return {name: rel.weight for name, rel in self._releases.items()}

    # ---- helpers -----------------------------------------------------------------------------

    def _bind_error(self, exc: OSError) -> OperationFailed:
        host, port = self._listen
        label = f"router {self.name!r}" if self.name else "router"
        if exc.errno == errno.EADDRINUSE:
            return OperationFailed(
                f"{label} cannot listen on {host}:{port}: the address is already in use",
                details=[
                    "another process (or another router) is bound to it;",
                    "stop it or choose another `router.listen` address",
                ],
            )
        return OperationFailed(f"{label} cannot listen on {host}:{port}: {exc.strerror or exc}")

    def _release(self, name: str) -> _Release:
        rel = self._releases.get(name)
        if rel is None:
            if not name or not name.isascii() or not name.isprintable():
                raise ValueError(f"release id {name!r} cannot be used in a header")
            rel = self._releases[name] = _Release(name)
        return rel

    def _choose_release(self) -> _Release | None:
        """Smooth weighted round-robin (as nginx): exact proportions, no bursts."""
        active = self._active
        if len(active) == 1:
            return active[0]
        best: _Release | None = None
        total = 0
        for rel in active:
            rel.current += rel.weight
            total += rel.weight
            if best is None or rel.current > best.current:
                best = rel
        if best is not None:
            best.current -= total
        return best

    def _next_backend(self, ex: _Exchange) -> _Backend | None:
        """A backend of the exchange's release, else of any other weighted release."""
        now = self._now()
        rel = ex.release
        assert rel is not None
        b = rel.pick(ex.tried, now)
        if b is not None:
            return b
        for other in self._active:
            if other is rel:
                continue
            b = other.pick(ex.tried, now)
            if b is not None:
                rel.leave()
                other.enter()
                ex.release = other
                return b
        return None

    # ---- request dispatch --------------------------------------------------------------------

    def dispatch(self, ex: _Exchange) -> None:
        rel = self._choose_release()
        if rel is None:
            ex.respond_error(503, None)
            return
        ex.release = ex.chosen = rel
        rel.enter()
        self._attempt(ex, fresh=False)

    def _attempt(self, ex: _Exchange, *, fresh: bool) -> None:
        b = self._next_backend(ex)
        if b is None:
            ex.respond_error(502, ex.chosen)
            return
        ex.backend = b
        b.in_flight += 1
        if not fresh:
            idle = b.idle
            while idle:
                up = idle.pop()
                if up.transport is not None and not up.transport.is_closing():
                    ex.attach(up, reused=True)
                    return
        assert self._loop is not None
        task = self._loop.create_task(self._connect(ex, b))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, ex: _Exchange, b: _Backend) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, up = await self._loop.create_connection(lambda: _Upstream(self, b), b.host, b.port)
        except (OSError, TimeoutError) as exc:
            b.down_until = self._now() + DOWN_FOR
            log.debug("router %s: connect to %s:%s failed: %r", self.name, b.host, b.port, exc)
            if ex.backend is not b or ex.done:
                return
            ex.drop_backend()
            tried = ex.tried if ex.tried is not None else []
            tried.append(b)
            ex.tried = tried
            if len(tried) >= MAX_CONNECT_ATTEMPTS:
                ex.respond_error(502, ex.chosen)
            else:
                self._attempt(ex, fresh=False)
            return
        if ex.done or ex.backend is not b:
            self.release_conn(up)  # the client left meanwhile; the fresh connection is still good
            return
        ex.attach(up, reused=False)

    def release_conn(self, up: _Upstream) -> None:
        """Return a connection whose last exchange ended cleanly to its backend's idle pool."""
        b = up.backend
        if b.retired or self._stopping or up.transport is None or up.transport.is_closing():
            up.close()
            return
        up.idle_since = self._now()
        up.resume()
        b.idle.append(up)

    # ---- housekeeping ------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self._sweep(self._now())
            except Exception:  # pragma: no cover - a bug here must not stop the sweeping
                log.exception("router %s: sweep failed", self.name)

    def _sweep(self, now: float) -> None:
        for client in list(self._clients):
            client.check_timeouts(now)
        limit = now - self.upstream_idle_timeout
        for rel in self._releases.values():
            for b in rel.backends:
                idle = b.idle
                while idle and idle[0].idle_since < limit:
                    idle.pop(0).close()


# --------------------------------------------------------------------------------------------------
# One request/response exchange
# --------------------------------------------------------------------------------------------------


class _Exchange:
    __slots__ = (
        "backend",
        "chosen",
        "chunked",
        "client",
        "client_keep_alive",
        "done",
        "expect_continue",
        "fresh_retry_used",
        "http10",
        "is_head",
        "out",
        "pending",
        "release",
        "replayable",
        "req_done",
        "resp_framing",
        "resp_started",
        "retained",
        "router",
        "sent",
        "start",
        "status",
        "tried",
        "up",
    )

    def __init__(self, client: _Client, head: bytes, *, chunked: bool, http10: bool, keep_alive: bool) -> None:
        self.client = client
        self.router = client.router
        self.out: list[bytes] = [head]  # request bytes: sent ones stay while replayable
        self.sent = 0  # how many items of `out` the current upstream has been given
        self.retained = len(head)
        self.replayable = self.retained <= REPLAY_LIMIT
        self.pending = 0  # body bytes appended while no upstream is attached
        self.chunked = chunked
        self.http10 = http10
        self.client_keep_alive = keep_alive
        self.is_head = False
        self.expect_continue = False
        self.req_done = False
        self.done = False
        self.release: _Release | None = None
        self.chosen: _Release | None = None
        self.backend: _Backend | None = None
        self.up: _Upstream | None = None
        self.tried: list[_Backend] | None = None
        self.fresh_retry_used = False
        self.resp_started = False
        self.resp_framing = _F_NONE
        self.status = 0
        self.start = _perf()

    # ---- request side ------------------------------------------------------------------------

    def add_body(self, data: bytes) -> None:
        if self.done:
            return  # answered early; the rest of the body has nowhere to go
        out = self.out
        if self.chunked:
            out.append(b"%x\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        else:
            out.append(data)
        self._account(len(data))

    def end_body(self) -> None:
        self.req_done = True
        if self.chunked and not self.done:
            self.out.append(b"0\r\n\r\n")

    def _account(self, size: int) -> None:
        if self.replayable:
            self.retained += size
            if self.retained > REPLAY_LIMIT:
                self.replayable = False
        if self.up is None:
            self.pending += size
            if self.pending > CONNECT_BUFFER_LIMIT:
                self.client.pause(_P_BUFFER)

    def flush(self) -> None:
        """Give the attached upstream every request byte it has not seen yet, in one write."""
        up = self.up
        if up is None or up.transport is None:
            return
        out = self.out
        n = len(out)
        s = self.sent
        if s == n:
            return
        up.transport.write(out[s] if n - s == 1 else b"".join(out[s:]))
        if self.replayable:
            self.sent = n
        else:
            out.clear()
            self.sent = 0
        if self.pending:
            self.pending = 0
            self.client.resume(_P_BUFFER)

    def attach(self, up: _Upstream, *, reused: bool) -> None:
        self.up = up
        up.ex = self
        up.reused = reused
        up.got = False
        up.last = self.router._now()
        client = self.client
        if client.write_paused:
            up.pause()
        if not client.feeding:
            self.flush()  # else the client's data_received does, once with the body parsed so far

    def drop_backend(self) -> None:
        b = self.backend
        if b is not None:
            b.in_flight -= 1
            self.backend = None

    # ---- response side -----------------------------------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.resp_started = True
        if self.replayable:
            self.replayable = False  # nothing to replay once the backend answered
            del self.out[: self.sent]
            self.sent = 0
        head, framing, keep = _response_head(self, status, reason, headers)
        self.resp_framing = framing
        if not keep:
            self.client_keep_alive = False
        self.client.wbuf.append(head)

    def response_body(self, data: bytes) -> None:
        wbuf = self.client.wbuf
        if self.resp_framing == _F_CHUNKED:
            wbuf.append(b"%x\r\n" % len(data))
            wbuf.append(data)
            wbuf.append(b"\r\n")
        else:
            wbuf.append(data)

    def response_end(self) -> None:
        if self.resp_framing == _F_CHUNKED:
            self.client.wbuf.append(b"0\r\n\r\n")

    def response_done(self, up: _Upstream, upstream_keep_alive: bool) -> None:
        self.up = None
        up.ex = None
        if upstream_keep_alive and self.req_done and self.sent == len(self.out):
            self.router.release_conn(up)
        else:
            up.close()
        self.finish(self.status, self.release)

    def upstream_lost(self, up: _Upstream) -> None:
        """The upstream connection ended (EOF, reset, parse error) while this exchange used it."""
        self.up = None
        up.ex = None
        up.close()
        if not self.resp_started:
            if up.reused and not up.got and self.replayable and not self.fresh_retry_used:
                # The backend closed an idle keep-alive connection as we reused it: replay once.
                self.fresh_retry_used = True
                self.sent = 0
                self.drop_backend()
                self.router._attempt(self, fresh=True)
                return
            self.respond_error(502, self.chosen)
        elif self.resp_framing == _F_CLOSE:
            self.finish(self.status, self.release)  # the end of a close-delimited body
        else:
            # Cut off mid-body: the client must see a broken response, not a short one.
            self.client_keep_alive = False
            self.finish(502, self.release, latency=False)

    def timed_out(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.ex = None
            up.close()
        if self.resp_started:
            self.client_keep_alive = False
            self.finish(504, self.release, latency=False)
        else:
            self.respond_error(504, self.chosen)

    def respond_error(self, status: int, rel: _Release | None) -> None:
        if self.done:
            return
        body = _ERROR_BODIES[status]
        if not self.req_done:
            self.client_keep_alive = False  # the rest of the body is not read: close after answering
        self.status = status
        self.client.wbuf.append(
            b"".join(
                (
                    _status_line(status),
                    _REASONS[status],
                    b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
                    b"%d" % len(body),
                    b"\r\n",
                    _connection_header(self.http10, self.client_keep_alive),
                    b"\r\n",
                    body,
                )
            )
        )
        self.finish(status, rel)

    def finish(self, status: int, rel: _Release | None, *, latency: bool = True) -> None:
        if self.done:
            return
        self.done = True
        if rel is not None:
            rel.record(status, _perf() - self.start if latency else None)
        if self.release is not None:
            self.release.leave()
            self.release = None
        self.drop_backend()
        self.client.exchange_done(self)

    def abort(self) -> None:
        """The client went away: stop without answering."""
        if self.done:
            return
        self.done = True
        up = self.up
        if up is not None:
            self.up = None
            up.ex = None
            up.close()
        if self.release is not None:
            self.release.leave()
            self.release = None
        self.drop_backend()


def _connection_header(http10: bool, keep_alive: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def _response_head(
    ex: _Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, int, bool]:
    """The response head for the client, its body framing, and whether the client may keep alive."""
    parts = [_status_line(status), reason, b"\r\n"]
    te: bytes | None = None
    has_length = False
    connection: bytes | None = None
    drop: frozenset[bytes] = frozenset()
    for _ in range(2):  # a second pass only when Connection names end-to-end headers to remove
        del parts[3:]
        for name, value in headers:
            lname = name.lower()
            if lname in _RESP_SPECIAL or lname.startswith(b"proxy-"):
                if lname == b"content-length":
                    has_length = True
                    parts += (name, b": ", value, b"\r\n")
                elif lname == b"transfer-encoding":
                    te = value
                elif lname == b"connection":
                    connection = value if connection is None else connection + b"," + value
                continue
            if drop and lname in drop:
                continue
            parts += (name, b": ", value, b"\r\n")
        extra = _extra_connection_tokens(connection)
        if not extra or drop:
            break
        drop = extra
    # Answered before the whole request arrived: the client connection cannot be reused.
    keep = ex.client_keep_alive and ex.req_done
    if ex.is_head or status in (204, 304):
        framing = _F_NONE
        if te is not None and ex.is_head and not ex.http10:
            parts += (b"Transfer-Encoding: ", te, b"\r\n")
    elif te is not None and _is_chunked(te) and not ex.http10:
        framing = _F_CHUNKED
        parts += (b"Transfer-Encoding: ", te, b"\r\n")
    elif te is None and has_length:
        framing = _F_LENGTH
    else:
        # Ends when the backend closes (or HTTP/1.0 client of a chunked body): so must the client side.
        framing = _F_CLOSE
        keep = False
    parts.append(_connection_header(ex.http10, keep))
    assert ex.release is not None
    parts.append(ex.release.header)
    parts.append(b"\r\n")
    return b"".join(parts), framing, keep


# --------------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    __slots__ = (
        "closed",
        "eof",
        "feeding",
        "head_size",
        "headers",
        "last",
        "lingering",
        "parser",
        "parsing",
        "paused",
        "peer",
        "queue",
        "router",
        "transport",
        "upgraded",
        "url",
        "wbuf",
        "write_paused",
    )

    def __init__(self, router: BuiltinRouter) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Exchange] = deque()  # queue[0] is the exchange being answered
        self.parsing: _Exchange | None = None  # the exchange whose body is being read
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.wbuf: list[bytes] = []  # response bytes collected during one parse, written at once
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.eof = False
        self.feeding = False
        self.lingering = False
        self.upgraded = False
        self.peer = b"unknown"
        self.last = 0.0

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode("ascii")
        self.last = self.router._now()
        self.router._clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router._clients.discard(self)
        self._abort_queue()

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.upgraded:
            return  # discarded: the connection closes once the answer is out
        self.last = self.router._now()
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Bytes after an Upgrade/CONNECT head are not HTTP: answer the head, then close.
            self.upgraded = True
        except httptools.HttpParserError as exc:
            self.feeding = False
            self._bad_request(431 if isinstance(exc.__context__, _HeadTooLarge) else 400)
            return
        finally:
            self.feeding = False
        queue = self.queue
        if queue:
            queue[0].flush()
        if self.wbuf:
            self.flush()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.parsing is not None or self.lingering:
            return False  # a request cut short can never complete
        # A half-closed client may still wait for the answers to what it sent.
        return bool(self.queue)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.resume()

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url = url if not self.url else self.url + url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        http10 = parser.get_http_version() == "1.0"
        head, chunked, expect = _request_head(self, method, http10)
        ex = _Exchange(self, head, chunked=chunked, http10=http10, keep_alive=parser.should_keep_alive())
        ex.is_head = method == b"HEAD"
        ex.expect_continue = expect and not http10
        if parser.should_upgrade():
            ex.client_keep_alive = False
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._activate(ex)
        else:
            self.pause(_P_PIPELINE)  # answer in order; read on when it is this one's turn

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.add_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            ex.end_body()

    # ---- exchange life cycle -----------------------------------------------------------------

    def _activate(self, ex: _Exchange) -> None:
        if ex.expect_continue and not ex.req_done and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.router.dispatch(ex)

    def exchange_done(self, ex: _Exchange) -> None:
        """The answer to `ex` is complete (in `wbuf`): send it and go on with the next request."""
        if self.closed:
            return
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        self.resume(_P_UPSTREAM | _P_BUFFER)
        self.flush()
        if not ex.req_done:
            self._linger()
        elif not ex.client_keep_alive or self.upgraded or (self.eof and not queue):
            self.close()
        elif queue:
            if len(queue) == 1:
                self.resume(_P_PIPELINE)
            self._activate(queue[0])

    def flush(self) -> None:
        wbuf = self.wbuf
        if not wbuf:
            return
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
        wbuf.clear()

    def _bad_request(self, status: int) -> None:
        self.parsing = None
        if self.queue:
            self.close()  # mid-pipeline: an answer now would be out of order
            return
        ex = _Exchange(self, b"", chunked=False, http10=False, keep_alive=False)
        self.queue.append(ex)
        ex.respond_error(status, None)

    # ---- flow control and closing ------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _linger(self) -> None:
        """Close after answering before the request body was read, without losing the answer.

        Closing a socket with unread input makes the kernel send RST, which can destroy the
        response in flight; so shut down our side, read and drop input for a while, then close.
        """
        transport = self.transport
        if transport is None or self.closed or self.lingering:
            return
        self.lingering = True
        self.resume(_P_UPSTREAM | _P_BUFFER | _P_PIPELINE)
        self._abort_queue()
        if self.eof or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        assert self.router._loop is not None
        self.router._loop.call_later(LINGER_SECONDS, self.close)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            self.router._clients.discard(self)
            self._abort_queue()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def _abort_queue(self) -> None:
        queue, self.queue = self.queue, deque()
        for ex in queue:
            ex.abort()

    def check_timeouts(self, now: float) -> None:
        router = self.router
        if not self.queue:
            if now - self.last > router.client_idle_timeout and not self.lingering:
                self.close()
            return
        ex = self.queue[0]
        up = ex.up
        if up is not None and now - max(up.last, self.last) > router.read_timeout:
            ex.timed_out()


class _HeadTooLarge(Exception):
    pass


def _request_head(client: _Client, method: bytes, http10: bool) -> tuple[bytes, bool, bool]:
    """The request head for the backend; also whether the body is chunked and 100-continue expected."""
    headers = client.headers
    parts = [method, b" ", client.url, b" HTTP/1.1\r\n"]
    host: bytes | None = None
    xff: bytes | None = None
    te: bytes | None = None
    connection: bytes | None = None
    expect = False
    drop: frozenset[bytes] = frozenset()
    for _ in range(2):  # a second pass only when Connection names end-to-end headers to remove
        del parts[4:]
        for name, value in headers:
            lname = name.lower()
            if lname in _REQ_SPECIAL or lname.startswith(b"proxy-"):
                if lname == b"host":
                    host = value
                    parts += (name, b": ", value, b"\r\n")
                elif lname == b"content-length":
                    parts += (name, b": ", value, b"\r\n")
                elif lname == b"transfer-encoding":
                    te = value
                elif lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"connection":
                    connection = value if connection is None else connection + b"," + value
                elif lname == b"expect":
                    expect = value.lower() == b"100-continue"
                continue
            if drop and lname in drop:
                continue
            parts += (name, b": ", value, b"\r\n")
        extra = _extra_connection_tokens(connection)
        if not extra or drop:
            break
        drop = extra
        xff = te = connection = None
    if host is None:
        host = client.router._host_header
        parts += (b"Host: ", host, b"\r\n")
    chunked = te is not None and _is_chunked(te)
    if te is not None:
        parts += (b"Transfer-Encoding: ", te, b"\r\n")
    parts += (
        b"X-Forwarded-For: ",
        client.peer if xff is None else xff + b", " + client.peer,
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
        host,
        b"\r\n\r\n",
    )
    return b"".join(parts), chunked, expect


# --------------------------------------------------------------------------------------------------
# Upstream side
# --------------------------------------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    __slots__ = (
        "backend",
        "ex",
        "got",
        "head_only",
        "headers",
        "idle_since",
        "informational",
        "keep_alive",
        "last",
        "msg_done",
        "parser",
        "reading_paused",
        "reason",
        "reused",
        "router",
        "transport",
    )

    def __init__(self, router: BuiltinRouter, backend: _Backend) -> None:
        self.router = router
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: _Exchange | None = None
        self.got = False  # a response byte arrived for the current exchange
        self.reused = False
        self.msg_done = False
        self.keep_alive = False
        self.head_only = False
        self.informational = False
        self.reading_paused = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.idle_since = 0.0
        self.last = 0.0

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        self.router._upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router._upstreams.discard(self)
        self._forget()
        ex = self.ex
        if ex is not None:
            ex.upstream_lost(self)
        self.transport = None

    def eof_received(self) -> bool | None:
        self._forget()
        ex = self.ex
        if ex is not None:
            ex.upstream_lost(self)
        return False

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            self.close()  # bytes nobody asked for: the framing can no longer be trusted
            return
        self.got = True
        self.last = self.router._now()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.head_only:
                # A HEAD response ends at its headers; start the next response with a clean parser.
                self.head_only = False
                self.parser = httptools.HttpResponseParser(self)
                self.msg_done = True
                ex.response_end()
            elif self.msg_done:
                self.keep_alive = False  # bytes after a complete response: answer, but never reuse
            else:
                ex.client.flush()
                ex.upstream_lost(self)
                return
        client = ex.client
        if client.wbuf:
            client.flush()
        if self.msg_done:
            self.msg_done = False
            ex.response_done(self, self.keep_alive)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.pause(_P_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.resume(_P_UPSTREAM)

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.msg_done:
            raise _StopParsing  # a second response to one request
        self.headers = []
        self.informational = False

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        parser = self.parser
        status = parser.get_status_code()
        if status == 101:
            raise _StopParsing  # we never forward Upgrade, so a protocol switch is a broken backend
        if status < 200:
            self.informational = True
            self._forward_informational(ex, status)
            return
        self.keep_alive = parser.should_keep_alive()
        ex.response_head(status, self.reason, self.headers)
        if ex.is_head:
            self.head_only = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.msg_done = True
        ex = self.ex
        if ex is not None:
            ex.response_end()  # before the flush, so the last chunk shares the write

    def _forward_informational(self, ex: _Exchange, status: int) -> None:
        # 100 answers an Expect the router answered itself; HTTP/1.0 clients get no 1xx at all.
        if status == 100 or ex.http10:
            return
        parts = [_status_line(status), self.reason, b"\r\n"]
        for name, value in self.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        ex.client.wbuf.append(b"".join(parts))

    # ---- helpers -----------------------------------------------------------------------------

    def _forget(self) -> None:
        """Leave the idle pool, if in it: the backend closed the connection."""
        idle = self.backend.idle
        if self.ex is None and self in idle:
            idle.remove(self)

    def pause(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.close()


__all__ = ["BuiltinRouter", "install_fast_loop"]
