"""Strategies are pure planners: plans asserted as data, and re-planning after applying is empty."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingot.plan import ServiceState, Step, Target, apply_to_state, plan_blue_green


def test_first_deploy_starts_waits_and_routes() -> None:
    plan = plan_blue_green(ServiceState(), Target("new", 2))
    assert plan.steps == (
        Step("start", "new", count=2),
        Step("wait_healthy", "new"),
        Step("route", weights=(("new", 100),)),
    )


def test_switch_from_old_drains_before_stopping() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 3),))
    plan = plan_blue_green(state, Target("new", 2))
    assert [s.kind for s in plan.steps] == ["start", "wait_healthy", "route", "drain", "stop"]
    assert plan.steps[3] == Step("drain", "old")
    assert plan.steps[4] == Step("stop", "old", count=3)


def test_nothing_changed_is_an_empty_plan() -> None:
    state = ServiceState(weights=(("r1", 100),), instances=(("r1", 2),))
    assert plan_blue_green(state, Target("r1", 2)).empty


def test_leftover_instances_of_an_unrouted_release_are_stopped_without_drain() -> None:
    state = ServiceState(weights=(("r1", 100),), instances=(("r1", 2), ("stray", 1)))
    plan = plan_blue_green(state, Target("r1", 2))
    assert plan.steps == (Step("stop", "stray", count=1),)


def test_scale_up_and_down_of_the_live_release() -> None:
    state = ServiceState(weights=(("r1", 100),), instances=(("r1", 2),))
    up = plan_blue_green(state, Target("r1", 4))
    assert [s.kind for s in up.steps] == ["start", "wait_healthy", "route"]
    assert up.steps[0].count == 2
    down = plan_blue_green(state, Target("r1", 1))
    # The excess serves until it is out of the pool and has finished its requests: only then is it stopped.
    assert down.steps == (Step("drain_instances", "r1", count=1), Step("stop", "r1", count=1))


def test_plan_as_dict_is_readable() -> None:
    data = plan_blue_green(ServiceState(), Target("r9", 1)).as_dict()
    assert data["steps"][0] == {"kind": "start", "description": "start 1 instance(s) of r9", "release": "r9",
                                "count": 1}
    assert data["steps"][2]["weights"] == {"r9": 100}


releases = st.sampled_from(["a", "b", "c"])


@given(
    live=st.one_of(st.none(), releases),
    counts=st.dictionaries(releases, st.integers(min_value=0, max_value=4)),
    target=releases,
    replicas=st.integers(min_value=0, max_value=5),
)
def test_replanning_after_applying_is_empty(live: str | None, counts: dict[str, int], target: str,
                                            replicas: int) -> None:
    state = ServiceState(
        weights=((live, 100),) if live else (),
        instances=tuple(sorted((r, n) for r, n in counts.items() if n > 0)),
    )
    plan = plan_blue_green(state, Target(target, replicas))
    after = apply_to_state(state, plan)
    assert plan_blue_green(after, Target(target, replicas)).empty
    assert after.count(target) == replicas
    assert after.releases_running() in ([target], [])
