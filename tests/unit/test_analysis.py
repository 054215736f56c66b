"""Canary verdicts at every boundary: thresholds, sample size, stable's numbers, counters, waiting."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingot.analysis import (
    DEFAULT_WAIT_INTERVALS,
    Counters,
    Decision,
    Thresholds,
    Verdict,
    Window,
    decide,
    judge,
)
from ingot.routers.base import ReleaseStats

TH = Thresholds(interval=5.0, max_error_rate=0.01, max_p99_ms=500.0, min_requests=50)


def window(requests: int, errors: int = 0, p99: float = 100.0, *, before: tuple[int, int] = (1000, 3)) -> Window:
    """`requests` and `errors` in the window, on top of counters already at `before`."""
    return Window(Counters(before[0], before[1], p99), Counters(before[0] + requests, before[1] + errors, p99))


QUIET_STABLE = window(900, 0, 80.0)


# ---- thresholds -----------------------------------------------------------------------------------


def test_error_rate_exactly_at_the_threshold_passes() -> None:
    verdict = judge(window(100, 1), QUIET_STABLE, TH)
    assert verdict.result == "pass"
    assert "canary error rate 1.00% (1 of 100) is within max_error_rate 1.00%" in verdict.reasons
    assert verdict.numbers["canary_error_rate"] == 0.01


def test_error_rate_one_error_above_the_threshold_fails() -> None:
    verdict = judge(window(100, 2), QUIET_STABLE, TH)
    assert verdict.result == "fail"
    assert verdict.reasons[0] == "canary error rate 2.00% (2 of 100) is above max_error_rate 1.00%"


def test_error_rate_a_hair_above_the_threshold_fails() -> None:
    assert judge(window(99, 1), QUIET_STABLE, TH).result == "fail"  # 1.0101%


def test_p99_exactly_at_the_threshold_passes_and_above_fails() -> None:
    assert judge(window(100, 0, 500.0), QUIET_STABLE, TH).result == "pass"
    verdict = judge(window(100, 0, 500.5), QUIET_STABLE, TH)
    assert verdict.result == "fail"
    assert verdict.reasons[0] == "canary p99 500.5 ms is above max_p99_ms 500 ms"


def test_both_thresholds_crossed_are_both_named() -> None:
    verdict = judge(window(200, 20, 900.0), QUIET_STABLE, TH)
    assert verdict.result == "fail"
    assert verdict.reasons[0].startswith("canary error rate 10.00% (20 of 200) is above max_error_rate")
    assert verdict.reasons[1].startswith("canary p99 900 ms is above max_p99_ms 500 ms")
    assert verdict.reasons[2] == "stable: error rate 0.00% (0 of 900), p99 80 ms"


def test_zero_error_rate_threshold_fails_on_a_single_error() -> None:
    strict = dataclasses.replace(TH, max_error_rate=0.0)
    assert judge(window(100, 0), QUIET_STABLE, strict).result == "pass"
    assert judge(window(100, 1), QUIET_STABLE, strict).result == "fail"


# ---- sample size ------------------------------------------------------------------------------------


def test_fewer_than_min_requests_is_inconclusive_even_when_clean() -> None:
    verdict = judge(window(49, 0), QUIET_STABLE, TH)
    assert verdict.result == "inconclusive"
    assert verdict.reasons[0].startswith("canary served 49 request(s) in the window, fewer than min_requests 50")
    assert judge(window(50, 0), QUIET_STABLE, TH).result == "pass"


def test_fewer_than_min_requests_is_inconclusive_even_with_errors() -> None:
    assert judge(window(10, 10, 900.0), QUIET_STABLE, TH).result == "inconclusive"


def test_zero_requests_is_never_a_pass_even_with_min_requests_zero() -> None:
    lax = dataclasses.replace(TH, min_requests=0)
    verdict = judge(window(0), QUIET_STABLE, lax)
    assert verdict.result == "inconclusive"
    assert "fewer than min_requests 1" in verdict.reasons[0]
    assert "stable served 900" in verdict.reasons[0]  # a hint that the canary gets no traffic
    assert judge(window(1), QUIET_STABLE, lax).result == "pass"


def test_no_traffic_at_all_is_inconclusive_with_null_rates() -> None:
    verdict = judge(window(0), window(0), TH)
    assert verdict.result == "inconclusive"
    assert verdict.reasons[1] == "stable: no requests in the window"
    assert verdict.numbers["canary_error_rate"] is None and verdict.numbers["stable_error_rate"] is None
    assert verdict.numbers["canary_p99_ms"] is None


def test_a_release_the_router_does_not_know_yet_counts_as_zero() -> None:
    canary = Window(Counters.of(None), Counters.of(ReleaseStats(requests=60, errors_5xx=0, p99_ms=12.0)))
    assert canary.requests == 60
    assert judge(canary, QUIET_STABLE, TH).result == "pass"


# ---- against stable -----------------------------------------------------------------------------------


def test_errors_only_in_stable_do_not_fail_the_canary() -> None:
    verdict = judge(window(100, 0), window(900, 90, 80.0), TH)
    assert verdict.result == "pass"
    assert "stable: error rate 10.00% (90 of 900), p99 80 ms" in verdict.reasons
    assert verdict.numbers["stable_error_rate"] == 0.1


def test_a_failure_shared_with_stable_still_fails_and_says_so() -> None:
    verdict = judge(window(100, 5, 700.0), window(900, 45, 650.0), TH)
    assert verdict.result == "fail"
    assert verdict.reasons[0].endswith("(stable is above it too, at 5.00%: the cause may be shared)")
    assert verdict.reasons[1].endswith("(stable is above it too, at 650 ms: the cause may be shared)")


def test_relative_limits_fail_a_canary_worse_than_stable_within_absolute_limits() -> None:
    relative = dataclasses.replace(TH, max_error_rate=0.05, max_error_rate_increase=0.005, max_p99_increase_ms=50.0)
    ok = judge(window(1000, 5, 130.0), window(1000, 0, 80.0), relative)  # +0.5 points, +50 ms: at the limits
    assert ok.result == "pass"
    worse = judge(window(1000, 6, 131.0), window(1000, 0, 80.0), relative)
    assert worse.result == "fail"
    assert worse.reasons[0] == ("canary error rate 0.60% is 0.60% above stable's 0.00%, more than "
                                "max_error_rate_increase 0.50%")
    assert worse.reasons[1] == "canary p99 131 ms is 51 ms above stable's 80 ms, more than max_p99_increase_ms 50 ms"


def test_relative_limits_need_enough_stable_requests() -> None:
    relative = dataclasses.replace(TH, max_error_rate=0.05, max_error_rate_increase=0.0)
    verdict = judge(window(1000, 10), window(10, 0), relative)
    assert verdict.result == "pass"
    assert verdict.reasons[-1].startswith("stable served 10 request(s), fewer than min_requests 50")


# ---- counters -----------------------------------------------------------------------------------------


def test_counters_that_went_backwards_are_inconclusive() -> None:
    reset = Window(Counters(5000, 10, 90.0), Counters(40, 0, 90.0))
    verdict = judge(reset, QUIET_STABLE, TH)
    assert verdict.result == "inconclusive"
    assert "went backwards (requests 5000 -> 40, 5xx 10 -> 0)" in verdict.reasons[0]
    assert verdict.numbers["canary_requests"] is None


def test_stable_counters_that_went_backwards_are_not_compared() -> None:
    verdict = judge(window(100), Window(Counters(500, 1), Counters(3, 0)), TH)
    assert verdict.result == "pass"
    assert "stable: counters went backwards during the window, not compared" in verdict.reasons


# ---- the verdict as data ----------------------------------------------------------------------------


def test_verdict_as_dict_is_json_for_the_ledger() -> None:
    verdict = judge(window(100, 2, 120.0), QUIET_STABLE, TH)
    data = verdict.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["result"] == "fail"
    assert data["numbers"] == {
        "canary_requests": 100, "canary_errors_5xx": 2, "canary_error_rate": 0.02, "canary_p99_ms": 120.0,
        "stable_requests": 900, "stable_errors_5xx": 0, "stable_error_rate": 0.0, "stable_p99_ms": 80.0,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.result = "pass"  # type: ignore[misc]


@given(
    canary=st.tuples(st.integers(0, 300), st.integers(0, 300), st.floats(0, 2000)),
    stable=st.tuples(st.integers(0, 300), st.integers(0, 300), st.floats(0, 2000)),
    min_requests=st.integers(0, 200),
)
def test_a_pass_always_meets_every_threshold(canary: tuple[int, int, float], stable: tuple[int, int, float],
                                             min_requests: int) -> None:
    th = dataclasses.replace(TH, min_requests=min_requests)
    c = window(canary[0], min(canary[1], canary[0]), canary[2])
    verdict = judge(c, window(stable[0], min(stable[1], stable[0]), stable[2]), th)
    if verdict.result == "pass":
        assert c.requests >= max(1, min_requests)
        assert c.error_rate is not None and c.error_rate <= th.max_error_rate
        assert c.p99_ms <= th.max_p99_ms
    if c.requests < max(1, min_requests):
        assert verdict.result == "inconclusive"
    assert verdict.reasons


# ---- what the executor does with it -------------------------------------------------------------------


def test_decide_pass_and_fail() -> None:
    assert decide(judge(window(100), QUIET_STABLE, TH), TH, 0).action == "proceed"
    failed = decide(judge(window(100, 5), QUIET_STABLE, TH), TH, 0)
    assert failed.action == "fail"
    assert "is above max_error_rate 1.00%" in failed.reason


def test_inconclusive_waits_until_the_limit_then_fails() -> None:
    inconclusive = judge(window(3), QUIET_STABLE, TH)
    limit = DEFAULT_WAIT_INTERVALS * TH.interval
    assert TH.wait_limit == limit == 50.0
    assert decide(inconclusive, TH, 0).action == "wait"
    assert decide(inconclusive, TH, limit - 0.001).action == "wait"
    at_limit = decide(inconclusive, TH, limit)
    assert at_limit.action == "fail"
    assert at_limit.reason.startswith("still inconclusive after waiting 50s (limit 50s): canary served 3 request(s)")


def test_inconclusive_with_an_explicit_max_wait() -> None:
    inconclusive = judge(window(0), QUIET_STABLE, TH)
    assert decide(inconclusive, dataclasses.replace(TH, max_wait=0.0), 0).action == "fail"
    assert decide(inconclusive, dataclasses.replace(TH, max_wait=120.0), 119.0).action == "wait"


def test_inconclusive_with_policy_fail_fails_at_once() -> None:
    strict = dataclasses.replace(TH, inconclusive="fail")
    decision = decide(judge(window(3), QUIET_STABLE, strict), strict, 0)
    assert decision == Decision("fail", decision.reason)
    assert decision.reason.startswith("inconclusive counts as a failure (inconclusive: fail)")


def test_a_manual_pause_waits_on_inconclusive_without_a_limit_but_honours_policy_fail() -> None:
    inconclusive = judge(window(3), QUIET_STABLE, TH)
    assert decide(inconclusive, TH, 10_000, bounded=False).action == "wait"
    strict = dataclasses.replace(TH, inconclusive="fail")
    assert decide(inconclusive, strict, 0, bounded=False).action == "fail"
    assert decide(judge(window(100, 50), QUIET_STABLE, TH), TH, 0, bounded=False).action == "fail"


def test_decision_as_dict() -> None:
    assert Decision("wait", "why").as_dict() == {"action": "wait", "reason": "why"}


# ---- thresholds as data -------------------------------------------------------------------------------


def test_thresholds_from_the_spec() -> None:
    from ingot.spec.models import AnalysisSpec

    assert Thresholds.from_mapping(AnalysisSpec().model_dump()) == Thresholds()
    assert Thresholds.from_mapping(Thresholds(max_wait=30.0).as_dict()) == Thresholds(max_wait=30.0)
    with pytest.raises(ValueError, match="unknown analysis keys: bogus"):
        Thresholds.from_mapping({"bogus": 1})


@pytest.mark.parametrize(
    ("field", "value"),
    [("interval", 0.0), ("max_error_rate", 1.5), ("max_p99_ms", 0.0), ("min_requests", -1),
     ("inconclusive", "maybe"), ("max_wait", -1.0), ("max_error_rate_increase", 2.0), ("max_p99_increase_ms", -5.0)],
)
def test_bad_thresholds_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Thresholds(**{field: value})  # type: ignore[arg-type]


def test_verdict_defaults() -> None:
    assert Verdict("inconclusive").as_dict() == {"result": "inconclusive", "reasons": [], "numbers": {}}
