"""The client side: an `asyncio.Protocol` per client connection, parsing requests with httptools.

Bytes produced while one chunk of input is parsed are collected in `wbuf` and written once after
the parser returns. Pipelined requests are queued and answered strictly one after the other;
`Expect: 100-continue` is answered here and not forwarded.

Hostile clients (`ClientPolicy`): past `max_connections` a new connection is answered 503 and closed; a
request head must be complete within `head_timeout` of the connection's start (first request) or of its first
byte (later ones); a body must average `min_body_rate` after that grace. Time the router held the client back
(pipelining, a slow backend) is not counted against it. The deadlines are checked by the router's sweeper.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ingot.routers.builtin.exchange import Exchange
from ingot.routers.builtin.flow import PAUSE_BUFFER, PAUSE_PIPELINE, PAUSE_UPSTREAM
from ingot.routers.builtin.headers import BadHost, RequestHead, request_head_for_backend

if TYPE_CHECKING:
    from ingot.routers.builtin.router import BuiltinRouter

# Request line + headers larger than this are answered with 431 (httptools has no limit itself).
MAX_HEAD_BYTES = 64 * 1024
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
# How long a client that is answered before its request body ended may keep sending before close.
LINGER_SECONDS = 2.0
_FULL_BODY = b"503 Service Unavailable: too many connections open\n"
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
         b"Connection: close\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))


class _HeadTooLarge(Exception):
    """Raised from a parser callback when the request head passes `MAX_HEAD_BYTES`."""


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "body_bytes",
        "body_since",
        "closed",
        "eof",
        "feeding",
        "head_begun",
        "head_memo",
        "head_since",
        "head_size",
        "headers",
        "in_head",
        "last",
        "lingering",
        "parser",
        "parsing",
        "paused",
        "paused_at",
        "peer",
        "queue",
        "router",
        "transport",
        "trusted",
        "upgraded",
        "url",
        "wbuf",
        "write_paused",
    )

    def __init__(self, router: BuiltinRouter) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()  # queue[0] is the exchange being answered
        self.parsing: Exchange | None = None  # the exchange whose body is being read
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # The last request head's headers and what they were rewritten to (headers.request_head_for_backend).
        self.head_memo: tuple[list[tuple[bytes, bytes]], bool, bool, RequestHead] | None = None
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
        self.trusted = False  # the peer is a trusted proxy: its X-Forwarded-For is kept
        self.last = 0.0
        self.in_head = True  # a request head is awaited and its deadline runs (from `head_since`)
        self.head_since = 0.0
        self.head_begun = False  # a byte of the awaited head has come
        self.body_since = 0.0  # when the body being read began (moved on by time spent paused)
        self.body_bytes = 0
        self.paused_at = 0.0

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        router = self.router
        if len(router._clients) >= router.connection_cap:
            # Refused with an answer rather than by not accepting: the client learns at once, and the
            # connections that are open go on being served.
            self.lingering = self.closed = True
            self.transport.write(_FULL)
            self.transport.close()
            router.refused += 1
            return
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode("ascii")
            if router._trusted:
                self.trusted = router.trusts(str(peer[0]))
        self.last = self.head_since = router._now()
        router._clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router._clients.discard(self)
        self._abort_queue()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # discarded: the connection closes once the answer is out
        self.last = self.router._now()
        if self.upgraded:
            # The upgrading request is the last one the connection will ever carry.
            if self.queue and self.queue[-1].upgrade:
                self.queue[-1].add_raw(data)  # the switched protocol's bytes, both before the 101 and after
                self.queue[-1].flush()
            return  # else (CONNECT): discarded, the connection closes once the answer is out
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Bytes after an Upgrade/CONNECT head are not HTTP. A protocol switch (WebSocket) goes on to the
            # backend as it is, and after its 101 both ways (a tunnel); CONNECT is answered, then closed.
            self.upgraded = True
            ex = self.queue[-1] if self.queue else None
            if ex is not None and ex.upgrade:
                if self.parsing is ex:
                    self.parsing = None
                    ex.end_body()
                rest = data[int(exc.args[0]):] if exc.args else b""
                if rest:
                    ex.add_raw(rest)
        except httptools.HttpParserError as exc:
            self.feeding = False
            self._bad_request(431 if isinstance(exc.__context__, _HeadTooLarge) else 400)
            if isinstance(exc.__context__, BadHost):
                self.router.bad_hosts += 1
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
        if self.queue and self.queue[0].tunnel:
            return False  # a tunnel ends with either side: the upstream is closed with it
        if self.parsing is not None or self.lingering:
            return False  # a request cut short can never complete
        # A half-closed client may still wait for the answers to what it sent. Over TLS there is no half-close
        # (asyncio's SSL transport closes on EOF whatever this returns, and warns when it is True).
        return bool(self.queue) and not self.router.secure

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
        self.head_begun = True
        if not self.in_head:  # a later request on the connection: its deadline runs from its first byte
            self.in_head = True
            self.head_since = self.last

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
        self.in_head = self.head_begun = False
        self.body_since = self.last
        self.body_bytes = 0
        parser = self.parser
        method = parser.get_method()
        switching = parser.should_upgrade()  # Upgrade or CONNECT: the connection carries nothing after it
        keep_alive = parser.should_keep_alive()
        head, chunked, expect, host, http10, upgrade = request_head_for_backend(
            self, method, switching, keep_alive, parser.get_http_version)
        ex = Exchange(self, head, chunked=chunked, http10=http10, keep_alive=keep_alive and not switching)
        ex.host = host
        ex.url = self.url
        ex.is_head = method == b"HEAD"
        ex.idempotent = method in IDEMPOTENT_METHODS
        if expect and not http10:
            ex.expect_continue = True
        ex.upgrade = upgrade
        self.parsing = ex
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            if ex.expect_continue:
                self._activate(ex)
            else:
                self.router.dispatch(ex)  # _activate's usual case, inline
        else:
            self.pause(PAUSE_PIPELINE)  # answer in order; read on when it is this one's turn

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            self.body_bytes += len(body)
            ex.add_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            ex.req_done = True  # Exchange.end_body, inline when there is no last chunk to add
            if ex.chunked:
                ex.end_body()

    # ---- exchange life cycle -----------------------------------------------------------------

    def _activate(self, ex: Exchange) -> None:
        if ex.expect_continue and not ex.req_done and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.router.dispatch(ex)

    def exchange_done(self, ex: Exchange) -> None:
        """The answer to `ex` is complete (in `wbuf`): send it and go on with the next request."""
        if self.closed:
            return
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if self.paused & (PAUSE_UPSTREAM | PAUSE_BUFFER):
            self.resume(PAUSE_UPSTREAM | PAUSE_BUFFER)
        if self.wbuf:
            self.flush()
        if not ex.req_done:
            self._linger()
        elif not ex.client_keep_alive or self.upgraded or (self.eof and not queue):
            self.close()
        elif queue:
            if len(queue) == 1:
                self.resume(PAUSE_PIPELINE)
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
        ex = Exchange(self, b"", chunked=False, http10=False, keep_alive=False)
        self.queue.append(ex)
        ex.respond_error(status, None)

    # ---- flow control and closing ------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self.paused:
            self.paused_at = self.router._now()
            if self.transport is not None and not self.closed:
                self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                # The time we held the client back is not its fault: its deadlines move on by as much.
                held = self.router._now() - self.paused_at
                self.head_since += held
                self.body_since += held
                if self.transport is not None and not self.closed:
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
        self.resume(PAUSE_UPSTREAM | PAUSE_BUFFER | PAUSE_PIPELINE)
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
        if not self.paused and not self.lingering:
            policy = router.clients
            if self.in_head and now - self.head_since > policy.head_timeout:
                router.head_timeouts += 1
                if self.head_begun:
                    self._bad_request(408)  # part of a head came: say why before closing
                else:
                    self.close()  # nothing came: a silent close, as for an idle keep-alive connection
                return
            if (self.parsing is not None and policy.min_body_rate
                    and now - self.body_since > policy.head_timeout + self.body_bytes / policy.min_body_rate):
                router.slow_bodies += 1
                self.abort()  # mid-body: no answer can be framed; the backend sees the request cut off
                return
        if not self.queue:
            if now - self.last > router.client_idle_timeout and not self.lingering:
                self.close()
            return
        ex = self.queue[0]
        up = ex.up
        if ex.tunnel:
            return  # a tunnel (WebSocket) may be quiet for long: it ends when either side closes it
        if up is not None and now - max(up.last, self.last) > router.read_timeout:
            ex.timed_out()
