"""Where a request goes: releases by smooth weighted round-robin, then the least busy backend.

Only a release's `usable` backends are candidates: the pool minus the backends health checks
ejected (all of the pool when the router fails open, see `ingot.routers.health`). Without health
checks, a connect failure marks a backend down for a while (`down_until`). Either way
`next_backend` moves the request to another backend of its release, or of another weighted release.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ingot.routers.base import Address
from ingot.routers.builtin.stats import ReleaseCounters
from ingot.routers.health import BackendHealth

if TYPE_CHECKING:
    from ingot.routers.builtin.exchange import Exchange
    from ingot.routers.builtin.upstream import UpstreamProtocol


class Backend(BackendHealth):
    """One backend address of a release: its load, health and idle keep-alive connections."""

    __slots__ = ("down_until", "host", "idle", "in_flight", "port", "retired")

    def __init__(self, addr: Address) -> None:
        super().__init__(addr)
        self.host, self.port = addr
        self.idle: list[UpstreamProtocol] = []  # LIFO: the most recently used connection is the likeliest alive
        self.in_flight = 0
        self.down_until = 0.0
        self.retired = False

    def retire(self) -> None:
        self.retired = True
        idle, self.idle = self.idle, []
        for up in idle:
            up.close()


class Release(ReleaseCounters):
    """A release as the router sees it: weight, backends, and `drain` calls waiting for in_flight 0."""

    __slots__ = ("backends", "current", "header", "name", "named_header", "rr", "usable", "waiters", "weight")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.named_header = b"X-Ingot-Release: " + name.encode("ascii") + b"\r\n"
        self.header = self.named_header  # empty when the router does not name releases
        self.backends: list[Backend] = []
        self.usable: list[Backend] = self.backends  # `backends` minus the ejected (router._refresh_usable)
        self.weight = 0
        self.current = 0  # smooth weighted round-robin state
        self.rr = 0
        self.waiters: list[asyncio.Future[None]] = []

    def pick(self, tried: list[Backend] | None, now: float) -> Backend | None:
        """Least in flight among usable backends, rotating the start so ties spread evenly.

        A backend marked down is still used when nothing healthy is left: a 1 s blackout of a
        single-instance release would be worse than one more connect attempt.
        """
        backends = self.usable
        n = len(backends)
        if n == 1:  # the usual pool of one: it is the answer whether down or not (see above)
            b = backends[0]
            return None if tried is not None and b in tried else b
        if n == 0:
            return None
        start = self.rr
        self.rr = start + 1 if start + 1 < n else 0
        best: Backend | None = None
        fallback: Backend | None = None
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
        if self.waiters:
            self.wake_drained()

    def wake_drained(self) -> None:
        """Wake the `drain` calls waiting for this release once nothing is in flight."""
        if self.in_flight == 0:
            waiters, self.waiters = self.waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def choose_release(active: list[Release]) -> Release | None:
    """Smooth weighted round-robin (as nginx) over releases with weight > 0: exact proportions, no bursts."""
    if len(active) == 1:
        return active[0]
    best: Release | None = None
    total = 0
    for rel in active:
        rel.current += rel.weight
        total += rel.weight
        if best is None or rel.current > best.current:
            best = rel
    if best is not None:
        best.current -= total
    return best


def next_backend(ex: Exchange, active: list[Release], now: float) -> Backend | None:
    """A backend of the exchange's release, else of any other weighted release (the request moves there)."""
    rel = ex.release
    assert rel is not None
    b = rel.pick(ex.tried, now)
    if b is not None:
        return b
    for other in active:
        if other is rel:
            continue
        b = other.pick(ex.tried, now)
        if b is not None:
            rel.leave()
            other.enter()
            ex.release = other
            return b
    return None
