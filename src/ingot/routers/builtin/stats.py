"""What a release reports: requests, 5xx answers, requests in flight and a window of latencies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingot.routers.base import LATENCY_WINDOW, ReleaseStats

if TYPE_CHECKING:
    from ingot.routers.builtin.exchange import Exchange


class ReleaseCounters:
    """The counters behind `ReleaseStats`; `Release` extends them (one object, no extra lookups)."""

    __slots__ = ("errors", "in_flight", "lat", "lat_i", "lat_n", "requests", "streams")

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.lat = [0.0] * LATENCY_WINDOW  # a ring of the last latencies, in seconds
        self.lat_i = 0
        self.lat_n = 0
        self.streams: set[Exchange] = set()  # long-lived exchanges (WebSocket, SSE), in in_flight too

    def record(self, status: int, seconds: float | None) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        if seconds is not None:
            self.add_latency(seconds)

    def add_latency(self, seconds: float) -> None:
        i = self.lat_i
        self.lat[i] = seconds
        self.lat_i = i + 1 if i + 1 < LATENCY_WINDOW else 0
        if self.lat_n < LATENCY_WINDOW:
            self.lat_n += 1

    def snapshot(self) -> ReleaseStats:
        n = self.lat_n
        if n == 0:
            return ReleaseStats(self.requests, self.errors, self.in_flight, streams=len(self.streams))
        window = sorted(self.lat[:n])
        return ReleaseStats(
            requests=self.requests,
            errors_5xx=self.errors,
            in_flight=self.in_flight,
            p50_ms=_nearest_rank(window, 0.50) * 1000.0,
            p99_ms=_nearest_rank(window, 0.99) * 1000.0,
            mean_ms=sum(window) / n * 1000.0,
            streams=len(self.streams),
        )


def _nearest_rank(ordered: list[float], q: float) -> float:
    idx = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))
    return ordered[idx]
