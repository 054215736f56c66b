"""Keeps a certificate for every host the edge serves with `tls: auto`: installs stored ones at start, issues
missing ones, renews on the schedule of `renewal.py`, and never takes a working certificate away: a failed
renewal leaves the old one installed and is recorded (status, `on_event`) and retried with backoff.

The edge gives it the hosts (`want`) and two things of its front: the `challenges` mapping it serves on
plain HTTP and an async `install(host, fullchain_pem, key_pem)` (the front's `set_certificate`).
Removing the certificate of a host no longer routed is the edge's business (`remove_certificate`); the
files stay, so a host that comes back starts with its certificate.

Per host, `status()` says: state `pending` (no certificate yet, first attempt due or running), `valid`,
`renewing` (an attempt is running while the old certificate serves), `failed` (the last attempt failed;
`not_after` says until when the old certificate, if any, still serves), with `last_error` and
`next_attempt`. Persisted in `<home>/acme/status.json` so the backoff survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ingot.atomic import write_atomically
from ingot.edge.tls.acme_client import LETS_ENCRYPT, Account, AcmeClient, Issued, auto_tls_refusal
from ingot.edge.tls.renewal import RenewalPolicy, next_attempt
from ingot.edge.tls.store import CertificateStore, DamagedCertificate, StoredCertificate

log = logging.getLogger("ingot.edge.tls")
T = TypeVar("T")

Install = Callable[[str, bytes, bytes], Awaitable[None]]
OnEvent = Callable[[str, str, str], None]  # (host, kind, detail)

# Event kinds given to on_event: the edge writes them to the ledger.
ISSUED, RENEWED, FAILED, REFUSED, DAMAGED, ACCOUNT = ("tls_issued", "tls_renewed", "tls_failed", "tls_refused",
                                                      "tls_damaged", "acme_account")
# A wait that ends by the clock re-reads it at least this often (suspends, clock steps).
_LONGEST_SLEEP = 3600.0


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a daemon thread of its own. Not asyncio.to_thread: the default executor's threads are
    joined when the process exits, so an edge told to stop while an ACME server hangs would wait up to the
    client's timeout (90 s) before exiting. A stopped manager abandons the call instead (its result is
    dropped; the order is taken up again by the next start)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # given to the awaiting task, whatever it is
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"ingot-acme-{getattr(func, '__name__', 'call')}", daemon=True).start()
    return await future


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


def _from_iso(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


@dataclass
class HostStatus:
    host: str
    state: str = "pending"
    serial: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    last_attempt: datetime | None = None
    next_attempt: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "state": self.state, "serial": self.serial, "not_after": _iso(self.not_after),
                "last_error": self.last_error, "failures": self.failures, "last_attempt": _iso(self.last_attempt),
                "next_attempt": _iso(self.next_attempt)}

    def persisted(self) -> dict[str, Any]:
        # What survives a restart: the backoff. The certificate's own facts come from its file.
        return {"state": self.state, "last_error": self.last_error, "failures": self.failures,
                "last_attempt": _iso(self.last_attempt), "next_attempt": _iso(self.next_attempt)}


class CertificateManager:
    def __init__(self, home: Path, *, challenges: MutableMapping[str, str], install: Install,
                 directory: str | None = None, email: str | None = None, ca_bundle: str | None = None,
                 on_event: OnEvent | None = None, clock: Callable[[], datetime] = _utc_now,
                 policy: RenewalPolicy | None = None, jitter: Callable[[], float] = random.random,
                 concurrency: int = 4, acme_timeout: float = 90.0) -> None:
        # All under <home>/acme/, apart from the edge's own <home>/certs/<host>.pem (what the front serves).
        self.acme = AcmeClient(directory or LETS_ENCRYPT, home / "acme" / "accounts", email=email,
                               ca_bundle=ca_bundle, timeout=acme_timeout)
        self.store = CertificateStore(home / "acme" / "certs")
        self.status_file = home / "acme" / "status.json"
        self.challenges = challenges
        self._install = install
        self._on_event = on_event
        self.clock = clock
        self.policy = policy or RenewalPolicy()
        self._jitter = jitter
        self._slots = asyncio.Semaphore(concurrency)
        self._account_lock = asyncio.Lock()
        self._account: Account | None = None
        self._wanted: set[str] = set()
        self._hosts: dict[str, HostStatus] = {}
        self._certs: dict[str, StoredCertificate] = {}  # what is on disk and usable
        self._installed: dict[str, str] = {}  # host → serial the front has
        self._loaded: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._saved: dict[str, Any] = {}
        self._stopping = False
        self._started = False

    # -- the edge's side -----------------------------------------------------------------------------------

    async def start(self, hosts: Iterable[str] | None = None) -> None:
        """Read the saved status, install the stored certificates of the hosts (`hosts`, else those given to
        `want` before), then keep them in the background."""
        if self._started:
            return  # (a second hosts_changed while the first one is still installing stored certificates)
        self._started, self._stopping = True, False
        self._saved = self._read_status()
        for status in list(self._hosts.values()):  # wanted before the saved schedule was read
            if status.last_attempt is None and status.failures == 0:
                self._hosts[status.host] = self._restored(status.host, announce=False)
        if hosts is not None:
            self.want(hosts)
        for host in sorted(self._wanted):
            await self._load(host)
        self._loop_task = asyncio.create_task(self._run(), name="ingot-acme")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._loop_task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = None
        self._started = False

    async def hosts_changed(self, edge: object, auto_hosts: set[str]) -> None:
        """The edge's hook (server.py `CertificateManager`): the `tls: auto` hosts after each table change.
        The first call starts the manager."""
        self.want(auto_hosts)
        await self.start()

    def want(self, hosts: Iterable[str]) -> None:
        """The hosts to keep certificates for (the `tls: auto` routes' hosts); the rest are forgotten."""
        wanted = {h.lower() for h in hosts}
        self._wanted = wanted
        for host in list(self._hosts):
            if host not in wanted:
                if host in self._running:
                    self._running.pop(host).cancel()
                del self._hosts[host]
                self._loaded.discard(host)
                self._certs.pop(host, None)
                self._installed.pop(host, None)
        for host in wanted - set(self._hosts):
            self._hosts[host] = self._restored(host)
        self.wake()

    def wake(self) -> None:
        """Look at the schedule again now (after `want`, or a clock that tests moved)."""
        self._wake.set()

    def status(self) -> dict[str, dict[str, Any]]:
        return {host: self._hosts[host].as_dict() for host in sorted(self._hosts)}

    @property
    def account_url(self) -> str | None:
        return self._account.registration.uri if self._account else None

    # -- the schedule --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            delay = await self._tick()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the event being set
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _tick(self) -> float:
        """Start the attempts that are due; return how long until the next one."""
        now = self.clock()
        soonest = _LONGEST_SLEEP
        for host in sorted(self._wanted):
            status = self._hosts[host]
            if host not in self._loaded:
                await self._load(host)
            if host in self._running or status.next_attempt is None:
                continue  # running, or refused for good
            wait = (status.next_attempt - now).total_seconds()
            if wait <= 0:
                self._running[host] = asyncio.create_task(self._attempt(host), name=f"ingot-acme-{host}")
            else:
                soonest = min(soonest, wait)
        return soonest

    def _restored(self, host: str, announce: bool = True) -> HostStatus:
        status = HostStatus(host)
        refusal = auto_tls_refusal(host)
        if refusal:
            status.state, status.last_error = "failed", refusal
            if announce:
                self._emit(host, REFUSED, refusal)
            return status
        saved = self._saved.get(host)
        if isinstance(saved, dict):
            with contextlib.suppress(TypeError, ValueError):
                status.failures = int(saved.get("failures") or 0)
                status.last_error = saved.get("last_error") if isinstance(saved.get("last_error"), str) else None
                status.last_attempt = _from_iso(saved.get("last_attempt"))
                status.next_attempt = _from_iso(saved.get("next_attempt"))
                if status.failures:
                    status.state = "failed"
        if status.next_attempt is None:
            status.next_attempt = self.clock()
        return status

    async def _load(self, host: str) -> None:
        """Take the stored certificate of a host into service (installing it), or set a damaged one aside."""
        self._loaded.add(host)
        status = self._hosts[host]
        if status.state == "failed" and status.next_attempt is None:
            return  # refused host
        try:
            stored = self.store.load(host)
        except DamagedCertificate as exc:
            aside = self.store.set_aside(host)
            self._emit(host, DAMAGED, f"{exc}; moved to {aside}, a new certificate is requested")
            status.next_attempt = self.clock()
            return
        now = self.clock()
        if stored is None or stored.not_after <= now:
            return  # to be issued when its next_attempt comes (now, unless a backoff was saved)
        self._remember(status, stored)
        if not status.failures:
            status.state = "valid"
            status.next_attempt = self._plan(status)
        await self._put_in_front(status, stored)

    def _remember(self, status: HostStatus, stored: StoredCertificate) -> None:
        self._certs[status.host] = stored
        status.serial, status.not_before, status.not_after = stored.serial, stored.not_before, stored.not_after

    def _plan(self, status: HostStatus) -> datetime:
        now = self.clock()
        stored = self._certs.get(status.host)
        validity = stored.validity if stored is not None and stored.not_after > now else None
        return next_attempt(now, validity, status.failures, self.policy, self._jitter(), status.last_attempt)

    async def _put_in_front(self, status: HostStatus, stored: StoredCertificate) -> bool:
        try:
            await self._install(status.host, stored.fullchain_pem, stored.key_pem)
        except Exception as exc:
            self._failed(status, f"the edge did not take the certificate (serial {stored.serial}): {exc}")
            return False
        self._installed[status.host] = stored.serial
        return True

    # -- one attempt ---------------------------------------------------------------------------------------

    async def _attempt(self, host: str) -> None:
        status = self._hosts[host]
        try:
            async with self._slots:
                stored = self._certs.get(host)
                now = self.clock()
                status.last_attempt = now
                if (stored is not None and stored.not_after > now and self._installed.get(host) != stored.serial
                        and self._plan_success(stored) > now):
                    # Issued earlier but the front did not take it: offer it again, no new order.
                    if await self._put_in_front(status, stored):
                        self._succeeded(status, stored, None)
                    return
                status.state = "renewing" if stored is not None and stored.not_after > now else "pending"
                try:
                    issued = await self._issue(host)
                    fresh = self.store.save(host, issued.fullchain_pem, issued.key_pem)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(status, self.acme.describe(exc))
                    return
                self._remember(status, fresh)
                if await self._put_in_front(status, fresh):
                    self._succeeded(status, fresh, RENEWED if stored is not None else ISSUED)
        finally:
            self._running.pop(host, None)
            self._save_status()
            self.wake()

    def _plan_success(self, stored: StoredCertificate) -> datetime:
        return next_attempt(self.clock(), stored.validity, 0, self.policy, 0.0)

    def _succeeded(self, status: HostStatus, stored: StoredCertificate, kind: str | None) -> None:
        status.state, status.failures, status.last_error = "valid", 0, None
        status.next_attempt = self._plan(status)
        if kind:
            self._emit(status.host, kind, f"serial {stored.serial}, valid until {_iso(stored.not_after)}, "
                                          f"renewal from {_iso(status.next_attempt)}")

    def _failed(self, status: HostStatus, message: str) -> None:
        status.state, status.last_error = "failed", message
        status.failures += 1
        status.next_attempt = self._plan(status)
        serving = self._installed.get(status.host)
        tail = (f"; serial {serving} keeps serving until {_iso(status.not_after)}" if serving
                else "; the host has no certificate yet")
        self._emit(status.host, FAILED, f"{message}{tail}; next attempt {_iso(status.next_attempt)}")

    async def _issue(self, host: str) -> Issued:
        async with self._account_lock:
            if self._account is None:
                account = await _in_thread(self.acme.account)
                for note in account.notes:
                    self._emit(host, DAMAGED, note)
                if account.how != "loaded":
                    self._emit(host, ACCOUNT, f"{account.how} ACME account {account.registration.uri} "
                                              f"at {self.acme.directory}")
                self._account = account
        pending = await _in_thread(self.acme.begin, host, self._account)
        # The challenges are set and removed here, on the loop that owns the front, never from the thread.
        tokens = [token for token, _, _ in pending.http01]
        try:
            for token, validation, _ in pending.http01:
                self.challenges[token] = validation
            return await _in_thread(self.acme.complete, pending)
        finally:
            for token in tokens:
                self.challenges.pop(token, None)

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _emit(self, host: str, kind: str, detail: str) -> None:
        log.info("%s %s: %s", kind, host, detail)
        if self._on_event is not None:
            try:
                self._on_event(host, kind, detail)
            except Exception:  # a broken ledger must not stop certificates
                log.exception("on_event failed for %s %s", kind, host)

    def _read_status(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._emit("*", DAMAGED, f"{self.status_file}: unreadable ({exc}); retry schedules start afresh")
            return {}
        hosts = raw.get("hosts") if isinstance(raw, dict) else None
        return hosts if isinstance(hosts, dict) else {}

    def _save_status(self) -> None:
        self._saved.update({host: status.persisted() for host, status in self._hosts.items()})
        try:
            write_atomically(self.status_file, json.dumps({"hosts": self._saved}, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("cannot save %s: %s", self.status_file, exc)
