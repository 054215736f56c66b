"""The verification window as data: the previous release stays warm after the switch, then retires."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ingot.analysis import Thresholds
from ingot.plan import ServiceState, Step, StrategyOptions, Target, apply_to_state, plan_for
from ingot.plan.blue_green import plan_blue_green
from ingot.plan.canary import plan_abort, plan_canary

TH = Thresholds(interval=1.0, min_requests=10)
OLD_LIVE = ServiceState(weights=(("old", 100),), instances=(("old", 2),))
# During old -> new's window: new takes all traffic, old still runs, idle.
IN_WINDOW = ServiceState(weights=(("new", 100),), instances=(("new", 2), ("old", 2)))


def test_blue_green_keeps_the_previous_release_warm_through_the_window() -> None:
    plan = plan_blue_green(OLD_LIVE, Target("new", 2), verification=60.0, analysis=TH)
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("verify", "new", seconds=60.0, baseline="old", analysis=TH),
        Step("stop", "old", count=2),
    )
    assert "old kept warm" in plan.steps[4].describe()


def test_without_a_window_the_previous_release_retires_at_once() -> None:
    plan = plan_blue_green(OLD_LIVE, Target("new", 2))
    assert [s.kind for s in plan.steps] == ["start", "wait_healthy", "route", "drain", "stop"]


def test_a_first_deploy_has_nothing_to_keep_warm() -> None:
    plan = plan_blue_green(ServiceState(), Target("new", 2), verification=60.0)
    assert [s.kind for s in plan.steps] == ["start", "wait_healthy", "route"]


def test_scaling_to_zero_verifies_nothing() -> None:
    plan = plan_blue_green(OLD_LIVE, Target("old", 0), verification=60.0)
    assert "verify" not in [s.kind for s in plan.steps]


def test_rolling_back_inside_the_window_is_a_pure_switch() -> None:
    plan = plan_blue_green(IN_WINDOW, Target("old", 2))
    assert [s.kind for s in plan.steps] == ["route", "drain", "stop"]
    assert plan.steps[0] == Step("route", weights=(("old", 100),))
    assert plan.steps[2] == Step("stop", "new", count=2)


def test_replanning_the_same_release_inside_the_window_retires_the_previous_one() -> None:
    # Nothing serves beside `new`, so there is nothing to verify against: only the clean-up is left.
    plan = plan_blue_green(IN_WINDOW, Target("new", 2), verification=60.0)
    assert plan.steps == (Step("stop", "old", count=2),)


def test_canary_verifies_after_its_last_step() -> None:
    plan = plan_canary(OLD_LIVE, Target("new", 2), [(50, None)], TH, verification=30.0)
    assert [s.kind for s in plan.steps] == [
        "start", "wait_healthy", "route", "analyse", "route", "drain", "verify", "stop",
    ]
    verify = plan.steps[6]
    assert (verify.release, verify.baseline, verify.seconds, verify.analysis) == ("new", "old", 30.0, TH)


def test_an_abort_never_waits_for_a_window() -> None:
    state = ServiceState(weights=(("new", 50), ("old", 50)), instances=(("new", 2), ("old", 2)))
    assert "verify" not in [s.kind for s in plan_abort(state, "old").steps]


def test_options_carry_the_window_from_the_spec() -> None:
    options = StrategyOptions.from_mapping({"verification": 45.0, "steps": []})
    assert options.verification == 45.0
    assert StrategyOptions.from_mapping({"verification": None}).verification is None
    plan = plan_for("blue-green", OLD_LIVE, Target("new", 2), options)
    assert any(s.kind == "verify" and s.seconds == 45.0 for s in plan.steps)


names = st.sampled_from(["a", "b", "c"])


@st.composite
def states(draw: st.DrawFn) -> ServiceState:
    counts = draw(st.dictionaries(names, st.integers(min_value=0, max_value=3)))
    live = draw(st.lists(names, unique=True, max_size=1))
    return ServiceState(weights=tuple((r, 100) for r in live),
                        instances=tuple(sorted((r, n) for r, n in counts.items() if n > 0)))


@given(state=states(), target=names, replicas=st.integers(min_value=0, max_value=3),
       strategy=st.sampled_from(["blue-green", "canary"]))
def test_the_window_ends_in_the_same_state_as_no_window(state: ServiceState, target: str, replicas: int,
                                                        strategy: str) -> None:
    options: dict[str, Any] = {"steps": [{"weight": 50, "pause": None}], "analysis": None}
    plain = plan_for(strategy, state, Target(target, replicas), StrategyOptions.from_mapping(options))
    windowed = plan_for(strategy, state, Target(target, replicas),
                        StrategyOptions.from_mapping({**options, "verification": 10.0}))
    assert apply_to_state(state, windowed) == apply_to_state(state, plain)
    verifies = [s for s in windowed.steps if s.kind == "verify"]
    assert len(verifies) <= 1
    if verifies:
        index = windowed.steps.index(verifies[0])
        # Traffic is all on the new release before the window, and nothing old has stopped yet.
        routes = [s for s in windowed.steps[:index] if s.kind == "route"]
        assert routes and routes[-1].weights == ((target, 100),)
        assert all(s.kind != "stop" or s.release == target for s in windowed.steps[:index])
