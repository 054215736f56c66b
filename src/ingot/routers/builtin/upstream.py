"""The upstream side: an `asyncio.Protocol` per backend connection, parsing responses with httptools.

A connection serves one exchange at a time (`ex`) and between exchanges waits in its backend's
idle pool (`Backend.idle`); any byte that arrives while it is idle closes it. After a 101 to a
client's Upgrade it is a tunnel (`tunnel`): its bytes go to the client as they come, unparsed, and
it is never pooled again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from ingot.routers.builtin.flow import PAUSE_UPSTREAM
from ingot.routers.builtin.headers import FRAMING_CHUNKED, informational_head_for_client

if TYPE_CHECKING:
    from ingot.routers.builtin.balancing import Backend
    from ingot.routers.builtin.exchange import Exchange
    from ingot.routers.builtin.router import BuiltinRouter


# (the headers, the rest of what their rewriting depends on, what they were rewritten to)
ResponseHeadMemo = tuple[list[tuple[bytes, bytes]], tuple[object, ...], tuple[bytes, int, bool, bool]]


class _StopParsing(Exception):
    """Raised from a parser callback to end a HEAD response at its headers (httptools cannot skip)."""


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "backend",
        "ex",
        "got",
        "head_memo",
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
        "tunnel",
    )

    def __init__(self, router: BuiltinRouter, backend: Backend) -> None:
        self.router = router
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.got = False  # a response byte arrived for the current exchange
        self.reused = False
        self.msg_done = False
        self.keep_alive = False
        self.head_only = False
        self.informational = False
        self.reading_paused = False
        self.headers: list[tuple[bytes, bytes]] = []
        # The last response head's headers, what else its rewriting depended on, and what it was rewritten to
        # (Exchange.response_head).
        self.head_memo: ResponseHeadMemo | None = None
        self.reason = b""
        self.idle_since = 0.0
        self.last = 0.0
        self.tunnel = False

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        self.router._upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router._upstreams.discard(self)
        self._lost()
        self.transport = None

    def eof_received(self) -> bool | None:
        self._lost()
        return False

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            self.close()  # bytes nobody asked for: the framing can no longer be trusted
            return
        self.got = True
        self.last = self.router._now()
        client = ex.client
        if self.tunnel:
            if ex.frames is not None:
                ex.frames.feed(data)
            if client.transport is not None and not client.closed:
                client.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.tunnel:
                # The 101's head is parsed: what follows it is the switched protocol's, for the client.
                if isinstance(exc, httptools.HttpParserUpgrade) and exc.args:
                    rest = data[int(exc.args[0]):]
                    if rest:
                        if ex.frames is not None:
                            ex.frames.feed(rest)
                        client.wbuf.append(rest)
                self.msg_done = False
            elif self.head_only:
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
        if client.wbuf:
            client.flush()
        if self.msg_done:
            self.msg_done = False
            ex.response_done(self, self.keep_alive)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.pause(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.resume(PAUSE_UPSTREAM)

    # ---- httptools callbacks -----------------------------------------------------------------
    # No `on_message_begin`: one callback fewer per response. The head's parts are taken (and reset) in
    # `on_headers_complete`, which is also where a second response to one request is refused.

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.msg_done:
            raise _StopParsing  # a second response to one request
        ex = self.ex
        assert ex is not None
        headers, self.headers = self.headers, []
        reason, self.reason = self.reason, b""
        parser = self.parser
        status = parser.get_status_code()
        if status == 101:
            if not ex.upgrade:
                raise _StopParsing  # a protocol switch nobody asked for: a broken backend
            self.backend.fails = 0
            self.tunnel = True
            ex.switch_protocols(reason, headers)
            return
        if status < 200:
            self.informational = True
            # 100 answers an Expect the router answered itself; HTTP/1.0 clients get no 1xx at all.
            if status != 100 and not ex.http10:
                ex.client.wbuf.append(informational_head_for_client(status, reason, headers))
            return
        self.informational = False
        self.keep_alive = parser.should_keep_alive()
        self.backend.fails = 0  # an answer (5xx too): the backend's run of failed requests ends
        ex.response_head(status, reason, headers)
        if ex.is_head:
            self.head_only = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            if ex.resp_framing == FRAMING_CHUNKED:
                ex.response_body(body)
            else:
                ex.client.wbuf.append(body)  # the usual case, inline (Exchange.response_body)

    def on_message_complete(self) -> None:
        if self.tunnel:
            return  # the 101 ends no exchange: the tunnel does, when it closes
        if self.informational:
            self.informational = False
            return
        self.msg_done = True
        ex = self.ex
        if ex is not None and ex.resp_framing == FRAMING_CHUNKED:
            ex.response_end()  # before the flush, so the last chunk shares the write

    # ---- helpers -----------------------------------------------------------------------------

    def _lost(self) -> None:
        """The connection ended (EOF, reset or closed): leave the idle pool, tell the exchange using it."""
        self._forget()
        ex = self.ex
        if ex is not None:
            ex.upstream_lost(self)

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
