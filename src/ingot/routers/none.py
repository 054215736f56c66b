"""The router of a worker (`port: null`): no listener and no traffic, only the bookkeeping of one.

A worker is deployed by the same plans as any service (start, wait healthy, switch, settle, stop), so it
gets a router that keeps the weights and pools the executor sets, in memory, and does nothing else: a
switch moves no traffic, a drain has nothing in flight. The store's activation stays the record of what
is live; this object only lets the plans, self-heal and recovery run unchanged.
"""

from __future__ import annotations

from ingot.deploy_params import NO_LISTENER
from ingot.routers.base import Address, HealthCheck, ReleaseStats


class NoRouter:
    kind = "none"

    def __init__(self) -> None:
        self._weights: dict[str, int] = {}
        self._pools: dict[str, list[Address]] = {}

    @property
    def listen_address(self) -> Address:
        return NO_LISTENER

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        self._pools[release] = list(addrs)

    async def set_weights(self, weights: dict[str, int]) -> None:
        self._weights = dict(weights)

    async def drain(self, release: str, timeout: float) -> bool:
        return True  # nothing is ever in flight through it

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        self._pools[release] = [a for a in self._pools.get(release, []) if a not in addrs]
        return True

    async def remove_release(self, release: str) -> None:
        self._weights.pop(release, None)
        self._pools.pop(release, None)

    async def set_health(self, check: HealthCheck) -> None:
        return None

    def backend_health(self) -> dict[str, dict[str, str]]:
        return {}

    def stats(self) -> dict[str, ReleaseStats]:
        return {}

    def weights(self) -> dict[str, int]:
        return dict(self._weights)
