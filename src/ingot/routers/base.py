"""The one small interface every router implements (builtin proxy, HAProxy, Kubernetes).

A router is the traffic entry point of one service in one environment. It splits new requests
between *releases* by relative integer weight; each release has a pool of backend addresses.

Contract every implementation keeps (tests/contract/ runs the same tests against each):

- Mutations (`set_backends`, `set_weights`, `drain`, `drain_backends`, `remove_release`) are coroutines
  so that routers that talk to something remote (HAProxy runtime API, the edge's control socket) fit;
  each is atomic from the point of view of new requests. Reads (`stats`, `weights`, `listen_address`)
  are plain and cheap: remote routers answer them from their last poll.
- A release that is named nowhere, or has weight 0, gets no new requests.
- `drain(release)` takes the release OUT OF ROTATION (no new requests, whatever its weight, until a
  later `set_weights` gives it a weight > 0 again) and waits for its requests in flight. It is only
  for a release that is leaving: never call it on the release that serves. To take some instances
  of a serving release away, use `drain_backends`, which keeps the release's weight.
- A backend or release that stops receiving new requests still finishes the ones it has; the
  drain calls are how the caller learns that it is safe to stop its instances. Both return False
  when the timeout passed with requests still in flight (the caller says so: it is not silent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

Address = tuple[str, int]


@dataclass(frozen=True)
class ReleaseStats:
    """Counters of one release as seen by its router.

    `requests` and `errors_5xx` are cumulative since the release was first seen by the router;
    `errors_5xx` includes answers the router made itself (502/504) for requests it had chosen this
    release for, and responses cut off by the backend. Latency fields (milliseconds, request start to
    response end) cover a sliding window: the builtin router keeps the last `LATENCY_WINDOW`
    requests per release. They are 0.0 while the window is empty.
    """

    requests: int = 0
    errors_5xx: int = 0
    in_flight: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


# How many recent requests per release the latency figures describe (builtin router).
LATENCY_WINDOW = 2048


@runtime_checkable
class Router(Protocol):
    """Splits a service's traffic between releases by weight and drains the ones it leaves."""

    @property
    def listen_address(self) -> Address:
        """Where clients connect; the bound port once started (useful with port 0)."""
        ...

    async def start(self) -> None:
        """Begin accepting traffic; raises `ingot.errors.OperationFailed` if the address is taken."""
        ...

    async def stop(self) -> None:
        """Stop accepting and close every connection, in-flight or not."""
        ...

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        """Replace the pool of `release`; removed backends get no new requests, in-flight ones finish."""
        ...

    async def set_weights(self, weights: dict[str, int]) -> None:
        """Atomically replace all weights; releases not named get weight 0."""
        ...

    async def drain(self, release: str, timeout: float) -> bool:
        """Wait until `release` has no request in flight; False if `timeout` seconds passed first."""
        ...

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        """Take `addrs` out of `release`'s pool (its weight stays) and wait until they have nothing in
        flight; False if `timeout` seconds passed first."""
        ...

    async def remove_release(self, release: str) -> None:
        """Forget `release` (weight, pool, counters) and close its idle upstream connections."""
        ...

    def stats(self) -> dict[str, ReleaseStats]: ...

    def weights(self) -> dict[str, int]: ...
