"""Cluster rollouts as data: each strategy's plan, and planning again after applying it gives nothing."""

from __future__ import annotations

import pytest

from ingot.analysis import Thresholds
from ingot.kube.names import ALL_TRACKS
from ingot.kube.plan import (
    ClusterState,
    KubePlan,
    KubeStep,
    Options,
    Target,
    Track,
    apply_to_state,
    kept_releases,
    plan_rollback,
    plan_rollout,
)
from ingot.plan.model import CanaryStep

OLD = Track("web-aaaaaaaaaaaa-111111", "aaaaaaaaaaaa", 3)
NEW = Target("web", "web-bbbbbbbbbbbb-222222", "bbbbbbbbbbbb", 3)
AT_REST_BG = ClusterState(
    tracks=(OLD,), selectors=(("web", OLD.deployment), ("web-preview", OLD.deployment)), history=("aaaaaaaaaaaa",))


def kinds(plan: KubePlan) -> list[str]:
    return [step.kind for step in plan.steps]


def settles(state: ClusterState, target: Target, options: Options) -> ClusterState:
    """Apply the plan to the state and check that planning again wants nothing more."""
    plan = plan_rollout(state, target, options)
    after = apply_to_state(state, plan)
    again = plan_rollout(after, target, options)
    assert again.empty, [s.describe() for s in again.steps]
    return after


def test_first_blue_green_deploy_creates_waits_and_points_both_services() -> None:
    plan = plan_rollout(ClusterState(), NEW, Options())
    assert plan.steps == (
        KubeStep("create", NEW.deployment, NEW.release, replicas=3),
        KubeStep("select", NEW.deployment, service="web-preview"),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("select", NEW.deployment, service="web"),
    )
    settles(ClusterState(), NEW, Options())


def test_blue_green_switches_the_selector_then_scales_the_old_to_zero() -> None:
    plan = plan_rollout(AT_REST_BG, NEW, Options())
    assert plan.steps == (
        KubeStep("create", NEW.deployment, NEW.release, replicas=3),
        KubeStep("select", NEW.deployment, service="web-preview"),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("select", NEW.deployment, service="web"),
        KubeStep("scale", OLD.deployment, replicas=0),
    )
    after = settles(AT_REST_BG, NEW, Options())
    assert after.track(OLD.deployment) == Track(OLD.deployment, OLD.release, 0)  # kept for a rollback


def test_verification_window_keeps_the_previous_deployment_scaled_until_it_ends() -> None:
    options = Options(verification=300.0)
    plan = plan_rollout(AT_REST_BG, NEW, options)
    assert kinds(plan)[-3:] == ["select", "verify", "scale"]
    verify = plan.steps[-2]
    assert (verify.deployment, verify.baseline, verify.seconds) == (NEW.deployment, OLD.deployment, 300.0)
    settles(AT_REST_BG, NEW, options)


def test_rollback_inside_the_window_is_a_selector_switch_alone() -> None:
    in_window = ClusterState(tracks=(OLD, Track(NEW.deployment, NEW.release, 3)),
                             selectors=(("web", NEW.deployment), ("web-preview", NEW.deployment)),
                             history=(OLD.release, NEW.release))
    back = Target("web", OLD.deployment, OLD.release, 3)
    plan = plan_rollback(in_window, back, Options(verification=300.0))
    assert plan.strategy == "rollback"
    assert plan.steps == (
        KubeStep("wait_available", OLD.deployment),
        KubeStep("select", OLD.deployment, service="web"),
        KubeStep("select", OLD.deployment, service="web-preview"),
        KubeStep("scale", NEW.deployment, replicas=0),
    )
    assert "create" not in kinds(plan) and "verify" not in kinds(plan)
    assert plan_rollback(apply_to_state(in_window, plan), back, Options()).empty


def test_rollback_after_the_window_scales_the_kept_deployment_up_first() -> None:
    after = ClusterState(tracks=(Track(OLD.deployment, OLD.release, 0), Track(NEW.deployment, NEW.release, 3)),
                         selectors=(("web", NEW.deployment), ("web-preview", NEW.deployment)),
                         history=(OLD.release, NEW.release))
    back = Target("web", OLD.deployment, OLD.release, 3)
    plan = plan_rollback(after, back, Options())
    assert kinds(plan) == ["scale", "select", "wait_available", "select", "scale"]
    assert plan.steps[0] == KubeStep("scale", OLD.deployment, replicas=3)


def test_retention_deletes_deployments_of_releases_beyond_it() -> None:
    tracks = (*(Track(f"web-{r * 12}-000000", r * 12, 0) for r in "cdef"), OLD)
    state = ClusterState(tracks=tracks, selectors=(("web", OLD.deployment), ("web-preview", OLD.deployment)),
                         history=("cccccccccccc", "dddddddddddd", "eeeeeeeeeeee", "ffffffffffff", OLD.release))
    plan = plan_rollout(state, NEW, Options(retention=3))
    deleted = [s.deployment for s in plan.steps if s.kind == "delete"]
    # Kept: the new release, the old one, and the one before it (ffff...).
    assert deleted == ["web-cccccccccccc-000000", "web-dddddddddddd-000000", "web-eeeeeeeeeeee-000000"]
    settles(state, NEW, Options(retention=3))


def test_an_older_pod_template_of_the_same_release_is_replaced_not_kept() -> None:
    stale = Track("web-bbbbbbbbbbbb-999999", NEW.release, 3)
    state = ClusterState(tracks=(stale,), selectors=(("web", stale.deployment), ("web-preview", stale.deployment)),
                         history=(NEW.release,))
    plan = plan_rollout(state, NEW, Options())
    assert kinds(plan) == ["create", "select", "wait_available", "select", "delete"]
    assert plan.steps[-1] == KubeStep("delete", stale.deployment)


def test_kept_releases_count_the_new_one_first() -> None:
    assert kept_releases(["a", "b", "c", "b"], "d", 2) == {"d", "b"}
    assert kept_releases(["a", "b"], "a", 2) == {"a", "b"}


AT_REST_CANARY = ClusterState(tracks=(OLD,), selectors=(("web", OLD.deployment), ("web-canary", OLD.deployment)),
                              route=(("web", 100),), history=(OLD.release,))
STEPS = (CanaryStep(10, 60.0), CanaryStep(50, "manual"))


def test_canary_on_a_gateway_shifts_route_weights_between_two_services() -> None:
    options = Options(strategy="canary", steps=STEPS, traffic="gateway")
    plan = plan_rollout(AT_REST_CANARY, NEW, options)
    assert plan.steps == (
        KubeStep("create", NEW.deployment, NEW.release, replicas=3),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("select", NEW.deployment, service="web-canary"),
        KubeStep("route", weights=(("web", 90), ("web-canary", 10))),
        KubeStep("pause", seconds=60.0),
        KubeStep("route", weights=(("web", 50), ("web-canary", 50))),
        KubeStep("pause", manual=True),
        KubeStep("select", NEW.deployment, service="web"),
        KubeStep("route", weights=(("web", 100),)),
        KubeStep("scale", OLD.deployment, replicas=0),
    )
    settles(AT_REST_CANARY, NEW, options)


def test_canary_with_prometheus_analysis_analyses_at_each_step() -> None:
    thresholds = Thresholds(interval=5.0)
    options = Options(strategy="canary", steps=STEPS, traffic="gateway", analysis=thresholds, verification=120.0)
    plan = plan_rollout(AT_REST_CANARY, NEW, options)
    analyses = [s for s in plan.steps if s.kind == "analyse"]
    assert [(s.seconds, s.baseline) for s in analyses] == [(60.0, OLD.deployment), (None, OLD.deployment)]
    assert kinds(plan)[-3:] == ["route", "verify", "scale"]
    assert plan.steps[-2].analysis == thresholds
    settles(AT_REST_CANARY, NEW, options)


def test_an_interrupted_canary_goes_on_from_its_current_weight() -> None:
    options = Options(strategy="canary", steps=STEPS, traffic="gateway")
    halfway = ClusterState(tracks=(OLD, Track(NEW.deployment, NEW.release, 3)),
                           selectors=(("web", OLD.deployment), ("web-canary", NEW.deployment)),
                           route=(("web", 50), ("web-canary", 50)), history=(OLD.release,))
    plan = plan_rollout(halfway, NEW, options)
    assert kinds(plan) == ["pause", "select", "route", "scale"]  # the 50% step's pause runs again


def test_canary_without_a_gateway_splits_by_replica_counts() -> None:
    options = Options(strategy="canary", steps=(CanaryStep(25, 30.0), CanaryStep(50, None)), traffic="replicas")
    target = Target("web", NEW.deployment, NEW.release, 4)
    state = ClusterState(tracks=(Track(OLD.deployment, OLD.release, 4),),
                         selectors=(("web", OLD.deployment), ("web-canary", OLD.deployment)),
                         history=(OLD.release,))
    plan = plan_rollout(state, target, options)
    assert plan.steps == (
        KubeStep("create", NEW.deployment, NEW.release, replicas=1),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("scale", OLD.deployment, replicas=3),
        KubeStep("select", ALL_TRACKS, service="web"),
        KubeStep("pause", seconds=30.0),
        KubeStep("scale", NEW.deployment, replicas=2),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("scale", OLD.deployment, replicas=2),
        KubeStep("scale", NEW.deployment, replicas=4),
        KubeStep("wait_available", NEW.deployment),
        KubeStep("select", NEW.deployment, service="web"),
        KubeStep("select", NEW.deployment, service="web-canary"),
        KubeStep("scale", OLD.deployment, replicas=0),
    )
    settles(state, target, options)


@pytest.mark.parametrize(("replicas", "surge"), [(3, 1), (4, 2), (5, 2), (1, 1)])
def test_rolling_moves_max_surge_pods_at_a_time(replicas: int, surge: int) -> None:
    options = Options(strategy="rolling", max_surge=surge)
    target = Target("web", NEW.deployment, NEW.release, replicas)
    state = ClusterState(tracks=(Track(OLD.deployment, OLD.release, replicas),),
                         selectors=(("web", OLD.deployment),), history=(OLD.release,))
    plan = plan_rollout(state, target, options)
    new_counts = [s.replicas for s in plan.steps if s.deployment == NEW.deployment and s.kind in ("create", "scale")]
    assert new_counts == [*range(surge, replicas, surge), replicas]
    old_counts = [s.replicas for s in plan.steps if s.deployment == OLD.deployment]
    assert old_counts == [replicas - c for c in range(surge, replicas, surge)] + [0]
    settles(state, target, options)


def test_canary_with_nothing_live_goes_live_at_once_and_says_why() -> None:
    options = Options(strategy="canary", steps=STEPS, traffic="gateway")
    plan = plan_rollout(ClusterState(), NEW, options)
    assert "goes live at once" in plan.note
    assert "pause" not in kinds(plan)
    settles(ClusterState(), NEW, options)


def test_scaling_the_live_release_in_and_out() -> None:
    live = apply_to_state(ClusterState(), plan_rollout(ClusterState(), NEW, Options()))
    more = Target("web", NEW.deployment, NEW.release, 5)
    assert plan_rollout(live, more, Options()).steps == (KubeStep("scale", NEW.deployment, replicas=5),
                                                         KubeStep("wait_available", NEW.deployment))
    fewer = Target("web", NEW.deployment, NEW.release, 1)
    assert plan_rollout(live, fewer, Options()).steps == (KubeStep("scale", NEW.deployment, replicas=1),)


def test_steps_describe_themselves_and_serialise() -> None:
    plan = plan_rollout(AT_REST_CANARY, NEW, Options(strategy="canary", steps=STEPS, traffic="gateway"))
    data = plan.as_dict()
    assert data["deployment"] == NEW.deployment
    assert data["steps"][3] == {"kind": "route", "weights": {"web": 90, "web-canary": 10},
                                "description": "set HTTPRoute weights: web 90, web-canary 10"}
    assert all(step["description"] for step in data["steps"])
