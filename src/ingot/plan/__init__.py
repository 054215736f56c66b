"""Strategies as pure planners: (current state, target, options) -> Plan."""

from dataclasses import replace

from ingot.analysis import Thresholds
from ingot.plan.blue_green import apply_to_state, plan_blue_green, stable_release
from ingot.plan.canary import plan_abort, plan_canary
from ingot.plan.model import CanaryStep, Plan, ServiceState, Step, StrategyOptions, Target
from ingot.plan.rolling import plan_rolling, proportional
from ingot.plan.scale import SCALE_BATCH, plan_restart, plan_scale

STRATEGIES = ("blue-green", "canary", "rolling")


def plan_for(strategy: str, state: ServiceState, target: Target, options: StrategyOptions | None = None, *,
             worker: bool = False) -> Plan:
    """The plan of `strategy`; `options` carries canary steps and analysis, rolling surge limits, the
    verification window, min_ready and the hold of a switch. A `worker` (port: null) takes no traffic:
    see `without_traffic`."""
    plan = _plan_for(strategy, state, target, options)
    if worker:
        return without_traffic(plan)
    return with_hold(plan, state, options.hold) if options is not None and options.hold else plan


def without_traffic(plan: Plan) -> Plan:
    """A worker's plan: nothing is in flight through a router, so nothing drains. Its `route` steps stay:
    they are where a release becomes the live one of record, before what it replaces is stopped."""
    return replace(plan, steps=tuple(s for s in plan.steps if s.kind not in ("drain", "drain_instances")))


def with_hold(plan: Plan, state: ServiceState, hold: float) -> Plan:
    """`hold` on each switch of `plan` that takes the last traffic away from a release that had some (the
    blue-green switch, a canary's or a rolling update's last step): new requests wait rather than overlap."""
    weighted = {r for r, w in state.weights if w > 0}
    steps = []
    for step in plan.steps:
        if step.kind == "route":
            now = {r for r, w in step.weights if w > 0}
            if weighted - now and now:
                step = replace(step, seconds=hold)
            weighted = now
        steps.append(step)
    return replace(plan, steps=tuple(steps))


def _plan_for(strategy: str, state: ServiceState, target: Target, options: StrategyOptions | None) -> Plan:
    match strategy:
        case "blue-green":
            opts = options or StrategyOptions()
            return plan_blue_green(state, target, opts.verification, opts.analysis, opts.min_ready)
        case "canary":
            if options is None or not options.steps:
                raise ValueError("a canary needs options with at least one step")
            return plan_canary(state, target, options.steps, options.analysis, options.verification,
                               options.min_ready)
        case "rolling":
            opts = options or StrategyOptions()
            return plan_rolling(state, target, opts.max_surge, opts.max_unavailable, opts.min_ready)
    raise ValueError(f"no planner for strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


__all__ = [
    "SCALE_BATCH",
    "STRATEGIES",
    "CanaryStep",
    "Plan",
    "ServiceState",
    "Step",
    "StrategyOptions",
    "Target",
    "Thresholds",
    "apply_to_state",
    "plan_abort",
    "plan_blue_green",
    "plan_canary",
    "plan_for",
    "plan_restart",
    "plan_rolling",
    "plan_scale",
    "proportional",
    "stable_release",
    "with_hold",
    "without_traffic",
]
