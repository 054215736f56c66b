"""HTTP heads as they cross the router: each is rewritten for the other side in one pass of bytes.

Hop-by-hop headers (and those named in `Connection`) are dropped, the body framing is decided
here, and the `X-Forwarded-*` headers are set on requests (a client's own `X-Forwarded-For` is kept only from a trusted
proxy), `X-Ingot-Release` on responses (unless turned off: then the release's header is empty).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingot.routers.builtin.client import ClientProtocol
    from ingot.routers.builtin.exchange import Exchange

# Response framing towards the client.
FRAMING_NONE, FRAMING_LENGTH, FRAMING_CHUNKED, FRAMING_CLOSE = 0, 1, 2, 3

# Lower-cased headers of either direction that need more than being copied through: the
# hop-by-hop ones and the body framing.
_HOP_BY_HOP_AND_FRAMING = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
_REQ_SPECIAL = _HOP_BY_HOP_AND_FRAMING | {
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_RESP_SPECIAL = _HOP_BY_HOP_AND_FRAMING | {b"x-ingot-release"}
# Connection-header tokens that name no end-to-end header we would have to remove as well.
_PLAIN_CONNECTION_TOKENS = frozenset({b"", b"keep-alive", b"close", b"upgrade", b"te", b"trailer"})

_STATUS_LINES: dict[int, bytes] = {}
# RFC 3986 host (reg-name, IPv4, or an IP literal in brackets) with an optional port; empty is allowed (RFC 9110 7.2).
_VALID_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]{0,5})?")
_host_is_valid = _VALID_HOST.fullmatch
# A Content-Type that makes the response an event stream: one C call where three method calls were.
_is_event_stream = re.compile(rb"[ \t]*text/event-stream", re.IGNORECASE).match


class BadHost(Exception):
    """Raised from the parser's callback for a request the router answers 400 (RFC 9112 3.2): more than one
    `Host`, a malformed one, or none in an HTTP/1.1 request."""


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> ` (the reason phrase follows)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d " % status
    return line


def connection_header(http10: bool, keep_alive: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def _extra_connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """Headers named in `Connection` are hop-by-hop too (RFC 9110 7.6.1)."""
    if value is None:
        return frozenset()
    tokens = {t.strip().lower() for t in value.split(b",")}
    return frozenset(tokens - _PLAIN_CONNECTION_TOKENS)


def _is_chunked(transfer_encoding: bytes) -> bool:
    return transfer_encoding.rstrip().lower().endswith(b"chunked")


# What `request_head_for_backend` made of a request head: (the head for the backend; the body is chunked;
# `Expect: 100-continue`; the Host, what the edge's shared listeners route by; HTTP/1.0; a protocol switch, a
# WebSocket, passed on to the backend). A plain tuple, not a NamedTuple: that one's constructor is a Python
# call, made once per request.
RequestHead = tuple[bytes, bool, bool, bytes, bool, bool]


def request_head_for_backend(client: ClientProtocol, method: bytes, switching: bool, keep_alive: bool,
                             version: Callable[[], str]) -> RequestHead:
    """The request head for the backend, from the head `client` just parsed; `switching`, `keep_alive` and
    `version` are the parser's `should_upgrade()`, `should_keep_alive()` and `get_http_version`.

    A protocol switch the client asked for (not CONNECT, not HTTP/1.0) goes on to the backend: its `Upgrade`
    with `Connection: Upgrade`, the one hop-by-hop header pair passed through (RFC 9110 7.8).

    The version is asked of the parser only when the head does not settle it (httptools formats it as a string,
    ten times the cost of anything else it is asked): a request kept alive without a `Connection` header is
    HTTP/1.1 (llhttp keeps a request alive by default only from 1.1 on; 2.0 has minor 0). Such a head's
    rewriting, which depends on nothing but its headers and the connection, is remembered for the
    connection's next request (`client.head_memo`): a keep-alive client usually repeats its headers.
    """
    headers = client.headers
    memo = client.head_memo
    # Kept alive with the same headers (so no Connection header either): HTTP/1.1 again, as the memo's was.
    if (memo is not None and keep_alive and memo[0] == headers and switching is memo[1]
            and (method == b"CONNECT") is memo[2]):
        rest: RequestHead = memo[3]
        return (b"".join((method, b" ", client.url, b" HTTP/1.1\r\n", rest[0])), rest[1], rest[2], rest[3],
                rest[4], rest[5])
    protocol: bytes | None = None
    parts: list[bytes] = []
    host: bytes | None = None
    xff: bytes | None = None
    te: bytes | None = None
    connection: bytes | None = None
    expect = False
    drop: frozenset[bytes] = frozenset()
    for _ in range(2):  # a second pass only when Connection names end-to-end headers to remove
        del parts[:]
        for name, value in headers:
            lname = name.lower()
            if lname in _REQ_SPECIAL or lname.startswith(b"proxy-"):
                if lname == b"host":
                    if host is not None or not _host_is_valid(value):
                        raise BadHost
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
                elif lname == b"upgrade":
                    protocol = value
                continue
            if drop and lname in drop:
                continue
            parts += (name, b": ", value, b"\r\n")
        if connection is None or drop:
            break
        extra = _extra_connection_tokens(connection)
        if not extra:
            break
        drop = extra
        xff = te = connection = host = protocol = None
    settled = connection is None and keep_alive  # HTTP/1.1 (see above)
    http10 = False if settled else version() == "1.0"
    upgrade = switching and method != b"CONNECT" and not http10
    if host is None:
        if not http10:
            raise BadHost
        host = client.router._host_header
        parts += (b"Host: ", host, b"\r\n")
    chunked = te is not None and _is_chunked(te)
    if te is not None:
        parts += (b"Transfer-Encoding: ", te, b"\r\n")
    if upgrade and protocol is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", protocol, b"\r\n")
    parts += (
        b"X-Forwarded-For: ",
        # Kept only from a trusted proxy: anyone else could name any address as the client's.
        xff + b", " + client.peer if xff is not None and client.trusted else client.peer,
        b"\r\nX-Forwarded-Proto: ",
        client.router.forwarded_proto,
        b"\r\nX-Forwarded-Host: ",
        host,
        b"\r\n\r\n",
    )
    rest = (b"".join(parts), chunked, expect, host, http10, upgrade)
    # Only a head whose version its headers settle: the request line's version is not in the memo's key.
    client.head_memo = (headers, switching, method == b"CONNECT", rest) if settled else None
    return b"".join((method, b" ", client.url, b" HTTP/1.1\r\n", rest[0])), chunked, expect, host, http10, upgrade


def response_head_for_client(
    ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, int, bool, bool]:
    """The response head for the client, its body framing, whether the client may keep alive, and whether it is
    an event stream (`text/event-stream`: long-lived, counted as a stream)."""
    parts = [_STATUS_LINES.get(status) or status_line(status), reason, b"\r\n"]
    events = False
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
            if lname == b"content-type":
                events = _is_event_stream(value) is not None
            parts += (name, b": ", value, b"\r\n")
        if connection is None or drop:
            break
        extra = _extra_connection_tokens(connection)
        if not extra:
            break
        drop = extra
    # Answered before the whole request arrived: the client connection cannot be reused.
    keep = ex.client_keep_alive and ex.req_done
    if ex.is_head or status in (204, 304):
        framing = FRAMING_NONE
        if te is not None and ex.is_head and not ex.http10:
            parts += (b"Transfer-Encoding: ", te, b"\r\n")
    elif te is not None and _is_chunked(te) and not ex.http10:
        framing = FRAMING_CHUNKED
        parts += (b"Transfer-Encoding: ", te, b"\r\n")
    elif te is None and has_length:
        framing = FRAMING_LENGTH
    else:
        # Ends when the backend closes (or HTTP/1.0 client of a chunked body): so must the client side.
        framing = FRAMING_CLOSE
        keep = False
    rel = ex.release
    assert rel is not None
    # connection_header, inline; ex.extra: what the edge adds for the route (HSTS), usually nothing.
    parts += (b"Connection: close\r\n" if not keep else b"Connection: keep-alive\r\n" if ex.http10 else b"",
              rel.header, ex.extra, b"\r\n")
    return b"".join(parts), framing, keep, events


def switch_head_for_client(ex: Exchange, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The backend's 101 for the client: its end-to-end headers, its `Upgrade`, and the release's header."""
    parts = [status_line(101), reason, b"\r\n"]
    protocol = b"websocket"
    for name, value in headers:
        lname = name.lower()
        if lname == b"upgrade":
            protocol = value
        elif lname not in _RESP_SPECIAL and not lname.startswith(b"proxy-"):
            parts += (name, b": ", value, b"\r\n")
    parts += (b"Connection: Upgrade\r\nUpgrade: ", protocol, b"\r\n")
    if ex.release is not None:
        parts.append(ex.release.header)
    parts.append(b"\r\n")
    return b"".join(parts)


def informational_head_for_client(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx response head, passed on as it came."""
    parts = [status_line(status), reason, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
