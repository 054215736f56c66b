"""`BuiltinRouter`: the `Router` API, request dispatch to backends, and housekeeping."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ingot.errors import OperationFailed
from ingot.routers.base import Address, ClientPolicy, HealthCheck, ReleaseStats
from ingot.routers.builtin.balancing import Backend, Release, choose_release, next_backend
from ingot.routers.builtin.client import ClientProtocol
from ingot.routers.builtin.upstream import UpstreamProtocol
from ingot.routers.health import BackendHealth, HealthMonitor, address_key, fail_open, serving

if TYPE_CHECKING:
    from ingot.routers.builtin.exchange import Exchange

# The name the router has always logged under (this module was `ingot.routers.builtin`).
log = logging.getLogger("ingot.routers.builtin")

# Without passive health checks, a backend that refused or timed out a connect gets no new
# requests for this long (with them, it is ejected after `max_failures` in a row instead).
DOWN_FOR = 1.0
# Distinct backends tried per request after connect failures before giving up with 502.
MAX_CONNECT_ATTEMPTS = 6
SWEEP_INTERVAL = 0.5
DEFAULT_MAINTENANCE_PAGE = (
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Down for maintenance</title></head>\n"
    "<body><h1>Down for maintenance</h1><p>This service is being worked on. Please try again shortly.</p>"
    "</body></html>\n"
)


def install_fast_loop() -> bool:
    """Use uvloop's event loop policy if uvloop is importable (a runtime dependency where it has wheels);
    True if it was installed. Without it the routers work the same on asyncio's loop, only slower."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: the built-in router runs on asyncio's own event loop, slower")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# Files kept free of client connections (upstream connections, the listening socket, logs, the edge's
# own): a quarter of the limit, at most this many.
_RESERVED_FILES = 1024


def connections_the_fd_limit_allows() -> int:
    """How many client connections fit under this process's soft RLIMIT_NOFILE (raised by the edge at start),
    keeping some for everything else; at least 64."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(64, soft - min(_RESERVED_FILES, soft // 4))


class BuiltinRouter:
    """Weighted HTTP/1.1 reverse proxy; see `ingot.routers.base.Router` for the contract.

    Must be used from one event loop (the one `start()` ran in); mutations take effect at once
    and atomically with respect to new requests. Releases and pools survive `stop()`/`start()`.

    - Release choice: smooth weighted round-robin over releases with weight > 0; within a
      release, the backend with the fewest requests in flight (ties rotate).
    - A connect failure moves the request to another backend of its release, then of another
      weighted release (its in-flight count moves with it, so `drain` of the first release does
      not wait for it). So does a fresh connection closed before any answer, for idempotent
      methods only. The failure counts for the backend's health (`set_health`: `max_failures` in
      a row eject it); without passive checks it marks the backend down for `DOWN_FOR` seconds.
    - Health (`ingot.routers.health`): the passive count is reset by a slot store per response
      head; probes run in one task; an ejection or return recomputes each release's `usable`
      backends, so the hot path only ever walks a list. A request waiting on a backend that was
      ejected as hung is left to `read_timeout` (see `HealthCheck` for why).
    - Counters: a request counts for the release that answered it; a 502 after every candidate
      failed counts for the release first chosen; 504 and responses cut off by the backend count
      as 5xx too. Requests whose client went away before the answer are not counted.
    - `drain` returns as soon as the in-flight count is 0 at some moment; callers move the weight
      away first. Draining an unknown (or removed) release returns True at once. Long-lived
      exchanges (WebSocket tunnels, server-sent events) keep it waiting like any request; when the
      timeout ends they are closed (a WebSocket client gets close 1001 first), `drain_cut` says how
      many, and only what else is still in flight makes it return False.
    - `hold(seconds)` / `release_hold()`: new requests wait in the router (unanswered, sent nowhere)
      from `hold` until `release_hold` has seen the releases without weight finish their requests
      (long-lived ones aside), or `seconds` pass; they then go by the weights of that moment.
    """

    def __init__(
        self,
        listen: Address | None,
        *,
        name: str = "",
        connect_timeout: float = 2.0,
        upstream_idle_timeout: float = 30.0,
        read_timeout: float = 60.0,
        client_idle_timeout: float = 75.0,
        sock: socket.socket | None = None,
        clients: ClientPolicy | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        # `listen` None: no listener of its own; requests come from the edge's shared listeners (`dispatch`).
        self._tls = tls
        self._running = False
        self.secure = tls is not None  # its clients speak TLS
        self.forwarded_proto = b"https" if tls is not None else b"http"  # X-Forwarded-Proto of its clients
        # A socket already listening on `listen` (the edge's, held across its restarts): used by the
        # next `start()` instead of binding anew; the server closes it on `stop()`.
        self._sock = sock
        self._listening_fd = -1
        self.clients = ClientPolicy()
        self._trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        # What the client policy turned away, for tests and the log.
        self.refused = self.head_timeouts = self.slow_bodies = self.bad_hosts = 0
        self.connect_timeout = connect_timeout
        self.upstream_idle_timeout = upstream_idle_timeout
        self.read_timeout = read_timeout
        self.client_idle_timeout = client_idle_timeout
        self._listen = listen
        self._bound: Address | None = None
        self._releases: dict[str, Release] = {}
        self._active: list[Release] = []  # weight > 0, in the order weights were given
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[ClientProtocol] = set()
        self._upstreams: set[UpstreamProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._cut: dict[str, int] = {}  # release -> long-lived exchanges its last drain closed
        self._held: list[Exchange] | None = None  # requests waiting while a hold lasts
        self._maintenance: tuple[bytes, bytes] | None = None  # (Retry-After header line, page) while on
        self._hold_timer: asyncio.TimerHandle | None = None
        self._hold_until = 0.0
        self._host_header = b""
        # The loop's clock once started (cheap, and what timers use).
        self._now: Callable[[], float] = time.monotonic
        self._health = HealthMonitor(
            f"router {name!r}" if name else "router",
            targets=self._health_targets,
            changed=self._refresh_usable,
            running=lambda: self._running,
        )
        self.set_clients(clients or ClientPolicy())

    def set_clients(self, policy: ClientPolicy) -> None:
        """Apply new limits on clients at once (connections already open keep their trust until they close)."""
        self.clients = policy
        self.connection_cap = min(policy.max_connections, connections_the_fd_limit_allows())
        if self.connection_cap < policy.max_connections:
            log.warning("router %s: max_connections %d is more than the open-files limit allows; capped at %d",
                        self.name, policy.max_connections, self.connection_cap)
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in policy.trusted_proxies]
        for rel in self._releases.values():
            rel.header = rel.named_header if policy.release_header else b""

    def trusts(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._trusted)

    # ---- Router protocol ---------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        return self._bound if self._bound is not None else self._listen if self._listen is not None else ("", 0)

    async def start(self) -> None:
        if self._running:
            raise RuntimeError(f"router {self.name!r} is already started")
        loop = asyncio.get_running_loop()
        if self._listen is None:
            self._loop = loop
            self._now = loop.time
            self._running = True
            self._stopping = False
            self._sweeper = loop.create_task(self._sweep_forever())
            self._health.ensure_running()
            return
        host, port = self._listen
        tls = self._tls
        # A TLS handshake that takes longer than this is a client holding a connection for nothing.
        handshake = 10.0 if tls is not None else None
        try:
            if self._sock is not None:
                sock, self._sock = self._sock, None
                try:
                    server = await loop.create_server(lambda: ClientProtocol(self), sock=sock, backlog=2048,
                                                      ssl=tls, ssl_handshake_timeout=handshake)
                except BaseException:
                    sock.close()  # given to this router: nobody else closes it
                    raise
            else:
                server = await loop.create_server(
                    lambda: ClientProtocol(self), host or None, port, reuse_address=True, backlog=2048,
                    ssl=tls, ssl_handshake_timeout=handshake,
                )
        except OSError as exc:
            raise self._bind_error(exc) from None
        self._loop = loop
        self._now = loop.time
        self._server = server
        self._running = True
        self._listening_fd = server.sockets[0].fileno()
        self._stopping = False
        # Keep the configured host (callers compare addresses), but report the port actually bound.
        self._bound = (host, int(server.sockets[0].getsockname()[1]))
        self._host_header = f"{host}:{self._bound[1]}".encode("ascii")
        self._sweeper = loop.create_task(self._sweep_forever())
        self._health.ensure_running()

    @property
    def listening_fd(self) -> int | None:
        """The listening socket's fd while started (the edge hands it to its supervisor to hold)."""
        return self._listening_fd if self._server is not None else None

    async def stop(self) -> None:
        self._stopping = True
        self._running = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._health.stop()
        self._end_hold(send=False)  # their clients are closed next
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
        old: dict[Address, Backend | None] = {b.addr: b for b in rel.backends}
        pool: list[Backend] = []
        for host, port in addrs:
            addr = (str(host), int(port))
            if any(b.addr == addr for b in pool):
                continue
            kept = old.pop(addr, None)
            pool.append(kept if kept is not None else Backend(addr))
        for gone in old.values():
            if gone is not None:
                gone.retire()
        rel.backends = pool
        rel.rr = 0
        self._refresh_usable()

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
        self._refresh_usable()

    async def drain(self, release: str, timeout: float) -> bool:
        rel = self._releases.get(release)
        if rel is None:
            return True
        # Out of rotation whatever its weight says, until a later `set_weights` gives it weight again.
        self._active = [r for r in self._active if r is not rel]
        self._refresh_usable()
        self._cut[release] = 0
        if rel.in_flight == 0:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rel.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            # Long-lived connections would hold the old release forever: at the timeout they are closed.
            streams = list(rel.streams)
            for ex in streams:
                ex.cut()
            self._cut[release] = len(streams)
            if streams:
                log.info("router %s: %d long-lived connection(s) of %s closed at the drain timeout (%g s)",
                         self.name, len(streams), release, timeout)
            return rel.in_flight == 0
        finally:
            if fut in rel.waiters:
                rel.waiters.remove(fut)
        return True

    def set_maintenance(self, retry_after: int | None, page: str | None = None) -> None:
        """With `retry_after` (seconds), answer every request 503 with `Retry-After` and `page` (HTML; a
        short default one without it) while the releases keep running; None: serve again at once."""
        if retry_after is None:
            self._maintenance = None
            return
        body = (page if page is not None else DEFAULT_MAINTENANCE_PAGE).encode("utf-8")
        self._maintenance = (b"Retry-After: %d\r\nCache-Control: no-store\r\n" % int(retry_after), body)

    @property
    def maintenance(self) -> bool:
        return self._maintenance is not None

    def drain_cut(self, release: str) -> int | None:
        """How many long-lived connections of `release` its last `drain` (or `drain_backends`) closed at its
        timeout."""
        return self._cut.get(release, 0)

    # Whether `hold` is available (routers.base.can_hold).
    holds = True

    async def hold(self, seconds: float) -> None:
        """From now on new requests wait in the router, for `release_hold`, at most `seconds`."""
        if not seconds > 0:
            raise ValueError(f"hold must be a number of seconds > 0, got {seconds!r}")
        assert self._loop is not None, "hold needs a started router"
        if self._held is None:
            self._held = []
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._hold_until = self._loop.time() + seconds
        # The bound holds even if nobody calls release_hold (a control plane that died mid-switch).
        self._hold_timer = self._loop.call_at(self._hold_until, self._end_hold)

    async def release_hold(self) -> int:
        """End the hold once every release without weight has no request in flight but long-lived ones (the
        switch is complete: nothing of the old release overlaps the new), or at the hold's bound; the
        held requests then go by the current weights. Returns how many were held."""
        loop = asyncio.get_running_loop()
        while self._held is not None and loop.time() < self._hold_until:
            if not any(rel.in_flight > len(rel.streams) for rel in self._releases.values()
                       if rel not in self._active):
                break
            await asyncio.sleep(0.005)  # off the hot path: a short poll, as drain_backends
        held = len(self._held or ())
        self._end_hold()
        return held

    def _end_hold(self, send: bool = True) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        held, self._held = self._held, None
        for ex in held if send and held else ():
            if not ex.done:
                self.dispatch(ex)

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        rel = self._releases.get(release)
        if rel is None:
            return True
        gone = set(addrs)
        leaving = [b for b in rel.backends if b.addr in gone]
        await self.set_backends(release, [b.addr for b in rel.backends if b.addr not in gone])
        # Off the hot path: a short poll is simpler than per-backend waiters and costs nothing per request.
        deadline = asyncio.get_running_loop().time() + timeout
        self._cut[release] = 0
        while any(b.in_flight for b in leaving):
            if asyncio.get_running_loop().time() >= deadline:
                # As `drain` does: the long-lived connections on the leaving backends are closed now.
                streams = [ex for ex in rel.streams if ex.backend in leaving]
                for ex in streams:
                    ex.cut()
                self._cut[release] = len(streams)
                return not any(b.in_flight for b in leaving)
            await asyncio.sleep(0.01)
        return True

    async def remove_release(self, release: str) -> None:
        rel = self._releases.pop(release, None)
        if rel is None:
            return
        for b in rel.backends:
            b.retire()
        self._active = [r for r in self._active if r is not rel]
        self._refresh_usable()

    async def set_health(self, check: HealthCheck) -> None:
        self._health.configure(check)

    def backend_health(self) -> dict[str, dict[str, str]]:
        return {
            name: {address_key(b.addr): b.status() for b in rel.backends} for name, rel in self._releases.items()
        }

    def stats(self) -> dict[str, ReleaseStats]:
        return {name: rel.snapshot() for name, rel in self._releases.items()}

    def weights(self) -> dict[str, int]:
        return {name: rel.weight for name, rel in self._releases.items()}

    # ---- helpers -----------------------------------------------------------------------------

    def _bind_error(self, exc: OSError) -> OperationFailed:
        host, port = self._listen or ("", 0)
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

    def _health_targets(self) -> list[BackendHealth]:
        return [b for rel in self._releases.values() for b in rel.backends]

    def _refresh_usable(self) -> None:
        """Recompute each release's `usable` backends after a change of pools, weights or health."""
        open_ = fail_open(rel.backends for rel in self._active)
        for rel in self._releases.values():
            rel.usable = serving(rel.backends, open_)

    def _release(self, name: str) -> Release:
        rel = self._releases.get(name)
        if rel is None:
            if not name or not name.isascii() or not name.isprintable():
                raise ValueError(f"release id {name!r} cannot be used in a header")
            rel = self._releases[name] = Release(name)
            if not self.clients.release_header:
                rel.header = b""
        return rel

    # ---- request dispatch --------------------------------------------------------------------

    def dispatch(self, ex: Exchange) -> None:
        if self._maintenance is not None:
            extra, page = self._maintenance
            ex.respond(503, page, None, content_type=b"text/html; charset=utf-8", extra=extra)
            return
        if self._held is not None:
            self._held.append(ex)  # a hold lasts: sent on when it ends
            return
        active = self._active
        rel = active[0] if len(active) == 1 else choose_release(active)
        if rel is None:
            ex.respond_error(503, None)
            return
        ex.release = ex.chosen = rel
        rel.in_flight += 1  # rel.enter(), inline
        self._attempt(ex, fresh=False)

    def _attempt(self, ex: Exchange, *, fresh: bool) -> None:
        usable = ex.release.usable if ex.release is not None else None
        # A first try on a release of one usable backend (the usual case): that backend, which is what
        # next_backend would answer (Release.pick), without its two calls.
        if usable is not None and len(usable) == 1 and ex.tried is None:
            b: Backend | None = usable[0]
        else:
            b = next_backend(ex, self._active, self._now())
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

    async def _connect(self, ex: Exchange, b: Backend) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, up = await self._loop.create_connection(lambda: UpstreamProtocol(self, b), b.host, b.port)
        except (OSError, TimeoutError) as exc:
            log.debug("router %s: connect to %s:%s failed: %r", self.name, b.host, b.port, exc)
            if isinstance(exc, TimeoutError):
                why = f"no connection within {self.connect_timeout:g} s"
            elif isinstance(exc, ConnectionRefusedError):
                why = "connection refused"
            else:
                why = f"connect failed: {exc.strerror or exc}"
            if ex.backend is not b or ex.done:
                self.backend_failed(b, why)
                return
            self.retry_elsewhere(ex, b, why)
            return
        if ex.done or ex.backend is not b:
            self.release_conn(up)  # the client left meanwhile; the fresh connection is still good
            return
        ex.attach(up, reused=False)

    def backend_failed(self, b: Backend, why: str) -> None:
        """`b` did not answer a request (refused, hung up, timed out): count it for its health."""
        if self._health.passive:
            self._health.request_failed(b, why)
        else:
            b.down_until = self._now() + DOWN_FOR

    def retry_elsewhere(self, ex: Exchange, b: Backend, why: str) -> None:
        """`b` failed `ex` before answering: count it against `b` and send `ex` to another backend."""
        self.backend_failed(b, why)
        ex.drop_backend()
        tried = ex.tried if ex.tried is not None else []
        tried.append(b)
        ex.tried = tried
        if len(tried) >= MAX_CONNECT_ATTEMPTS:
            ex.respond_error(502, ex.chosen)
        else:
            self._attempt(ex, fresh=False)

    def release_conn(self, up: UpstreamProtocol) -> None:
        """Return a connection whose last exchange ended cleanly to its backend's idle pool."""
        b = up.backend
        if b.retired or self._stopping or up.transport is None or up.transport.is_closing():
            up.close()
            return
        up.idle_since = self._now()
        if up.reading_paused:
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
