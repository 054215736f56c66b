"""One request/response exchange: the request bytes on their way to a backend, the answer back.

Request bytes are kept (up to `REPLAY_LIMIT`) until the backend's first response byte, so that a
pooled keep-alive connection the backend closed as we reused it can be replayed once.

Long-lived exchanges: a protocol switch (a WebSocket: the request's `Upgrade` passed on, the backend's
101 back) becomes a tunnel, bytes spliced both ways with the same flow control as bodies, until either
side closes; a response of server-sent events (`text/event-stream`) streams like any body, each read
written on at once. Both are counted in their release's `streams` (in flight too) and are what
`BuiltinRouter.drain` closes (`cut`) when its timeout ends. A tunnel has no read timeout (a WebSocket may be
quiet for long); an event stream keeps it between reads, as any response does (and as HAProxy's `timeout
server` does): its app should send a comment line now and then.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ingot.routers.builtin.flow import PAUSE_BUFFER
from ingot.routers.builtin.headers import (
    FRAMING_CHUNKED,
    FRAMING_CLOSE,
    FRAMING_NONE,
    connection_header,
    response_head_for_client,
    status_line,
    switch_head_for_client,
)
from ingot.routers.builtin.websocket import GOING_AWAY, FrameBoundary

if TYPE_CHECKING:
    from ingot.routers.builtin.balancing import Backend, Release
    from ingot.routers.builtin.client import ClientProtocol
    from ingot.routers.builtin.upstream import UpstreamProtocol

# Request bytes kept for a replay after a reused upstream connection turns out dead.
REPLAY_LIMIT = 64 * 1024
# Request body buffered while an upstream connect is pending before the client is paused.
CONNECT_BUFFER_LIMIT = 256 * 1024

_perf = time.perf_counter

_REASONS = {
    200: b"OK",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_ERROR_BODIES = {
    400: b"400 Bad Request: the request could not be parsed\n",
    408: b"408 Request Timeout: the request head did not arrive in time\n",
    431: b"431 Request Header Fields Too Large\n",
    502: b"502 Bad Gateway: no backend could serve the request\n",
    503: b"503 Service Unavailable: no release has weight\n",
    504: b"504 Gateway Timeout: the backend did not answer in time\n",
}


class Exchange:
    """A request from `client`, its way to a backend (`release`, `backend`, `up`) and the answer."""

    __slots__ = (
        "backend",
        "chosen",
        "chunked",
        "client",
        "client_keep_alive",
        "done",
        "expect_continue",
        "extra",
        "frames",
        "fresh_retry_used",
        "host",
        "http10",
        "idempotent",
        "is_head",
        "long_lived",
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
        "tunnel",
        "up",
        "upgrade",
        "url",
        "websocket",
    )

    def __init__(self, client: ClientProtocol, head: bytes, *, chunked: bool, http10: bool, keep_alive: bool) -> None:
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
        self.idempotent = False  # the method may be sent twice (RFC 9110 9.2.2)
        self.expect_continue = False
        self.req_done = False
        self.done = False
        self.release: Release | None = None
        self.chosen: Release | None = None
        self.backend: Backend | None = None
        self.up: UpstreamProtocol | None = None
        self.tried: list[Backend] | None = None
        self.fresh_retry_used = False
        self.resp_started = False
        self.resp_framing = FRAMING_NONE
        self.status = 0
        self.start = _perf()
        self.host = b""  # the request's Host and target: what the edge's shared listeners route by
        self.url = b""
        self.extra = b""  # response header lines the edge adds (HSTS)
        self.upgrade = False  # the client asked for a protocol switch, passed on to the backend
        self.tunnel = False  # the backend switched: bytes go both ways as they are
        self.websocket = False  # the tunnel is a WebSocket (closed with a close frame when cut)
        self.frames: FrameBoundary | None = None  # where the backend's frames end (a WebSocket's)
        self.long_lived = False  # counted in its release's `streams`

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

    def add_raw(self, data: bytes) -> None:
        """Bytes of the switched protocol (a WebSocket's frames), before the backend's 101 or after it."""
        if self.done:
            return
        self.out.append(data)
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
                self.client.pause(PAUSE_BUFFER)

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
            self.client.resume(PAUSE_BUFFER)

    def attach(self, up: UpstreamProtocol, *, reused: bool) -> None:
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
        # A backend connection usually answers with the same head again (but for a Date, once a second): its
        # rewriting, which depends on nothing but the head and these of the exchange, is remembered on it.
        up = self.up
        rel = self.release
        assert up is not None and rel is not None
        key = (status, reason, self.client_keep_alive and self.req_done, self.is_head, self.http10, rel.header,
               self.extra)
        memo = up.head_memo
        if memo is not None and memo[1] == key and memo[0] == headers:
            head, framing, keep, events = memo[2]
        else:
            rewritten = response_head_for_client(self, status, reason, headers)
            up.head_memo = (headers, key, rewritten)
            head, framing, keep, events = rewritten
        self.resp_framing = framing
        if not keep:
            self.client_keep_alive = False
        self.client.wbuf.append(head)
        if events:
            self._count_long_lived()

    def switch_protocols(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The backend answered the client's Upgrade with 101: from now on a tunnel."""
        self.status = 101
        self.resp_started = True
        self.tunnel = True
        self.resp_framing = FRAMING_CLOSE  # it ends when the backend closes (or the client does)
        self.client_keep_alive = False
        if self.replayable:
            self.replayable = False
            del self.out[: self.sent]
            self.sent = 0
        self.websocket = any(n.lower() == b"upgrade" and v.strip().lower() == b"websocket" for n, v in headers)
        if self.websocket:
            self.frames = FrameBoundary()
        self.client.wbuf.append(switch_head_for_client(self, reason, headers))
        self._count_long_lived()

    def _count_long_lived(self) -> None:
        rel = self.release
        if rel is not None and not self.long_lived:
            self.long_lived = True
            rel.streams.add(self)

    def cut(self) -> None:
        """Close a long-lived exchange whose release is leaving: a WebSocket's client is told 1001."""
        if self.done:
            return
        client = self.client
        # Only between two of the backend's frames: inside one, a frame of ours would break the stream, and
        # the client gets a plain close instead (1006 to it) rather than a protocol error.
        if self.frames is not None and self.frames.between and client.transport is not None and not client.closed:
            client.flush()
            client.transport.write(GOING_AWAY)
        self.client_keep_alive = False
        self._close_upstream()
        self.finish(self.status, self.release, latency=False)

    def response_body(self, data: bytes) -> None:
        wbuf = self.client.wbuf
        if self.resp_framing == FRAMING_CHUNKED:
            wbuf.append(b"%x\r\n" % len(data))
            wbuf.append(data)
            wbuf.append(b"\r\n")
        else:
            wbuf.append(data)

    def response_end(self) -> None:
        if self.resp_framing == FRAMING_CHUNKED:
            self.client.wbuf.append(b"0\r\n\r\n")

    def response_done(self, up: UpstreamProtocol, upstream_keep_alive: bool) -> None:
        self.up = None
        up.ex = None
        if upstream_keep_alive and self.req_done and self.sent == len(self.out) and not self.upgrade:
            self.router.release_conn(up)
        else:
            up.close()
        self.finish(self.status, self.release)

    def upstream_lost(self, up: UpstreamProtocol) -> None:
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
            if not up.reused and not up.got and self.backend is not None:
                # A fresh connection was accepted, then closed with no answer: the instance is going away
                # (a container engine's port forwarder accepts for a dead container). Like a refused
                # connect, try another backend; only for methods that are safe to send twice.
                if self.replayable and self.idempotent:
                    self.sent = 0
                    self.router.retry_elsewhere(self, self.backend, "closed without answering")
                    return
                self.router.backend_failed(self.backend, "closed without answering")
            self.respond_error(502, self.chosen)
        elif self.resp_framing == FRAMING_CLOSE:
            # The end of a close-delimited body, or of a tunnel (whose duration is no latency).
            self.finish(self.status, self.release, latency=not self.tunnel)
        else:
            # Cut off mid-body: the client must see a broken response, not a short one.
            self.client_keep_alive = False
            self.finish(502, self.release, latency=False)

    def timed_out(self) -> None:
        self._close_upstream()
        if self.resp_started:
            self.client_keep_alive = False
            self.finish(504, self.release, latency=False)
        else:
            if self.backend is not None:
                self.router.backend_failed(self.backend, f"no response within {self.router.read_timeout:g} s")
            self.respond_error(504, self.chosen)

    def respond_error(self, status: int, rel: Release | None) -> None:
        self.respond(status, _ERROR_BODIES[status], rel)

    def respond(self, status: int, body: bytes, rel: Release | None, *,
                content_type: bytes = b"text/plain; charset=utf-8", extra: bytes = b"") -> None:
        """An answer of the router's own (`extra`: more header lines, each ending in CRLF)."""
        if self.done:
            return
        if not self.req_done:
            self.client_keep_alive = False  # the rest of the body is not read: close after answering
        self.status = status
        self.client.wbuf.append(
            b"".join(
                (
                    status_line(status),
                    _REASONS[status],
                    b"\r\nContent-Type: ",
                    content_type,
                    b"\r\nContent-Length: ",
                    b"%d" % len(body),
                    b"\r\n",
                    extra,
                    connection_header(self.http10, self.client_keep_alive),
                    b"\r\n",
                    b"" if self.is_head else body,
                )
            )
        )
        self.finish(status, rel)

    def finish(self, status: int, rel: Release | None, *, latency: bool = True) -> None:
        if self.done:
            return
        self.done = True
        if rel is not None:
            # rel.record, inline: this runs once per request.
            rel.requests += 1
            if status >= 500:
                rel.errors += 1
            if latency and not self.long_lived:
                rel.add_latency(_perf() - self.start)
        # _leave_release and drop_backend, inline.
        left = self.release
        if left is not None:
            if self.long_lived:
                left.streams.discard(self)
            left.in_flight -= 1  # left.leave(), inline but for waking drains
            if left.waiters:
                left.wake_drained()
            self.release = None
        b = self.backend
        if b is not None:
            b.in_flight -= 1
            self.backend = None
        self.client.exchange_done(self)

    def _leave_release(self) -> None:
        rel = self.release
        if rel is not None:
            if self.long_lived:
                rel.streams.discard(self)
            rel.leave()
            self.release = None

    def abort(self) -> None:
        """The client went away: stop without answering."""
        if self.done:
            return
        self.done = True
        self._close_upstream()
        self._leave_release()
        self.drop_backend()

    def _close_upstream(self) -> None:
        """Let go of the upstream connection mid-response: its framing is lost, so it is closed."""
        up = self.up
        if up is not None:
            self.up = None
            up.ex = None
            up.close()
