"""When to ask the ACME server next for a host's certificate: a pure function of the time, the certificate in
hand and the failures since the last success, so the schedule is tested without a clock or a server.

- A valid certificate is renewed from `renew_before` (30 days) before it expires, or, for short-lived
  certificates, from the last third of its lifetime: the window is min(30 days, lifetime / 3). A
  Let's Encrypt 90-day certificate renews at 60 days either way; a 6-day one after 4 days.
- After n failures the next try waits retry_first * 2^(n-1) (5 min, 10 min, 20 min, ...), capped at
  retry_cap (6 h), each delay jittered by ±jitter so many hosts or machines that failed together do not
  retry together. That stays under Let's Encrypt's limit of 5 failed validations per host per hour.
- Near expiry a long backoff would let the certificate lapse before the next try, so the delay is at most
  half of the time left; but never below retry_first less its jitter: the server is never hammered.
- Whatever happened, no attempt comes sooner than `min_interval` after the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RenewalPolicy:
    renew_before: timedelta = timedelta(days=30)
    lifetime_fraction: float = 1 / 3
    retry_first: timedelta = timedelta(minutes=5)
    retry_cap: timedelta = timedelta(hours=6)
    jitter: float = 0.2  # each retry delay is scaled by a factor in [1 - jitter, 1 + jitter)
    min_interval: timedelta = timedelta(minutes=1)

    @property
    def shortest_retry(self) -> timedelta:
        return self.retry_first * (1 - self.jitter)


def renewal_due(not_before: datetime, not_after: datetime, policy: RenewalPolicy) -> datetime:
    """When a certificate valid from not_before to not_after enters its renewal window."""
    lifetime = max(not_after - not_before, timedelta(0))
    return not_after - min(policy.renew_before, lifetime * policy.lifetime_fraction)


def retry_delay(failures: int, policy: RenewalPolicy, jitter: float) -> timedelta:
    """The wait after `failures` (>= 1) failures in a row; `jitter` is a random number in [0, 1)."""
    doublings = min(max(failures - 1, 0), 64)  # in float seconds: timedelta overflows long before any cap
    seconds = min(policy.retry_first.total_seconds() * 2.0 ** doublings, policy.retry_cap.total_seconds())
    return timedelta(seconds=seconds * (1 - policy.jitter + 2 * policy.jitter * jitter))


def next_attempt(now: datetime, validity: tuple[datetime, datetime] | None, failures: int, policy: RenewalPolicy,
                 jitter: float, last_attempt: datetime | None = None) -> datetime:
    """When to try to get a certificate next.

    validity: (not_before, not_after) of the certificate in hand, None without one (or an expired one).
    failures: attempts failed since the last success. last_attempt: when the latest attempt started."""
    if failures <= 0:
        when = now if validity is None else max(now, renewal_due(*validity, policy))
    else:
        delay = retry_delay(failures, policy, jitter)
        if validity is not None and validity[1] > now:
            delay = max(min(delay, (validity[1] - now) / 2), policy.shortest_retry)
        when = now + delay
    if last_attempt is not None:
        when = max(when, last_attempt + policy.min_interval)
    return when
