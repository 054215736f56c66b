"""Health probes, the health gate, and the watch over instances that have passed it.

The gate is deterministic: an instance passes after `healthy_threshold` consecutive successful
probes spaced `interval` apart; it fails when the instance exits, when it answers its health path with
a failing status (a 5xx, a 404) `unhealthy_threshold` times in a row, or when the `deadline` passes.
Only an answer counts toward failing fast: a refused connection or a timeout is an app still starting
(binding takes time), and 503 is the status that says "not ready yet" (warming up): those wait for the
deadline. Every verdict carries its evidence (probe results, exit code, last log lines).

The watch (`watch_instances`) judges instances that already take traffic (min_ready, verification
windows): each must keep running and keep answering its health path; it fails at the first exit or at
`unhealthy_threshold` failed probes in a row, with the evidence.

A probe is `GET health.path`, or with `health.command` that command: run on ingot's host (not inside
the instance: a runtime has no `exec`), with the instance's INGOT_* variables (`CheckContext`), killed
after `timeout`; exit 0 passes. A worker (`port: null`) without a command has nothing to probe: running is
all it shows, so its gate passes once it runs, and strategy.min_ready (the settle step) is what judges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from ingot.deploy_params import HealthPolicy
from ingot.httpclients import instance_client
from ingot.spec.models import expand_own

# What a health command's output is cut to in a probe's detail.
COMMAND_DETAIL_CHARS = 200


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    elapsed_ms: float
    status: int | None = None  # the HTTP status, when the instance answered

    @property
    def answered_failing(self) -> bool:
        """A failing answer that shows the instance is up and broken, not still starting (see the gate)."""
        return not self.ok and self.status is not None and self.status != NOT_READY


# The status an app answers while it warms up: the gate waits for it to change, up to the deadline.
NOT_READY = 503


@dataclass
class GateVerdict:
    healthy: bool
    reason: str
    probes: list[ProbeResult] = field(default_factory=list)
    waited_s: float = 0.0


@dataclass(frozen=True)
class CheckContext:
    """Where a health command runs for one instance: its INGOT_* variables (and INGOT_VOLUME_*), its
    checkout as the working directory (process runtime)."""

    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


async def command_probe(command: Sequence[str], timeout: float, context: CheckContext) -> ProbeResult:
    """Run a health command; exit 0 within `timeout` passes. Its output's last line is the detail."""
    started = time.perf_counter()
    env = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ} | context.env
    argv = expand_own(command, context.env)
    cwd = context.cwd if context.cwd and os.path.isdir(context.cwd) else None
    try:
        child = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return ProbeResult(False, f"health command could not run: {exc}", (time.perf_counter() - started) * 1000)
    try:
        output, _ = await asyncio.wait_for(child.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # its own session: whatever it started goes too
        await child.wait()
        elapsed = (time.perf_counter() - started) * 1000
        return ProbeResult(False, f"health command timed out after {timeout:g}s", elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    lines = output.decode("utf-8", "replace").strip().splitlines()
    said = f": {lines[-1][:COMMAND_DETAIL_CHARS]}" if lines else ""
    return ProbeResult(child.returncode == 0, f"exit {child.returncode}{said}", elapsed)


async def probe(client: httpx.AsyncClient, host: str, port: int, policy: HealthPolicy,
                context: CheckContext | None = None) -> ProbeResult:
    """One probe of an instance: its health command, else GET its health path; a worker without a command
    passes (whether it runs is observed apart)."""
    if policy.command is not None:
        return await command_probe(policy.command, policy.timeout, context or CheckContext())
    if not policy.http:
        return ProbeResult(True, "running (a worker without health.command)", 0.0)
    started = time.perf_counter()
    try:
        response = await client.get(f"http://{host}:{port}{policy.path}", timeout=policy.timeout)
    except httpx.HTTPError as exc:
        detail = type(exc).__name__
        return ProbeResult(False, detail, (time.perf_counter() - started) * 1000)
    elapsed = (time.perf_counter() - started) * 1000
    ok = 200 <= response.status_code < 400
    return ProbeResult(ok, f"HTTP {response.status_code}", elapsed, response.status_code)


async def wait_healthy(
    host: str,
    port: int,
    policy: HealthPolicy,
    still_running: Callable[[], str | None],
    context: CheckContext | None = None,
) -> GateVerdict:
    """Probe until healthy, the process dies (`still_running` returns why), it answers failing
    `unhealthy_threshold` times in a row, or the deadline passes."""
    started = time.monotonic()
    consecutive = 0
    failing = 0  # failing answers in a row
    probes: list[ProbeResult] = []
    # Probes go straight to the instance, never through a proxy from the environment.
    async with instance_client() as client:
        while True:
            died = still_running()
            if died:
                return GateVerdict(False, died, probes[-5:], time.monotonic() - started)
            if not policy.probes:
                return GateVerdict(True, "running (no health.command: min_ready judges it)", [],
                                   time.monotonic() - started)
            result = await probe(client, host, port, policy, context)
            probes.append(result)
            consecutive = consecutive + 1 if result.ok else 0
            failing = failing + 1 if result.answered_failing else 0
            if consecutive >= policy.healthy_threshold:
                return GateVerdict(True, "healthy", probes[-5:], time.monotonic() - started)
            elapsed = time.monotonic() - started
            if failing >= policy.unhealthy_threshold:
                return GateVerdict(
                    False,
                    f"answered {policy.path} with {result.detail} {failing} time(s) in a row "
                    f"(health.unhealthy_threshold: {policy.unhealthy_threshold}); failed at once, without "
                    f"waiting for the {policy.deadline:g}s deadline",
                    probes[-5:],
                    elapsed,
                )
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
            # A failing answer is spaced by the interval too: the app is up, and a second look a moment
            # later is what tells a blip from a broken release.
            pause = policy.interval if result.ok or result.answered_failing else min(policy.interval, 0.1)
            await asyncio.sleep(min(pause, max(0.0, policy.deadline - elapsed)))


# How often a watched instance's process (or container) is looked at: a death is seen within this, so
# that traffic can go back before the other instances die too. Probes keep the health interval.
OBSERVE_EVERY = 0.1


@dataclass(frozen=True)
class Watched:
    """One instance under watch: where it answers, and how to tell whether it still runs."""

    name: str
    host: str
    port: int
    exited: Callable[[], Awaitable[str | None]]  # why it no longer runs, or None while it does
    context: CheckContext | None = None  # for a health command


@dataclass
class WatchVerdict:
    stable: bool
    reason: str
    instance: str | None = None  # the one that failed
    probes: list[ProbeResult] = field(default_factory=list)  # its last probes
    seconds: float = 0.0  # how long it was watched
    probed: int = 0  # probes made, over all instances


async def watch_instances(instances: Sequence[Watched], policy: HealthPolicy, seconds: float | None,
                          check: Callable[[], None] = lambda: None,
                          observe_every: float = OBSERVE_EVERY) -> WatchVerdict:
    """Watch running instances for `seconds` (None: until cancelled or one fails).

    Each is probed every `interval` from the start, and its process observed every `observe_every`.
    Returns unstable at the first exit or at `unhealthy_threshold` failed probes in a row (an instance
    whose probe fails because it died is reported as exited), stable once `seconds` have passed.
    `check` is called between looks and may raise (an operator's abort).
    """
    started = time.monotonic()  # again once the client exists: its set-up is no time watched
    probed = [0]
    recent: dict[str, deque[ProbeResult]] = {w.name: deque(maxlen=5) for w in instances}

    def verdict(stable: bool, reason: str, who: Watched | None = None) -> WatchVerdict:
        return WatchVerdict(stable, reason, who.name if who else None, list(recent[who.name]) if who else [],
                            round(time.monotonic() - started, 3), probed[0])

    async def keep_probing(client: httpx.AsyncClient, who: Watched) -> Watched:
        failed = 0
        while True:
            result = await probe(client, who.host, who.port, policy, who.context)
            probed[0] += 1
            recent[who.name].append(result)
            failed = 0 if result.ok else failed + 1
            if failed >= policy.unhealthy_threshold:
                return who
            await asyncio.sleep(policy.interval)

    async with instance_client() as client:
        started = time.monotonic()
        probers = [asyncio.create_task(keep_probing(client, who)) for who in instances if policy.probes]
        try:
            while True:
                check()
                for who in instances:
                    why = await who.exited()
                    if why:
                        return verdict(False, f"stopped running ({why})", who)
                failing = next((task for task in probers if task.done()), None)
                if failing is not None:
                    who = failing.result()
                    # A refused probe is often the first sign of a death: say exited, not unhealthy.
                    why = await who.exited()
                    if why:
                        return verdict(False, f"stopped running ({why})", who)
                    on = " ".join(policy.command) if policy.command is not None else policy.path
                    return verdict(False, f"failed {policy.unhealthy_threshold} health probe(s) in a row on "
                                          f"{on} (last: {recent[who.name][-1].detail})", who)
                elapsed = time.monotonic() - started
                if seconds is not None and elapsed >= seconds:
                    return verdict(True, "stayed up and healthy")
                wait = observe_every if seconds is None else min(observe_every, seconds - elapsed)
                if probers:
                    await asyncio.wait(probers, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(wait)
        finally:
            for task in probers:
                task.cancel()
            await asyncio.gather(*probers, return_exceptions=True)
