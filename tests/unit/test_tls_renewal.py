"""The renewal schedule (edge/tls/renewal.py) and the manager's refusals, without a clock or an ACME server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ingot.edge.tls.acme_client import auto_tls_refusal
from ingot.edge.tls.manager import REFUSED, CertificateManager
from ingot.edge.tls.renewal import RenewalPolicy, next_attempt, renewal_due, retry_delay

POLICY = RenewalPolicy()
T0 = datetime(2026, 1, 1, tzinfo=UTC)
moments = st.integers(min_value=0, max_value=10 * 365 * 86400).map(lambda s: T0 + timedelta(seconds=s))
lifetimes = st.integers(min_value=60, max_value=5 * 365 * 86400).map(lambda s: timedelta(seconds=s))
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
failures = st.integers(min_value=1, max_value=200)


def test_the_renewal_window_is_30_days_or_the_last_third_of_short_lifetimes() -> None:
    start = T0
    assert renewal_due(start, start + timedelta(days=90), POLICY) == start + timedelta(days=60)  # Let's Encrypt
    assert renewal_due(start, start + timedelta(days=6), POLICY) == start + timedelta(days=4)  # short-lived
    assert renewal_due(start, start + timedelta(days=5 * 365), POLICY) == start + timedelta(days=5 * 365 - 30)


def test_retries_double_from_five_minutes_up_to_six_hours() -> None:
    minutes = [retry_delay(n, POLICY, 0.5) / timedelta(minutes=1) for n in range(1, 11)]
    assert minutes == [5, 10, 20, 40, 80, 160, 320, 360, 360, 360]


@given(moments, lifetimes, moments)
def test_a_valid_certificate_is_renewed_in_its_window_and_not_before(not_before: datetime, lifetime: timedelta,
                                                                   now: datetime) -> None:
    not_after = not_before + lifetime
    due = renewal_due(not_before, not_after, POLICY)
    assert not_after - timedelta(days=30) <= due <= not_after
    assert due >= not_before + lifetime * (2 / 3) - timedelta(microseconds=1)
    assert next_attempt(now, (not_before, not_after), 0, POLICY, 0.3) == max(now, due)


@given(moments, st.one_of(st.none(), st.tuples(moments, lifetimes)), failures, jitters)
def test_a_failure_is_never_retried_sooner_than_the_first_backoff(now: datetime,
                                                                  cert: tuple[datetime, timedelta] | None,
                                                                  failed: int, jitter: float) -> None:
    validity = (cert[0], cert[0] + cert[1]) if cert else None
    when = next_attempt(now, validity, failed, POLICY, jitter)
    assert when - now >= POLICY.shortest_retry
    assert when - now <= POLICY.retry_cap * (1 + POLICY.jitter)
    if validity is not None and validity[1] > now:
        # A long backoff never outlasts half the time the old certificate has left (above the floor).
        assert when - now <= max((validity[1] - now) / 2, POLICY.shortest_retry)


@given(failures, jitters)
def test_backoff_grows_with_failures(failed: int, jitter: float) -> None:
    assert retry_delay(failed + 1, POLICY, jitter) >= retry_delay(failed, POLICY, jitter)


@given(moments, st.one_of(st.none(), st.tuples(moments, lifetimes)), st.integers(0, 50), jitters,
       st.integers(min_value=-3600, max_value=3600))
def test_no_attempt_comes_within_a_minute_of_the_last(now: datetime, cert: tuple[datetime, timedelta] | None,
                                                      failed: int, jitter: float, ago: int) -> None:
    validity = (cert[0], cert[0] + cert[1]) if cert else None
    last = now - timedelta(seconds=ago)
    assert next_attempt(now, validity, failed, POLICY, jitter, last) >= last + POLICY.min_interval


def test_tls_auto_refuses_wildcards_and_non_names() -> None:
    refusal = auto_tls_refusal("*.example.com")
    assert refusal is not None and "wildcard" in refusal and "DNS-01" in refusal and "tls: {cert" in refusal
    assert auto_tls_refusal("app.example.com") is None
    for bad in ("localhost", "../etc", "a/b.example.com", "Upper.Example.com", "127.0.0.1", "::1"):
        assert auto_tls_refusal(bad) is not None, bad


def test_the_manager_refuses_a_wildcard_without_asking_the_server(tmp_path: Path) -> None:
    events: list[tuple[str, str, str]] = []
    installed: list[str] = []

    async def install(host: str, cert: bytes, key: bytes) -> None:
        installed.append(host)

    async def body() -> None:
        # No ACME server listens at this directory: a refusal must come before any request.
        manager = CertificateManager(tmp_path, challenges={}, install=install, directory="https://127.0.0.1:9/dir",
                                     on_event=lambda *e: events.append(e))
        await manager.start(["*.example.com"])
        await asyncio.sleep(0)
        status = manager.status()["*.example.com"]
        await manager.stop()
        assert status["state"] == "failed" and "wildcard" in status["last_error"]
        assert status["next_attempt"] is None and status["failures"] == 0
        assert [e[1] for e in events] == [REFUSED] and installed == []

    asyncio.run(body())
