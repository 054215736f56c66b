"""Backend health for every router: the counters, the ejection rules, and the prober.

The rules are those of `ingot.routers.base.HealthCheck`; this module is the one place they are
kept, for the builtin router and HAProxy alike:

- `BackendHealth` is the state of one backend. The builtin router's `Backend` *is* one (its hot
  path resets `fails` with a single slot store when a response head arrives); HAProxy's servers
  each have one.
- `HealthMonitor` (one per router) holds the router's `HealthCheck`, turns request and probe
  outcomes into ejections and returns, and runs the prober: one task that starts a probe of every
  backend every `interval` (each probe a short task of its own, so a hung backend never delays the
  probes of the others, nor its own next probe, while it is up). An ejected backend has one probe
  at a time, and only probes started after its ejection count towards `rise`: the probes a
  stopped process held when it resumes all answer at once, and must not bring it back in one
  burst. It calls the router's `changed` callback after every ejection or return, which is when
  a router recomputes where requests go.
- `fail_open` and `serving` say which backends of a pool take new requests.

Probes are a raw HTTP/1.1 request (`probe_http`): one connection, one write, the status line.
httpx took about 1 ms more CPU per probe here (with one shared client; 40 ms with a client per
probe), on the router's own event loop, for nothing that a status line does not already say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ingot.routers.base import Address, HealthCheck

log = logging.getLogger("ingot.routers.health")

# Response bytes a probe reads (and drops) after the status line, so the backend can finish its
# answer and close first instead of being reset; beyond that the probe just closes.
PROBE_DRAIN_LIMIT = 64 * 1024


class BackendHealth:
    """Health of one backend: consecutive failed requests, consecutive probe outcomes, the verdict."""

    __slots__ = ("addr", "ejected", "ejected_at", "fails", "probe_fails", "probe_passes", "probing", "reason")

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self.fails = 0  # failed requests in a row; any answer resets it
        self.probe_fails = 0
        self.probe_passes = 0
        self.probing = 0  # probes under way
        self.ejected = False
        self.ejected_at = 0.0  # time.monotonic()
        self.reason = ""

    def status(self) -> str:
        return f"ejected: {self.reason}" if self.ejected else "up"


B = TypeVar("B", bound=BackendHealth)


def address_key(addr: Address) -> str:
    """`host:port` as `backend_health()` names a backend (`[v6]:port` for IPv6)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fail_open(pools: Iterable[Iterable[BackendHealth]]) -> bool:
    """True when the weighted `pools` have backends and every one of them is ejected.

    The router then sends requests to all of them as if none were (see `base.Router`: fail open).
    """
    seen = False
    for pool in pools:
        for backend in pool:
            if not backend.ejected:
                return False
            seen = True
    return seen


def serving(pool: list[B], open_: bool) -> list[B]:
    """The backends of `pool` that take new requests (all of them when the router fails open)."""
    return pool if open_ else [b for b in pool if not b.ejected]


class HealthMonitor:
    """The health of a router's backends under one `HealthCheck`, and the task that probes them.

    `targets()` lists the backends to watch now (every pool of every release); `changed()` is called
    after each ejection or return; the prober runs only while `running()` says the router does.
    Use from the router's event loop only.
    """

    def __init__(
        self,
        label: str,
        *,
        targets: Callable[[], Iterable[BackendHealth]],
        changed: Callable[[], None],
        running: Callable[[], bool],
    ) -> None:
        self.label = label
        self.check: HealthCheck | None = None
        self._targets = targets
        self._changed = changed
        self._running = running
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()

    @property
    def passive(self) -> bool:
        """Whether failed requests count (the router reports them only then)."""
        return self.check is not None and self.check.max_failures > 0

    def configure(self, check: HealthCheck) -> None:
        """Apply `check` from now on; see `base.Router.set_health` for what changes."""
        if not isinstance(check, HealthCheck):
            raise TypeError(f"set_health needs a HealthCheck, got {check!r}")
        if check == self.check:
            return
        self.check = check
        if not check.ejects:
            back = False
            for backend in self._targets():
                backend.fails = backend.probe_fails = backend.probe_passes = 0
                if backend.ejected:
                    backend.ejected, backend.reason = False, ""
                    back = True
            if back:
                log.info("%s: health check %s ejects nothing: every backend is back", self.label, check)
                self._changed()
        self.ensure_running()

    # ---- outcomes ------------------------------------------------------------------------------

    def request_failed(self, backend: BackendHealth, detail: str, count: int = 1) -> None:
        """`count` requests in a row were not answered by `backend` (see `HealthCheck`)."""
        check = self.check
        if check is None or check.max_failures == 0:
            return
        backend.fails += count
        if not backend.ejected and backend.fails >= check.max_failures:
            self._eject(backend, f"{backend.fails} requests in a row failed, last: {detail}")

    @staticmethod
    def request_answered(backend: BackendHealth) -> None:
        backend.fails = 0  # the builtin router does this inline on its hot path

    def probe_done(self, backend: BackendHealth, ok: bool, detail: str, started: float) -> None:
        """The outcome of a probe of `backend` that started at `started` (`time.monotonic()`)."""
        check = self.check
        if check is None:
            return
        if ok and backend.ejected and started < backend.ejected_at:
            return  # sent before the ejection: says nothing about coming back
        if ok:
            backend.probe_fails = 0
            backend.probe_passes += 1
            if backend.ejected and backend.probe_passes >= check.rise:
                self._restore(backend, detail)
            return
        backend.probe_passes = 0
        backend.probe_fails += 1
        if not backend.ejected and check.path is not None and backend.probe_fails >= check.fall:
            self._eject(backend, f"{backend.probe_fails} probes of {check.path} in a row failed, last: {detail}")

    def _eject(self, backend: BackendHealth, reason: str) -> None:
        backend.ejected, backend.reason = True, reason
        backend.ejected_at = time.monotonic()
        backend.probe_passes = 0  # it comes back after `rise` passes from now on
        log.warning("%s: backend %s ejected: %s", self.label, address_key(backend.addr), reason)
        self._changed()

    def _restore(self, backend: BackendHealth, detail: str) -> None:
        backend.ejected, backend.reason = False, ""
        backend.fails = backend.probe_fails = 0
        log.info("%s: backend %s is back (%s)", self.label, address_key(backend.addr), detail)
        self._changed()

    # ---- the prober ----------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the prober if there is a check, the router runs, and it is not running already."""
        if self.check is None or not self._running():
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe_forever(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            check = self.check
            if check is None or not self._running():
                return
            for backend in self._targets():
                # Up: a probe every tick (with a path). Ejected: one at a time, path or not
                # (`OPTIONS *` without one): that is how it comes back.
                if backend.probing == 0 if backend.ejected else check.path is not None:
                    task = loop.create_task(self._probe(backend, check))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
            due += check.interval
            now = loop.time()
            if due < now:
                due = now  # fell behind (a busy loop): go on from now rather than in a burst
            await asyncio.sleep(due - now)

    async def _probe(self, backend: BackendHealth, check: HealthCheck) -> None:
        started = time.monotonic()
        backend.probing += 1
        try:
            if check.path is not None:
                ok, detail = await probe_http(backend.addr, check.path, check.timeout)
            else:
                ok, detail = await probe_http(backend.addr, "*", check.timeout, method="OPTIONS", any_status=True)
        finally:
            backend.probing -= 1
        if self.check is check:  # a result under a check that was replaced meanwhile says nothing
            try:
                self.probe_done(backend, ok, detail, started)
            except Exception:  # pragma: no cover - a bug in a callback must not kill probing
                log.exception("%s: applying a probe result failed", self.label)


# ---- one probe ----------------------------------------------------------------------------------


def _connect_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"connect failed: {exc.strerror or exc}"


async def probe_http(
    addr: Address, path: str, timeout: float, *, method: str = "GET", any_status: bool = False
) -> tuple[bool, str]:
    """`GET path` on `addr`: (True, "HTTP 200") for 200-399 within `timeout`, else (False, why).

    With `any_status`, every status passes: only an answer is asked for.
    """
    host, port = addr
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"no connection within {timeout:g} s"
    except OSError as exc:
        return False, _connect_failure(exc)
    try:
        authority = address_key(addr).encode("ascii")
        writer.write(
            method.encode("ascii") + b" " + path.encode("ascii") + b" HTTP/1.1\r\nHost: " + authority
            + b"\r\nUser-Agent: ingot-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        try:
            async with asyncio.timeout_at(deadline):
                line = await reader.readline()
        except TimeoutError:
            return False, f"no answer within {timeout:g} s"
        except ConnectionResetError:
            return False, "closed without answering"  # a reset: it closed with our request unread
        except OSError as exc:
            return False, f"connection lost: {exc.strerror or exc}"
        verdict = _status_verdict(line, any_status)
        # Read the rest (best effort, same deadline) so the backend closes first; never a verdict.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout_at(deadline):
                seen = 0
                while seen <= PROBE_DRAIN_LIMIT:
                    chunk = await reader.read(16384)
                    if not chunk:
                        break
                    seen += len(chunk)
        return verdict
    finally:
        writer.close()


def _status_verdict(line: bytes, any_status: bool) -> tuple[bool, str]:
    if not line:
        return False, "closed without answering"
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        return False, f"not an HTTP answer: {line[:40]!r}"
    status = int(parts[1])
    return any_status or 200 <= status < 400, f"HTTP {status}"
