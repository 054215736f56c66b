"""Helpers for the HAProxy router tests: a routed set-up, an HTTP client, polling (processes: tests/support/routers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from ingot.routers.base import ReleaseStats
from ingot.routers.haproxy import HAProxyRouter
from ingot.routers.testing import TestBackend, serving


@asynccontextmanager
async def routed(
    workdir: Path, haproxy: str, pools: dict[str, list[TestBackend]], weights: dict[str, int], **options: Any
) -> AsyncIterator[tuple[HAProxyRouter, str]]:
    """Backends started, a started router over them with `weights`; yields (router, base URL)."""
    router = HAProxyRouter(("127.0.0.1", 0), name="test", workdir=workdir, haproxy=haproxy, **options)
    async with serving(router, pools, weights) as base:
        yield router, base


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=10.0)


async def poll_stats(
    router: HAProxyRouter, condition: Callable[[dict[str, ReleaseStats]], bool], what: str, timeout: float = 10.0
) -> dict[str, ReleaseStats]:
    """Poll haproxy (not the background poll) until `condition(stats)` holds; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await router.refresh()
        if condition(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last stats: {stats}")
        await asyncio.sleep(0.02)
