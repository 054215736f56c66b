"""Blue-green: bring the new release up beside the old, switch all traffic at once, retire the old."""

from __future__ import annotations

from ingot.plan.model import Plan, ServiceState, Step, Target


def plan_blue_green(state: ServiceState, target: Target) -> Plan:
    release = target.release
    steps: list[Step] = []
    have = state.count(release)
    if have < target.replicas:
        steps.append(Step("start", release, count=target.replicas - have))
        steps.append(Step("wait_healthy", release))
    wanted_weights = ((release, 100),) if target.replicas > 0 else ()
    if tuple(sorted(state.weights)) != wanted_weights or (have < target.replicas and wanted_weights):
        steps.append(Step("route", weights=wanted_weights))
    for old in state.releases_running():
        if old == release:
            continue
        if old in state.live_releases():
            steps.append(Step("drain", old))
        steps.append(Step("stop", old, count=state.count(old)))
    if have > target.replicas:
        steps.append(Step("stop", release, count=have - target.replicas))
    return Plan("blue-green", target, tuple(steps))


def apply_to_state(state: ServiceState, plan: Plan) -> ServiceState:
    """What the state becomes once `plan` is applied successfully (the executor's contract).

    Only `start`, `stop` and `route` change the planner's view; `wait_healthy`, `drain`,
    `drain_instances`, `pause` and `analyse` change nothing in it (or fail the deploy).
    """
    counts = dict(state.instances)
    weights = state.weights
    for step in plan.steps:
        if step.kind == "start" and step.release:
            counts[step.release] = counts.get(step.release, 0) + step.count
        elif step.kind == "stop" and step.release:
            counts[step.release] = counts.get(step.release, 0) - step.count
        elif step.kind == "route":
            weights = step.weights
    instances = tuple(sorted((r, n) for r, n in counts.items() if n > 0))
    return ServiceState(weights=tuple(sorted(weights)), instances=instances)
