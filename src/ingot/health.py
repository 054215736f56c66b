"""Health probes and the health gate.

The gate is deterministic: an instance passes after `healthy_threshold` consecutive successful
probes spaced `interval` apart; it fails when the instance exits or the `deadline` passes. Every
verdict carries its evidence (probe results, exit code, last log lines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ingot.deploy_params import HealthPolicy


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    elapsed_ms: float


@dataclass
class GateVerdict:
    healthy: bool
    reason: str
    probes: list[ProbeResult] = field(default_factory=list)
    waited_s: float = 0.0


async def probe(client: httpx.AsyncClient, host: str, port: int, policy: HealthPolicy) -> ProbeResult:
    started = time.perf_counter()
    try:
        response = await client.get(f"http://{host}:{port}{policy.path}", timeout=policy.timeout)
    except httpx.HTTPError as exc:
        detail = type(exc).__name__
        return ProbeResult(False, detail, (time.perf_counter() - started) * 1000)
    elapsed = (time.perf_counter() - started) * 1000
    if 200 <= response.status_code < 400:
        return ProbeResult(True, f"HTTP {response.status_code}", elapsed)
    return ProbeResult(False, f"HTTP {response.status_code}", elapsed)


async def wait_healthy(
    host: str,
    port: int,
    policy: HealthPolicy,
    still_running: Callable[[], str | None],
) -> GateVerdict:
    """Probe until healthy, the process dies (`still_running` returns why), or the deadline passes."""
    started = time.monotonic()
    consecutive = 0
    probes: list[ProbeResult] = []
    # Probes go straight to the instance, never through a proxy from the environment.
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            died = still_running()
            if died:
                return GateVerdict(False, died, probes[-5:], time.monotonic() - started)
            result = await probe(client, host, port, policy)
            probes.append(result)
            consecutive = consecutive + 1 if result.ok else 0
            if consecutive >= policy.healthy_threshold:
                return GateVerdict(True, "healthy", probes[-5:], time.monotonic() - started)
            elapsed = time.monotonic() - started
            if elapsed >= policy.deadline:
                last = result.detail
                return GateVerdict(
                    False,
                    f"not healthy within {policy.deadline:g}s deadline (last probe: {last})",
                    probes[-5:],
                    elapsed,
                )
            # Until the first success, poll at most every 100 ms so a fast starter is not held back a
            # full interval; once it answers, confirming probes are spaced by the configured interval.
            pause = policy.interval if result.ok else min(policy.interval, 0.1)
            await asyncio.sleep(min(pause, max(0.0, policy.deadline - elapsed)))
