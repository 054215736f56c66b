"""Scale and restart plans as data, and the scale override that later deploys keep."""

from __future__ import annotations

import pytest

from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.plan import Plan, ServiceState, Target, apply_to_state, plan_restart, plan_scale

LIVE = (("r", 100),)


def kinds(plan: Plan) -> list[tuple[str, int]]:
    return [(s.kind, s.count) for s in plan.steps]


def test_scale_up_starts_in_batches_each_joining_the_pool_after_its_gate() -> None:
    state = ServiceState(weights=LIVE, instances=(("r", 2),))
    plan = plan_scale(state, Target("r", 40), batch=15)
    assert kinds(plan) == [("start", 15), ("wait_healthy", 0), ("route", 0)] * 2 + [
        ("start", 8), ("wait_healthy", 0), ("route", 0)]
    assert all(s.weights == LIVE for s in plan.steps if s.kind == "route")
    assert apply_to_state(state, plan) == ServiceState(weights=LIVE, instances=(("r", 40),))
    assert plan_scale(apply_to_state(state, plan), Target("r", 40)).empty  # planned again: nothing to do


def test_scale_down_drains_then_stops_the_excess() -> None:
    state = ServiceState(weights=LIVE, instances=(("r", 4),))
    plan = plan_scale(state, Target("r", 1))
    assert kinds(plan) == [("drain_instances", 3), ("stop", 3)]
    assert plan_scale(apply_to_state(state, plan), Target("r", 1)).empty


def test_scale_stops_an_idle_release_left_by_a_verification_window_and_refuses_a_non_live_one() -> None:
    state = ServiceState(weights=LIVE, instances=(("old", 2), ("r", 2)))
    assert kinds(plan_scale(state, Target("r", 2))) == [("stop", 2)]
    with pytest.raises(ValueError, match="live release only"):
        plan_scale(state, Target("old", 3))
    with pytest.raises(ValueError, match="batch"):
        plan_scale(state, Target("r", 3), batch=0)


def test_restart_replaces_each_batch_after_its_fresh_ones_joined() -> None:
    state = ServiceState(weights=LIVE, instances=(("r", 3),))
    plan = plan_restart(state, Target("r", 3), batch=2)
    assert kinds(plan) == [("start", 2), ("wait_healthy", 0), ("route", 0), ("drain_instances", 2), ("stop", 2),
                           ("start", 1), ("wait_healthy", 0), ("route", 0), ("drain_instances", 1), ("stop", 1)]
    assert apply_to_state(state, plan).instances == (("r", 3),)


def test_restart_makes_up_missing_instances_and_retires_extra_ones() -> None:
    short = plan_restart(ServiceState(weights=LIVE, instances=(("r", 1),)), Target("r", 3))
    assert kinds(short)[:2] == [("start", 2), ("wait_healthy", 0)]
    assert apply_to_state(ServiceState(weights=LIVE, instances=(("r", 1),)), short).instances == (("r", 3),)
    extra = plan_restart(ServiceState(weights=LIVE, instances=(("r", 3),)), Target("r", 1))
    assert kinds(extra) == [("start", 1), ("wait_healthy", 0), ("route", 0), ("drain_instances", 3), ("stop", 3)]


def params(replicas: int) -> DeployParams:
    return DeployParams(replicas=replicas, health=HealthPolicy(), listen=("127.0.0.1", 8080))


def test_a_scale_is_kept_by_deploys_until_the_spec_changes_replicas() -> None:
    scaled = params(2).scaled(40)
    assert (scaled.replicas, scaled.spec_replicas) == (40, 2)
    assert DeployParams.from_dict(scaled.as_dict()) == scaled
    assert "spec_replicas" not in params(2).as_dict()  # parameters recorded before scale compare equal
    kept = params(2).keeping_scale(scaled)
    assert kept == scaled  # an unchanged spec: the deploy changes nothing
    assert params(3).keeping_scale(scaled) == params(3)  # the spec changed replicas: it wins
    assert scaled.scaled(2) == params(2)  # back to the spec's count: no override left
    assert scaled.scaled(5).spec_replicas == 2  # rescaled: still measured against the spec's count
