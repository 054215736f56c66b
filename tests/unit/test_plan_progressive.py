"""Canary and rolling planners: plans as data, idempotence, and the capacity a rolling update keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.analysis import Thresholds
from ingot.plan import (
    CanaryStep,
    Plan,
    ServiceState,
    Step,
    StrategyOptions,
    Target,
    apply_to_state,
    plan_abort,
    plan_blue_green,
    plan_canary,
    plan_for,
    plan_rolling,
    proportional,
    stable_release,
)

STABLE = ServiceState(weights=(("old", 100),), instances=(("old", 3),))
TH = Thresholds(interval=5.0, max_error_rate=0.01, max_p99_ms=500.0, min_requests=50)


def kinds(plan: Plan) -> list[str]:
    return [s.kind for s in plan.steps]


# ---- a small simulator of the executor, as the planner's contract describes it ---------------------


@dataclass
class Sim:
    """Healthy instances, the router's pools and weights, step by step."""

    running: dict[str, int]
    pool: dict[str, int]
    weights: dict[str, int]
    pending: dict[str, int] = field(default_factory=dict)
    capacities: list[int] = field(default_factory=list)
    totals_after_start: list[int] = field(default_factory=list)

    @staticmethod
    def of(state: ServiceState) -> Sim:
        running = dict(state.instances)
        weights = {r: w for r, w in state.weights if w > 0}
        return Sim(running=running, pool={r: running.get(r, 0) for r in weights}, weights=weights)

    def capacity(self) -> int:
        """Healthy instances that take traffic: in the pool of a release with weight > 0."""
        return sum(self.pool.get(r, 0) for r, w in self.weights.items() if w > 0)

    def total(self) -> int:
        return sum(self.running.values()) + sum(self.pending.values())

    def apply(self, step: Step) -> None:
        r = step.release or ""
        match step.kind:
            case "start":
                self.pending[r] = self.pending.get(r, 0) + step.count
                self.totals_after_start.append(self.total())
            case "wait_healthy":
                self.running[r] = self.running.get(r, 0) + self.pending.pop(r, 0)
            case "route":
                self.weights = {name: w for name, w in step.weights if w > 0}
                for name in self.weights:
                    self.pool[name] = self.running.get(name, 0)  # set_backends: every running instance
            case "drain":
                self.pool.pop(r, None)
                self.weights.pop(r, None)  # the router forgets the release
            case "drain_instances":
                assert self.pool.get(r, 0) >= step.count, f"{step.describe()}: not that many in the pool"
                self.pool[r] -= step.count
            case "stop":
                assert self.running.get(r, 0) >= step.count, f"{step.describe()}: not that many running"
                in_traffic = self.pool.get(r, 0) if self.weights.get(r, 0) > 0 else 0
                assert self.running[r] - in_traffic >= step.count, f"{step.describe()} stops instances taking traffic"
                self.running[r] -= step.count
                if r in self.pool:
                    self.pool[r] = min(self.pool[r], self.running[r])
            case "pause" | "analyse" | "verify":
                pass
        self.capacities.append(self.capacity())


def simulate(state: ServiceState, plan: Plan) -> Sim:
    sim = Sim.of(state)
    for step in plan.steps:
        sim.apply(step)
    return sim


# ---- canary: plans as data --------------------------------------------------------------------------


def test_canary_with_analysis_timed_manual_and_no_pause() -> None:
    plan = plan_canary(STABLE, Target("new", 3), [(10, 60.0), (50, "manual"), (80, None)], TH)
    assert plan.strategy == "canary"
    assert plan.steps == (
        Step("start", "new", count=3),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 10), ("old", 90))),
        Step("analyse", "new", seconds=60.0, baseline="old", analysis=TH),
        Step("route", weights=(("new", 50), ("old", 50))),
        Step("analyse", "new", baseline="old", analysis=TH),
        Step("pause", "new", manual=True, baseline="old", analysis=TH),
        Step("route", weights=(("new", 80), ("old", 20))),
        Step("analyse", "new", baseline="old", analysis=TH),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=3),
    )


def test_canary_without_analysis_only_pauses() -> None:
    plan = plan_canary(STABLE, Target("new", 2), [CanaryStep(10, 30), CanaryStep(50, "manual"), CanaryStep(90)])
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 10), ("old", 90))),
        Step("pause", seconds=30.0),
        Step("route", weights=(("new", 50), ("old", 50))),
        Step("pause", manual=True),
        Step("route", weights=(("new", 90), ("old", 10))),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=3),
    )


def test_a_last_step_at_100_percent_is_the_switch_and_stable_stays_warm_through_it() -> None:
    plan = plan_canary(STABLE, Target("new", 3), [(20, None), (100, 60.0)], TH)
    assert kinds(plan) == ["start", "wait_healthy", "route", "analyse", "route", "analyse", "drain", "stop"]
    assert plan.steps[4] == Step("route", weights=(("new", 100),))
    assert plan.steps[5] == Step("analyse", "new", seconds=60.0, baseline="old", analysis=TH)
    assert [s for s in plan.steps if s.kind == "route"][-1].weights == (("new", 100),)


def test_first_deploy_canary_degenerates_to_blue_green_and_says_so() -> None:
    plan = plan_canary(ServiceState(), Target("new", 2), [(10, 60.0)], TH)
    assert plan.steps == plan_blue_green(ServiceState(), Target("new", 2)).steps
    assert plan.strategy == "canary"
    assert "no other release serves traffic" in plan.as_dict()["note"]


def test_a_stable_release_without_instances_is_no_stable() -> None:
    state = ServiceState(weights=(("old", 100),), instances=())
    assert stable_release(state, "new") is None
    plan = plan_canary(state, Target("new", 2), [(10, 60.0)], TH)
    assert kinds(plan) == ["start", "wait_healthy", "route"]


def test_canary_of_the_live_release_is_scaling_only() -> None:
    state = ServiceState(weights=(("r1", 100),), instances=(("r1", 2),))
    assert plan_canary(state, Target("r1", 2), [(10, 60.0)], TH).empty
    up = plan_canary(state, Target("r1", 3), [(10, 60.0)], TH)
    assert up.steps == plan_blue_green(state, Target("r1", 3)).steps
    assert "already takes all traffic" in up.note


def test_canary_to_zero_replicas_drains_and_stops() -> None:
    plan = plan_canary(STABLE, Target("new", 0), [(10, 60.0)], TH)
    assert plan.steps == (Step("route"), Step("drain", "old"), Step("stop", "old", count=3))
    assert plan.note.startswith("0 replicas")


def test_empty_note_when_nothing_to_do() -> None:
    state = ServiceState(weights=(("new", 100),), instances=(("new", 2),))
    assert "note" not in plan_canary(state, Target("new", 2), [(10, None)]).as_dict()


def test_resumed_canary_goes_on_from_its_current_weight() -> None:
    state = ServiceState(weights=(("new", 50), ("old", 50)), instances=(("new", 3), ("old", 3)))
    plan = plan_canary(state, Target("new", 3), [(10, 60.0), (50, 60.0), (80, None)], TH)
    assert plan.steps == (
        Step("route", weights=(("new", 50), ("old", 50))),
        Step("analyse", "new", seconds=60.0, baseline="old", analysis=TH),
        Step("route", weights=(("new", 80), ("old", 20))),
        Step("analyse", "new", baseline="old", analysis=TH),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=3),
    )


def test_resumed_canary_past_every_step_only_switches() -> None:
    state = ServiceState(weights=(("new", 60), ("old", 40)), instances=(("new", 2), ("old", 2)))
    plan = plan_canary(state, Target("new", 2), [(10, 60.0), (50, 60.0)], TH)
    assert plan.steps == (Step("route", weights=(("new", 100),)), Step("drain", "old"), Step("stop", "old", count=2))


def test_stable_is_the_most_weighted_other_release_and_the_rest_is_retired() -> None:
    state = ServiceState(weights=(("a", 30), ("b", 70)), instances=(("a", 1), ("b", 2), ("stray", 1)))
    assert stable_release(state, "new") == "b"
    plan = plan_canary(state, Target("new", 2), [(25, None)])
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 25), ("b", 75))),
        Step("route", weights=(("new", 100),)),
        Step("drain", "a"),
        Step("stop", "a", count=1),
        Step("drain", "b"),
        Step("stop", "b", count=2),
        Step("stop", "stray", count=1),
    )


def test_surplus_canary_instances_are_retired_before_traffic_moves() -> None:
    unrouted = ServiceState(weights=(("old", 100),), instances=(("new", 4), ("old", 2)))
    plan = plan_canary(unrouted, Target("new", 2), [(50, None)])
    assert plan.steps[0] == Step("stop", "new", count=2)
    routed = ServiceState(weights=(("new", 10), ("old", 90)), instances=(("new", 4), ("old", 2)))
    plan = plan_canary(routed, Target("new", 2), [(50, None)])
    assert plan.steps[:2] == (Step("drain_instances", "new", count=2), Step("stop", "new", count=2))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "at least one step"),
        ([(0, None)], "weight must be a percent"),
        ([(101, None)], "weight must be a percent"),
        ([(10, 0)], "pause must be seconds"),
        ([(10, -1.0)], "pause must be seconds"),
        ([(10, "later")], "pause must be seconds"),
    ],
)
def test_bad_canary_steps_are_refused(steps: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_canary(STABLE, Target("new", 2), steps)


def test_abort_sends_traffic_back_to_stable_and_retires_the_canary() -> None:
    mid = ServiceState(weights=(("new", 10), ("old", 90)), instances=(("new", 3), ("old", 3)))
    plan = plan_abort(mid, "old")
    assert plan.strategy == "abort"
    assert plan.target == Target("old", 3)
    assert plan.steps == (Step("route", weights=(("old", 100),)), Step("drain", "new"), Step("stop", "new", count=3))
    assert plan_abort(apply_to_state(mid, plan), "old").empty
    with pytest.raises(ValueError, match="none of its instances"):
        plan_abort(mid, "gone")


def test_canary_plan_as_dict_carries_the_thresholds_and_is_json() -> None:
    data = plan_canary(STABLE, Target("new", 3), [(10, 60.0), (50, "manual")], TH).as_dict()
    json.dumps(data)
    analyse = data["steps"][3]
    assert analyse["kind"] == "analyse"
    assert analyse["seconds"] == 60.0
    assert analyse["baseline"] == "old"
    assert analyse["analysis"] == {"interval": 5.0, "max_error_rate": 0.01, "max_p99_ms": 500.0,
                                   "min_requests": 50, "inconclusive": "wait"}
    assert analyse["description"].startswith("analyse new against old for 60s: error rate <= 1.00%, p99 <= 500 ms")
    pause = data["steps"][-4]
    assert pause["kind"] == "pause" and pause["manual"] is True
    assert "until an operator resumes or aborts" in pause["description"]
    assert "inconclusive waits while paused" in pause["description"]


# ---- canary: properties -------------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
pauses = st.one_of(st.none(), st.just("manual"), st.floats(min_value=0.5, max_value=600))
canary_steps = st.lists(st.tuples(st.integers(min_value=1, max_value=100), pauses), min_size=1, max_size=5)


@st.composite
def service_states(draw: st.DrawFn) -> ServiceState:
    counts = draw(st.dictionaries(names, st.integers(min_value=0, max_value=4)))
    routed = draw(st.lists(names, unique=True, max_size=2))
    if len(routed) == 2:
        first = draw(st.integers(min_value=1, max_value=99))
        weights: tuple[tuple[str, int], ...] = ((routed[0], first), (routed[1], 100 - first))
    else:
        weights = tuple((r, 100) for r in routed)
    return ServiceState(weights=weights, instances=tuple(sorted((r, n) for r, n in counts.items() if n > 0)))


@given(state=service_states(), target=names, replicas=st.integers(min_value=0, max_value=5), steps=canary_steps,
       analysed=st.booleans())
def test_canary_replanning_after_applying_is_empty(state: ServiceState, target: str, replicas: int,
                                                   steps: list[tuple[int, Any]], analysed: bool) -> None:
    plan = plan_canary(state, Target(target, replicas), steps, TH if analysed else None)
    after = apply_to_state(state, plan)
    assert plan_canary(after, Target(target, replicas), steps, TH if analysed else None).empty
    assert after.count(target) == replicas
    assert after.releases_running() in ([target], [])
    assert after.weights == (((target, 100),) if replicas else ())


@given(state=service_states(), target=names, replicas=st.integers(min_value=1, max_value=5), steps=canary_steps)
def test_canary_keeps_stable_serving_until_the_canary_serves(state: ServiceState, target: str, replicas: int,
                                                             steps: list[tuple[int, Any]]) -> None:
    plan = plan_canary(state, Target(target, replicas), steps, TH)
    if stable_release(state, target) is None:
        return  # a blue-green switch, covered by test_plan.py
    sim = Sim.of(state)
    before = sim.capacity()
    for step in plan.steps:
        sim.apply(step)
        assert sim.capacity() >= min(before, replicas), step.describe()
    analyses = [s for s in plan.steps if s.kind == "analyse"]
    assert all(s.release == target and s.baseline == stable_release(state, target) for s in analyses)


# ---- rolling: plans as data ---------------------------------------------------------------------------


def test_rolling_one_at_a_time_with_surge() -> None:
    plan = plan_rolling(STABLE, Target("new", 3), max_surge=1, max_unavailable=0)
    assert plan.strategy == "rolling"
    assert plan.steps == (
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 33), ("old", 67))),
        Step("drain_instances", "old", count=1),
        Step("stop", "old", count=1),
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 67), ("old", 33))),
        Step("drain_instances", "old", count=1),
        Step("stop", "old", count=1),
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=1),
    )


def test_rolling_without_surge_retires_first() -> None:
    plan = plan_rolling(STABLE, Target("new", 3), max_surge=0, max_unavailable=1)
    assert plan.steps == (
        Step("drain_instances", "old", count=1),
        Step("stop", "old", count=1),
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 50), ("old", 50))),
        Step("drain_instances", "old", count=1),
        Step("stop", "old", count=1),
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=1),
        Step("start", "new", count=1),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
    )


def test_rolling_with_big_batches() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 4),))
    plan = plan_rolling(state, Target("new", 4), max_surge=2, max_unavailable=1)
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 67), ("old", 33))),
        Step("drain_instances", "old", count=3),
        Step("stop", "old", count=3),
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
        Step("drain", "old"),
        Step("stop", "old", count=1),
    )


def test_rolling_first_deploy_starts_everything_at_once() -> None:
    plan = plan_rolling(ServiceState(), Target("new", 3), max_surge=1, max_unavailable=0)
    assert plan.steps == (Step("start", "new", count=3), Step("wait_healthy", "new"),
                          Step("route", weights=(("new", 100),)))


def test_rolling_scales_the_live_release() -> None:
    state = ServiceState(weights=(("r1", 100),), instances=(("r1", 2),))
    assert plan_rolling(state, Target("r1", 2)).empty
    assert plan_rolling(state, Target("r1", 4)).steps == (
        Step("start", "r1", count=2), Step("wait_healthy", "r1"), Step("route", weights=(("r1", 100),)))
    assert plan_rolling(state, Target("r1", 1)).steps == (
        Step("drain_instances", "r1", count=1), Step("stop", "r1", count=1))


def test_rolling_stops_unrouted_instances_first_and_to_zero_drains_all() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 1), ("stray", 2)))
    plan = plan_rolling(state, Target("new", 1))
    assert plan.steps[0] == Step("stop", "stray", count=2)
    assert kinds(plan)[1:] == ["start", "wait_healthy", "route", "drain", "stop"]
    assert plan_rolling(STABLE, Target("new", 0)).steps == (
        Step("route"), Step("drain", "old"), Step("stop", "old", count=3))


def test_rolling_that_cannot_progress_is_refused() -> None:
    with pytest.raises(ValueError, match="can never replace"):
        plan_rolling(STABLE, Target("new", 3), max_surge=0, max_unavailable=0)
    with pytest.raises(ValueError, match=">= 0"):
        plan_rolling(STABLE, Target("new", 3), max_surge=-1, max_unavailable=1)


def test_proportional_weights() -> None:
    assert proportional([("a", 1), ("b", 2)]) == (("a", 33), ("b", 67))
    assert proportional([("a", 1), ("b", 1)]) == (("a", 50), ("b", 50))
    assert proportional([("a", 1), ("b", 0)]) == (("a", 100),)
    assert proportional([("a", 0)]) == ()
    assert proportional([("a", 1), ("b", 999)]) == (("a", 1), ("b", 99))  # every serving release gets some


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6))
def test_proportional_weights_sum_to_100(counts: list[int]) -> None:
    weights = proportional([(f"r{i}", n) for i, n in enumerate(counts)])
    if any(counts):
        assert sum(w for _, w in weights) == 100
        assert all(w >= 1 for _, w in weights)
        assert len(weights) == sum(1 for n in counts if n)


# ---- rolling: properties ------------------------------------------------------------------------------


def test_rolling_never_drops_below_replicas_minus_max_unavailable() -> None:
    """Every (replicas, surge, unavailable) up to 10/5/5, from the old release serving at full count."""
    checked = 0
    for replicas in range(1, 11):
        for surge in range(6):
            for unavailable in range(6):
                if surge == unavailable == 0:
                    continue
                state = ServiceState(weights=(("old", 100),), instances=(("old", replicas),))
                plan = plan_rolling(state, Target("new", replicas), surge, unavailable)
                sim = simulate(state, plan)
                assert min(sim.capacities) >= replicas - unavailable, (replicas, surge, unavailable)
                if unavailable == 0:
                    assert min(sim.capacities) >= replicas
                assert all(total <= replicas + surge for total in sim.totals_after_start)
                assert sim.running == {"old": 0, "new": replicas} and sim.weights == {"new": 100}
                checked += 1
    assert checked == 10 * 35


@settings(max_examples=300)
@given(state=service_states(), target=names, replicas=st.integers(min_value=1, max_value=8),
       surge=st.integers(min_value=0, max_value=4), unavailable=st.integers(min_value=0, max_value=4))
def test_rolling_capacity_from_any_state(state: ServiceState, target: str, replicas: int, surge: int,
                                         unavailable: int) -> None:
    if surge == unavailable == 0:
        return
    plan = plan_rolling(state, Target(target, replicas), surge, unavailable)
    sim = Sim.of(state)
    before = sim.capacity()
    for step in plan.steps:
        sim.apply(step)
        assert sim.capacity() >= min(before, replicas - unavailable), step.describe()
    assert all(total <= max(replicas + surge, 0) for total in sim.totals_after_start)
    assert sim.capacity() == replicas


@given(state=service_states(), target=names, replicas=st.integers(min_value=0, max_value=6),
       surge=st.integers(min_value=0, max_value=3), unavailable=st.integers(min_value=0, max_value=3))
def test_rolling_replanning_after_applying_is_empty(state: ServiceState, target: str, replicas: int, surge: int,
                                                   unavailable: int) -> None:
    if surge == unavailable == 0:
        return
    plan = plan_rolling(state, Target(target, replicas), surge, unavailable)
    after = apply_to_state(state, plan)
    assert plan_rolling(after, Target(target, replicas), surge, unavailable).empty
    assert after.count(target) == replicas
    assert after.releases_running() in ([target], [])


# ---- dispatch, options and the step model ---------------------------------------------------------------


def test_plan_for_dispatches_and_keeps_the_three_argument_call() -> None:
    assert plan_for("blue-green", STABLE, Target("new", 2)) == plan_blue_green(STABLE, Target("new", 2))
    options = StrategyOptions(steps=(CanaryStep(10, 60.0),), analysis=TH, max_surge=2, max_unavailable=1)
    assert plan_for("canary", STABLE, Target("new", 3), options) == plan_canary(
        STABLE, Target("new", 3), [(10, 60.0)], TH)
    assert plan_for("rolling", STABLE, Target("new", 3), options) == plan_rolling(STABLE, Target("new", 3), 2, 1)
    assert plan_for("rolling", STABLE, Target("new", 3)) == plan_rolling(STABLE, Target("new", 3), 1, 0)
    with pytest.raises(ValueError, match="at least one step"):
        plan_for("canary", STABLE, Target("new", 3))
    with pytest.raises(ValueError, match="no planner for strategy 'recreate'"):
        plan_for("recreate", STABLE, Target("new", 3))


def test_strategy_options_from_the_spec() -> None:
    from ingot.spec.models import StrategySpec

    spec = StrategySpec.model_validate({
        "type": "canary",
        "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "manual"}, {"weight": 80}],
        "analysis": {"interval": "5s", "max_error_rate": 0.02, "min_requests": 20, "inconclusive": "fail"},
    })
    options = StrategyOptions.from_mapping(spec.model_dump())
    assert options.steps == (CanaryStep(10, 30.0), CanaryStep(50, "manual"), CanaryStep(80, None))
    assert options.analysis == Thresholds(interval=5.0, max_error_rate=0.02, max_p99_ms=500.0, min_requests=20,
                                          inconclusive="fail")
    assert (options.max_surge, options.max_unavailable) == (1, 0)
    assert StrategyOptions.from_mapping(options.as_dict()) == options
    json.dumps(options.as_dict())


def test_new_step_kinds_describe_and_serialise() -> None:
    assert Step("pause", seconds=30).describe() == "pause for 30s"
    assert Step("pause", manual=True).as_dict() == {
        "kind": "pause", "description": "pause until an operator resumes or aborts", "manual": True}
    assert Step("drain_instances", "old", count=2).as_dict() == {
        "kind": "drain_instances", "release": "old", "count": 2,
        "description": "take 2 instance(s) of old out of the router (their requests in flight finish)"}
    analyse = Step("analyse", "new", baseline="old", analysis=TH)
    assert analyse.describe() == ("analyse new against old until a verdict: error rate <= 1.00%, p99 <= 500 ms, "
                                  "at least 50 requests per 5s interval; inconclusive waits up to 50s")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "pause"}, "either seconds or manual"),
        ({"kind": "pause", "seconds": 5.0, "manual": True}, "either seconds or manual"),
        ({"kind": "pause", "seconds": 0.0}, "seconds must be > 0"),
        ({"kind": "pause", "manual": True, "analysis": TH}, "needs the canary"),
        ({"kind": "analyse", "release": "new"}, "needs analysis"),
        ({"kind": "route", "weights": (("a", 120),)}, "percent"),
        ({"kind": "stop", "release": "a", "count": -1}, "count must be"),
        ({"kind": "stop", "release": "a", "manual": True}, "only a pause"),
    ],
)
def test_malformed_steps_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Step(**kwargs)


def test_steps_are_frozen() -> None:
    step = Step("pause", seconds=1.0)
    with pytest.raises(AttributeError):
        step.seconds = 2.0  # type: ignore[misc]
