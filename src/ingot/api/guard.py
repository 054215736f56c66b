"""The API's gate, as ASGI middleware: the token and the body size are checked before a byte of body is read.

A dependency would run after FastAPI has read and parsed the body, so a 300 MB anonymous POST used to cost
a gigabyte of memory before its 401. Here, in order:
1. a declared `Content-Length` over the cap is 413 at once (any path);
2. a protected path needs a bearer token: none or an unknown one is 401 after a delay that grows with that
   client's recent failures (logged without the token), a known one without the scope the method needs
   is 403;
3. a body without a declared length (chunked) is counted as it is read and cut at the cap with 413.
Neither answer reads the body: the connection is closed after it (`Connection: close`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from ingot.actor import acting_as
from ingot.tokens import authenticate

log = logging.getLogger("ingot.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_DEFAULT = 1024 * 1024
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def needed_scope(method: str) -> str:
    """Reads need `read`; every action (POST) needs `deploy`. `admin` holds both (and is what the default
    token has)."""
    return "read" if method in _SAFE_METHODS else "deploy"


class Backoff:
    """Failed authentications per client address: each is answered after `base * 2**(n-1)` seconds (at most
    `ceiling`), n being the failures in a row from that address, forgotten after `forget` quiet seconds.
    Bounded memory: the `capacity` most recent addresses are kept. A client with `max_waiting` failures
    already waiting is answered 429 at once (nothing checked), so parallel guessing gains nothing."""

    def __init__(self, base: float = 0.1, ceiling: float = 5.0, forget: float = 60.0, capacity: int = 4096,
                 max_waiting: int = 4) -> None:
        self.base = base
        self.ceiling = ceiling
        self.forget = forget
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._clients: OrderedDict[str, list[float]] = OrderedDict()  # addr -> [failures, last, waiting]

    def failed(self, client: str) -> float | None:
        """Record a failure; the delay to answer it after, or None when the client must be refused (429)."""
        now = time.monotonic()
        entry = self._clients.pop(client, None)
        if entry is None or now - entry[1] > self.forget:
            entry = [0.0, now, entry[2] if entry else 0.0]
        if entry[2] >= self.max_waiting:
            self._clients[client] = entry
            return None
        entry[0] += 1
        entry[1] = now
        self._clients[client] = entry
        while len(self._clients) > self.capacity:
            self._clients.popitem(last=False)
        return 0.0 if self.ceiling <= 0 else min(self.base * 2 ** (entry[0] - 1), self.ceiling)

    def waiting(self, client: str, change: int) -> None:
        entry = self._clients.get(client)
        if entry is not None:
            entry[2] = max(0.0, entry[2] + change)

    def count(self, client: str) -> int:
        entry = self._clients.get(client)
        return int(entry[0]) if entry else 0

    def succeeded(self, client: str) -> None:
        entry = self._clients.get(client)
        if entry is not None and not entry[2]:
            del self._clients[client]

    def __len__(self) -> int:
        return len(self._clients)


class Guard:
    def __init__(self, app: ASGIApp, *, keys_dir: Path, public: Callable[[str], bool],
                 max_body: int = MAX_BODY_DEFAULT, backoff: Backoff | None = None) -> None:
        self.app = app
        self.keys_dir = keys_dir
        self.public = public
        self.max_body = max_body
        # `is None`, not `or`: a Backoff with no client yet has length 0, which made `--auth-delay` ignored.
        self.backoff = backoff if backoff is not None else Backoff()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if declared > self.max_body:
                await _answer(send, 413, f"the request body is larger than the API accepts ({self.max_body} bytes)")
                return
        path = scope.get("path", "")
        if self.public(path):
            await self.app(scope, self._capped(receive), send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        presented = _bearer(headers.get(b"authorization"))
        token = authenticate(self.keys_dir, presented)
        if token is None:
            await self._refuse(send, client, scope["method"], path, "no token" if not presented else "unknown token")
            return
        self.backoff.succeeded(client)
        needed = needed_scope(scope["method"])
        if not token.allows(needed):
            await _answer(send, 403, f"the token {token.name!r} has scope {token.scope}; this needs {needed}")
            return
        with acting_as(f"{token.name} (api)"):
            await self.app(scope, self._capped(receive), send)

    async def _refuse(self, send: Send, client: str, method: str, path: str, why: str) -> None:
        delay = self.backoff.failed(client)
        if delay is None:
            log.warning("failed authentication from %s: %s %s (%s); too many waiting: 429", client, method, path, why)
            await _answer(send, 429, "too many failed authentications from this address; wait and retry",
                          extra=[(b"retry-after", b"%d" % max(1, round(self.backoff.ceiling)))])
            return
        log.warning("failed authentication from %s: %s %s (%s; %d in a row), answered in %.2f s",
                    client, method, path, why, self.backoff.count(client), delay)
        self.backoff.waiting(client, +1)
        try:
            await asyncio.sleep(delay)
        finally:
            self.backoff.waiting(client, -1)
        await _answer(send, 401, "a valid bearer token is needed: see 'ingot token show'",
                      extra=[(b"www-authenticate", b"Bearer")])

    def _capped(self, receive: Receive) -> Receive:
        seen = 0
        cap = self.max_body

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    # FastAPI turns an HTTPException raised while reading the body into its answer.
                    raise HTTPException(413, f"the request body is larger than the API accepts ({cap} bytes)",
                                        headers={"Connection": "close"})
            return message

        return counted


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(bytes(name).lower(), bytes(value))
    return found


def _bearer(value: bytes | None) -> str | None:
    if not value:
        return None
    kind, _, credentials = value.decode("latin-1").partition(" ")
    return credentials.strip() or None if kind.lower() == "bearer" else None


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
