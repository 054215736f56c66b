"""min_ready as data: a settle step after fresh instances take traffic, before anything they replace retires."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingot.analysis import Thresholds
from ingot.plan import (
    Plan,
    ServiceState,
    Step,
    StrategyOptions,
    Target,
    apply_to_state,
    plan_blue_green,
    plan_canary,
    plan_for,
    plan_rolling,
)

TH = Thresholds(interval=1.0, min_requests=10)
OLD_LIVE = ServiceState(weights=(("old", 100),), instances=(("old", 2),))


def kinds(plan: Plan) -> list[str]:
    return [s.kind for s in plan.steps]


def test_blue_green_settles_at_full_traffic_before_the_previous_release_drains() -> None:
    plan = plan_blue_green(OLD_LIVE, Target("new", 2), min_ready=10.0)
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
        Step("settle", "new", seconds=10.0, baseline="old"),
        Step("drain", "old"),
        Step("stop", "old", count=2),
    )
    text = plan.steps[3].describe()
    assert "10s (min_ready)" in text and "switches back to old, which is still running" in text


def test_a_first_deploy_settles_too_and_says_it_would_fail() -> None:
    plan = plan_blue_green(ServiceState(), Target("new", 2), min_ready=5.0)
    assert plan.steps[-1] == Step("settle", "new", seconds=5.0)
    assert "the deploy fails" in plan.steps[-1].describe()


@pytest.mark.parametrize("min_ready", [None, 0.0])
def test_no_min_ready_no_settle(min_ready: float | None) -> None:
    assert "settle" not in kinds(plan_blue_green(OLD_LIVE, Target("new", 2), min_ready=min_ready))


def test_scaling_the_live_release_or_to_zero_does_not_settle() -> None:
    up = plan_blue_green(OLD_LIVE, Target("old", 4), min_ready=10.0)
    assert kinds(up) == ["start", "wait_healthy", "route"]
    assert "settle" not in kinds(plan_blue_green(OLD_LIVE, Target("old", 0), min_ready=10.0))
    assert kinds(plan_rolling(OLD_LIVE, Target("old", 4), min_ready=10.0)) == ["start", "wait_healthy", "route"]


def test_cleaning_up_after_a_release_that_already_takes_all_traffic_does_not_settle() -> None:
    in_window = ServiceState(weights=(("new", 100),), instances=(("new", 2), ("old", 2)))
    assert plan_blue_green(in_window, Target("new", 2), min_ready=10.0).steps == (Step("stop", "old", count=2),)


def test_min_ready_runs_before_the_verification_window() -> None:
    plan = plan_blue_green(OLD_LIVE, Target("new", 2), verification=60.0, analysis=TH, min_ready=10.0)
    assert kinds(plan) == ["start", "wait_healthy", "route", "settle", "drain", "verify", "stop"]
    assert plan.steps[3] == Step("settle", "new", seconds=10.0, baseline="old")


def test_canary_settles_at_full_traffic_after_its_last_step() -> None:
    plan = plan_canary(OLD_LIVE, Target("new", 2), [(20, None), (100, 30.0)], TH, min_ready=10.0)
    assert kinds(plan) == ["start", "wait_healthy", "route", "analyse", "route", "analyse", "settle", "drain",
                           "stop"]
    assert plan.steps[4] == Step("route", weights=(("new", 100),))
    assert plan.steps[6] == Step("settle", "new", seconds=10.0, baseline="old")
    # Partial traffic is judged by the steps' analysis; the settle is once, at full traffic.
    assert kinds(plan_canary(OLD_LIVE, Target("new", 2), [(50, None)], min_ready=10.0)).count("settle") == 1


def test_rolling_settles_every_batch_before_retiring_its_old_instances() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 3),))
    plan = plan_rolling(state, Target("new", 3), max_surge=1, max_unavailable=0, min_ready=10.0)
    settle = Step("settle", "new", seconds=10.0, baseline="old")
    assert plan.steps == (
        Step("start", "new", count=1), Step("wait_healthy", "new"),
        Step("route", weights=(("new", 33), ("old", 67))), settle,
        Step("drain_instances", "old", count=1), Step("stop", "old", count=1),
        Step("start", "new", count=1), Step("wait_healthy", "new"),
        Step("route", weights=(("new", 67), ("old", 33))), settle,
        Step("drain_instances", "old", count=1), Step("stop", "old", count=1),
        # The last batch settles at full traffic, with its old instance still running.
        Step("start", "new", count=1), Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)), settle,
        Step("drain", "old"), Step("stop", "old", count=1),
    )


def test_rolling_without_surge_settles_each_fresh_instance_before_the_next_retirement() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 3),))
    plan = plan_rolling(state, Target("new", 3), max_surge=0, max_unavailable=1, min_ready=2.0)
    assert kinds(plan) == [
        "drain_instances", "stop",  # max_surge 0: the first batch can only begin by retiring
        "start", "wait_healthy", "route", "settle", "drain_instances", "stop",
        "start", "wait_healthy", "route", "settle", "drain", "stop",
        "start", "wait_healthy", "route", "settle",
    ]


def test_options_carry_min_ready_from_the_spec_to_every_strategy() -> None:
    spec_block: dict[str, Any] = {"type": "canary", "steps": [{"weight": 50, "pause": None}], "min_ready": 7.0,
                                  "max_surge": 1, "max_unavailable": 0, "verification": None}
    options = StrategyOptions.from_mapping(spec_block)
    assert options.min_ready == 7.0 and options.as_dict()["min_ready"] == 7.0
    for strategy in ("blue-green", "canary", "rolling"):
        plan = plan_for(strategy, OLD_LIVE, Target("new", 2), options)
        assert Step("settle", "new", seconds=7.0, baseline="old") in plan.steps, strategy
    # Deployment parameters recorded before min_ready existed plan as they did then.
    assert StrategyOptions.from_mapping({"steps": []}).min_ready is None
    assert StrategyOptions.from_mapping({"min_ready": 0}).min_ready is None


def test_a_settle_step_needs_its_release_and_seconds() -> None:
    with pytest.raises(ValueError, match="settle: needs seconds"):
        Step("settle", "new")
    with pytest.raises(ValueError, match="settle: needs seconds"):
        Step("settle", seconds=3.0)
    assert Step("settle", "new", seconds=3.0).as_dict()["kind"] == "settle"


names = st.sampled_from(["a", "b", "c"])


@st.composite
def states(draw: st.DrawFn) -> ServiceState:
    counts = draw(st.dictionaries(names, st.integers(min_value=0, max_value=3)))
    live = draw(st.lists(names, unique=True, max_size=1))
    return ServiceState(weights=tuple((r, 100) for r in live),
                        instances=tuple(sorted((r, n) for r, n in counts.items() if n > 0)))


RETIRING = ("drain", "drain_instances", "stop")


@given(state=states(), target=names, replicas=st.integers(min_value=0, max_value=3),
       strategy=st.sampled_from(["blue-green", "canary", "rolling"]), verification=st.sampled_from([None, 5.0]),
       surge=st.sampled_from([(1, 0), (2, 0), (0, 1), (1, 1)]))
def test_settling_changes_no_outcome_and_guards_every_retirement(state: ServiceState, target: str, replicas: int,
                                                                  strategy: str, verification: float | None,
                                                                  surge: tuple[int, int]) -> None:
    options: dict[str, Any] = {"steps": [{"weight": 50, "pause": None}], "max_surge": surge[0],
                               "max_unavailable": surge[1],
                               "verification": verification if strategy != "rolling" else None}
    plain = plan_for(strategy, state, Target(target, replicas), StrategyOptions.from_mapping(options))
    settled = plan_for(strategy, state, Target(target, replicas),
                       StrategyOptions.from_mapping({**options, "min_ready": 3.0}))
    after = apply_to_state(state, settled)
    assert after == apply_to_state(state, plain)
    # Planning again against the result of applying it: nothing left, and nothing to settle.
    assert plan_for(strategy, after, Target(target, replicas),
                    StrategyOptions.from_mapping({**options, "min_ready": 3.0})).empty
    assert [s for s in settled.steps if s.kind != "settle"] == list(plain.steps)
    # Once fresh instances of the target have passed their gate, nothing of another release retires
    # before they have settled under traffic.
    unsettled = False
    for step in settled.steps:
        if step.kind == "wait_healthy":
            unsettled = state.weight(target) < 100
        elif step.kind == "settle":
            assert step.release == target and step.seconds == 3.0
            unsettled = False
        elif step.kind in RETIRING and step.release != target:
            assert not unsettled, settled.steps
    assert not unsettled or replicas == 0, settled.steps
    # A settle follows a route that gives the target traffic.
    for index, step in enumerate(settled.steps):
        if step.kind == "settle":
            route = next(s for s in reversed(settled.steps[:index]) if s.kind == "route")
            assert dict(route.weights).get(target, 0) > 0
