"""Canary verdicts: pure logic over per-release router counters, no I/O.

The executor samples the router's counters of the canary and of the stable release at the start and
at the end of an interval and asks `judge` for a `Verdict`. `decide` then says what to do with it:
proceed, wait (let the window grow), or fail (roll back).

Rules (each one says in `reasons` which number crossed which threshold):

- The canary is judged on its own numbers only, never on a blend with stable (argo-rollouts#1700).
- Fewer than `min_requests` canary requests in the window (and always zero requests) is
  *inconclusive*, never a pass (flagger#883, #1035).
- Counters that went backwards (the router restarted or forgot the release) are inconclusive.
- With enough requests: canary error rate above `max_error_rate` fails; canary p99 above
  `max_p99_ms` fails. Exactly at a threshold passes.
- Against stable: its numbers are always reported beside the canary's, and a failure says when
  stable crosses the same threshold (the cause may be shared). The optional relative limits
  `max_error_rate_increase` and `max_p99_increase_ms` fail a canary that is that much worse than
  stable even while within the absolute limits; they apply only when stable itself has at least
  `min_requests` requests in the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Result = Literal["pass", "fail", "inconclusive"]
InconclusivePolicy = Literal["wait", "fail"]
Action = Literal["proceed", "wait", "fail"]

# Without `max_wait`, an inconclusive verdict is waited on for this many intervals before failing.
DEFAULT_WAIT_INTERVALS = 10

Number = int | float | None


@dataclass(frozen=True)
class Thresholds:
    """What a canary must show in each analysis interval (the spec's `strategy.analysis`).

    interval:        seconds per analysis interval
    max_error_rate:  highest allowed share of 5xx answers, 0..1 (0.01 = 1%)
    max_p99_ms:      highest allowed p99 latency, milliseconds
    min_requests:    fewest canary requests in a window for any verdict but inconclusive
    inconclusive:    "wait": let the window grow, up to `max_wait` seconds, then fail;
                     "fail": an inconclusive verdict fails at once
    max_wait:        seconds an inconclusive verdict may be waited on; None = DEFAULT_WAIT_INTERVALS intervals
    max_error_rate_increase: optional; fail when canary error rate - stable error rate is above it
    max_p99_increase_ms:     optional; fail when canary p99 - stable p99 is above it
    """

    interval: float = 5.0
    max_error_rate: float = 0.01
    max_p99_ms: float = 500.0
    min_requests: int = 50
    inconclusive: InconclusivePolicy = "wait"
    max_wait: float | None = None
    max_error_rate_increase: float | None = None
    max_p99_increase_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"analysis interval must be > 0 seconds, got {self.interval}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}")
        if not self.max_p99_ms > 0:
            raise ValueError(f"max_p99_ms must be > 0, got {self.max_p99_ms}")
        if self.min_requests < 0:
            raise ValueError(f"min_requests must be >= 0, got {self.min_requests}")
        if self.inconclusive not in ("wait", "fail"):
            raise ValueError(f"inconclusive must be 'wait' or 'fail', got {self.inconclusive!r}")
        if self.max_wait is not None and self.max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {self.max_wait}")
        if self.max_error_rate_increase is not None and not 0 <= self.max_error_rate_increase <= 1:
            raise ValueError(f"max_error_rate_increase must be between 0 and 1, got {self.max_error_rate_increase}")
        if self.max_p99_increase_ms is not None and self.max_p99_increase_ms < 0:
            raise ValueError(f"max_p99_increase_ms must be >= 0, got {self.max_p99_increase_ms}")

    @property
    def wait_limit(self) -> float:
        """Seconds an inconclusive verdict may be waited on (policy "wait") before it fails."""
        return self.max_wait if self.max_wait is not None else DEFAULT_WAIT_INTERVALS * self.interval

    @property
    def required_requests(self) -> int:
        """At least one request, whatever `min_requests` says: zero requests is never a pass."""
        return max(1, self.min_requests)

    def describe(self, *, bounded: bool = True) -> str:
        """`bounded=False` describes the analysis guarding a manual pause (see `decide`)."""
        text = (f"error rate <= {_pct(self.max_error_rate)}, p99 <= {self.max_p99_ms:g} ms, "
                f"at least {self.min_requests} requests per {self.interval:g}s interval")
        if self.max_error_rate_increase is not None:
            text += f", error rate at most {_pct(self.max_error_rate_increase)} above stable"
        if self.max_p99_increase_ms is not None:
            text += f", p99 at most {self.max_p99_increase_ms:g} ms above stable"
        if self.inconclusive == "fail":
            return text + "; inconclusive fails"
        if not bounded:
            return text + "; inconclusive waits while paused"
        return text + f"; inconclusive waits up to {self.wait_limit:g}s"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def from_mapping(data: Mapping[str, Any]) -> Thresholds:
        """From the spec's `analysis` mapping (e.g. `AnalysisSpec.model_dump()`); unknown keys are refused."""
        known = {f for f in Thresholds.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown analysis keys: {', '.join(unknown)}")
        return Thresholds(**dict(data))


class HasCounters(Protocol):
    """Anything shaped like `ingot.routers.base.ReleaseStats`."""

    @property
    def requests(self) -> int: ...

    @property
    def errors_5xx(self) -> int: ...

    @property
    def p99_ms(self) -> float: ...


@dataclass(frozen=True)
class Counters:
    """One sample of a release's router counters: cumulative requests and 5xx, p99 of the recent window."""

    requests: int = 0
    errors_5xx: int = 0
    p99_ms: float = 0.0

    @staticmethod
    def of(stats: HasCounters | None) -> Counters:
        """From router stats; a release the router does not know yet counts as all zeros."""
        if stats is None:
            return Counters()
        return Counters(int(stats.requests), int(stats.errors_5xx), float(stats.p99_ms))


@dataclass(frozen=True)
class Window:
    """A release's counters at the start and at the end of an analysis window."""

    start: Counters
    end: Counters

    @property
    def went_backwards(self) -> bool:
        return self.end.requests < self.start.requests or self.end.errors_5xx < self.start.errors_5xx

    @property
    def requests(self) -> int:
        return self.end.requests - self.start.requests

    @property
    def errors(self) -> int:
        return self.end.errors_5xx - self.start.errors_5xx

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def p99_ms(self) -> float:
        """As the router reports it at the end: over its recent window of requests, not only this window's."""
        return self.end.p99_ms


@dataclass(frozen=True)
class Verdict:
    result: Result
    reasons: tuple[str, ...] = ()
    numbers: Mapping[str, Number] = field(default_factory=dict, hash=False)

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "reasons": list(self.reasons), "numbers": dict(self.numbers)}


@dataclass(frozen=True)
class Decision:
    """What the executor does next.

    proceed: the window passed; start the next window at this end sample (or end the step)
    wait:    inconclusive; keep the window's start sample, so the next verdict covers a longer window
    fail:    stop the rollout and send all traffic back to stable
    """

    action: Action
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "reason": self.reason}


def judge(canary: Window, stable: Window, thresholds: Thresholds) -> Verdict:
    """The verdict on one window of the canary against its thresholds and against stable."""
    numbers = _numbers(canary, stable)
    stable_text = _summary("stable", stable)
    if canary.went_backwards:
        return Verdict("inconclusive", (
            f"canary counters went backwards (requests {canary.start.requests} -> {canary.end.requests}, "
            f"5xx {canary.start.errors_5xx} -> {canary.end.errors_5xx}): the router restarted or forgot "
            "the release during the window; nothing can be judged from it",
        ), numbers)
    if canary.requests < thresholds.required_requests:
        reason = (f"canary served {canary.requests} request(s) in the window, fewer than min_requests "
                  f"{thresholds.required_requests}: not enough to judge")
        if canary.requests == 0 and stable.requests > 0 and not stable.went_backwards:
            reason += f" (stable served {stable.requests}: is the canary weighted and its pool filled?)"
        return Verdict("inconclusive", (reason, stable_text), numbers)

    failures: list[str] = []
    passes: list[str] = []
    rate = canary.error_rate
    assert rate is not None  # canary.requests >= 1 here
    rate_text = f"canary error rate {_pct(rate)} ({canary.errors} of {canary.requests})"
    if rate > thresholds.max_error_rate:
        failures.append(f"{rate_text} is above max_error_rate {_pct(thresholds.max_error_rate)}"
                        + _shared_rate(stable, thresholds))
    else:
        passes.append(f"{rate_text} is within max_error_rate {_pct(thresholds.max_error_rate)}")
    p99_text = f"canary p99 {canary.p99_ms:g} ms"
    if canary.p99_ms > thresholds.max_p99_ms:
        failures.append(f"{p99_text} is above max_p99_ms {thresholds.max_p99_ms:g} ms"
                        + _shared_p99(stable, thresholds))
    else:
        passes.append(f"{p99_text} is within max_p99_ms {thresholds.max_p99_ms:g} ms")

    relative, notes = _against_stable(canary, stable, thresholds)
    failures.extend(relative)
    if failures:
        return Verdict("fail", (*failures, stable_text, *notes), numbers)
    return Verdict("pass", (*passes, stable_text, *notes), numbers)


def decide(verdict: Verdict, thresholds: Thresholds, waited_s: float, *, bounded: bool = True) -> Decision:
    """What to do with `verdict`.

    `waited_s`: seconds since the first inconclusive verdict of the current run of inconclusive
    verdicts (0 at the first one). `bounded=False` is for the analysis that guards a manual pause: a
    person is the gate there, so "wait" has no time limit (policy "fail" still fails).
    """
    if verdict.result == "pass":
        return Decision("proceed", "the canary passed: " + "; ".join(verdict.reasons[:2]))
    if verdict.result == "fail":
        return Decision("fail", "the canary failed: " + "; ".join(verdict.reasons))
    why = verdict.reasons[0] if verdict.reasons else "inconclusive"
    if thresholds.inconclusive == "fail":
        return Decision("fail", f"inconclusive counts as a failure (inconclusive: fail): {why}")
    if bounded and waited_s >= thresholds.wait_limit:
        return Decision("fail", f"still inconclusive after waiting {waited_s:g}s "
                                f"(limit {thresholds.wait_limit:g}s): {why}")
    limit = f"up to {thresholds.wait_limit:g}s" if bounded else "while paused"
    return Decision("wait", f"inconclusive, waiting for more requests ({limit}): {why}")


# ---- helpers ------------------------------------------------------------------------------------


def _against_stable(canary: Window, stable: Window, thresholds: Thresholds) -> tuple[list[str], list[str]]:
    """(failures, notes) of the optional relative limits."""
    if thresholds.max_error_rate_increase is None and thresholds.max_p99_increase_ms is None:
        return [], []
    if stable.went_backwards or stable.requests < thresholds.required_requests:
        return [], [f"stable served {max(stable.requests, 0)} request(s), fewer than min_requests "
                    f"{thresholds.required_requests}: the limits relative to stable were not applied"]
    failures: list[str] = []
    canary_rate, stable_rate = canary.error_rate, stable.error_rate
    assert canary_rate is not None and stable_rate is not None
    if thresholds.max_error_rate_increase is not None:
        increase = canary_rate - stable_rate
        if increase > thresholds.max_error_rate_increase:
            failures.append(f"canary error rate {_pct(canary_rate)} is {_pct(increase)} above stable's "
                            f"{_pct(stable_rate)}, more than max_error_rate_increase "
                            f"{_pct(thresholds.max_error_rate_increase)}")
    if thresholds.max_p99_increase_ms is not None:
        increase_ms = canary.p99_ms - stable.p99_ms
        if increase_ms > thresholds.max_p99_increase_ms:
            failures.append(f"canary p99 {canary.p99_ms:g} ms is {increase_ms:g} ms above stable's "
                            f"{stable.p99_ms:g} ms, more than max_p99_increase_ms "
                            f"{thresholds.max_p99_increase_ms:g} ms")
    return failures, []


def _shared_rate(stable: Window, thresholds: Thresholds) -> str:
    rate = stable.error_rate
    if stable.went_backwards or rate is None or rate <= thresholds.max_error_rate:
        return ""
    return f" (stable is above it too, at {_pct(rate)}: the cause may be shared)"


def _shared_p99(stable: Window, thresholds: Thresholds) -> str:
    if stable.went_backwards or stable.requests <= 0 or stable.p99_ms <= thresholds.max_p99_ms:
        return ""
    return f" (stable is above it too, at {stable.p99_ms:g} ms: the cause may be shared)"


def _summary(name: str, window: Window) -> str:
    if window.went_backwards:
        return f"{name}: counters went backwards during the window, not compared"
    rate = window.error_rate
    if rate is None:
        return f"{name}: no requests in the window"
    return f"{name}: error rate {_pct(rate)} ({window.errors} of {window.requests}), p99 {window.p99_ms:g} ms"


def _numbers(canary: Window, stable: Window) -> dict[str, Number]:
    numbers: dict[str, Number] = {}
    for name, window in (("canary", canary), ("stable", stable)):
        valid = not window.went_backwards
        numbers[f"{name}_requests"] = window.requests if valid else None
        numbers[f"{name}_errors_5xx"] = window.errors if valid else None
        numbers[f"{name}_error_rate"] = window.error_rate if valid else None
        numbers[f"{name}_p99_ms"] = window.p99_ms if valid and window.requests > 0 else None
    return numbers


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"
