"""Helpers of the contract suite: a routed set-up, an HTTP client, fresh stats, health waits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from ingot.routers.base import Address, ReleaseStats, Router
from ingot.routers.health import address_key
from ingot.routers.testing import TestBackend, serving
from tests.support.switch_load import wait_until


@asynccontextmanager
async def routed(
    router: Router, pools: dict[str, list[TestBackend]], weights: dict[str, int]
) -> AsyncIterator[tuple[Router, str]]:
    """Backends started, `router` started over them with `weights`; yields (router, base URL)."""
    async with serving(router, pools, weights) as base:
        yield router, base


def client(base: str, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=timeout)


async def fresh_stats(router: Router) -> dict[str, ReleaseStats]:
    """`stats()` as of now: routers that answer from a poll (HAProxy) are polled first."""
    refresh = getattr(router, "refresh", None)
    if refresh is not None:
        return dict(await refresh())
    return router.stats()


async def stats_when(
    router: Router, condition: Callable[[dict[str, ReleaseStats]], bool], what: str, timeout: float = 10.0
) -> dict[str, ReleaseStats]:
    """Poll fresh stats until `condition` holds (counters may trail the answers a little)."""
    seen: dict[str, dict[str, ReleaseStats]] = {}

    async def holds() -> bool:
        seen["last"] = await fresh_stats(router)
        return condition(seen["last"])

    await wait_until(holds, what, timeout)
    return seen["last"]


def health(router: Router, release: str, addr: Address) -> str:
    return router.backend_health()[release][address_key(addr)]


async def health_becomes(
    router: Router, release: str, addr: Address, prefix: str, timeout: float = 10.0
) -> float:
    """Wait until the backend's health starts with `prefix` ("up", "ejected"); returns the seconds waited."""
    started = time.monotonic()
    await wait_until(lambda: health(router, release, addr).startswith(prefix),
                     f"{address_key(addr)} of {release} to be {prefix}", timeout)
    return time.monotonic() - started
