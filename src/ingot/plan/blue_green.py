"""Blue-green: bring the new release up beside the old, switch all traffic at once, retire the old."""

from __future__ import annotations

from ingot.analysis import Thresholds
from ingot.plan.model import Plan, ServiceState, Step, Target


def stable_release(state: ServiceState, release: str) -> str | None:
    """The release `release` is compared with and would go back to: the most weighted other release
    that has instances."""
    candidates = [(w, r) for r, w in state.weights if r != release and w > 0 and state.count(r) > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (-c[0], c[1]))[1]


def retire_previous(state: ServiceState, release: str, verification: float | None = None,
                    analysis: Thresholds | None = None) -> list[Step]:
    """Once `release` takes all traffic: drain and stop every other release.

    With a verification window, the release that served before stays running (drained, idle) through
    a `verify` step first, so that going back to it needs no new instance.
    """
    live = state.live_releases()
    previous = [r for r in state.releases_running() if r != release]
    baseline = stable_release(state, release)
    if verification is None or baseline is None:
        steps: list[Step] = []
        for old in previous:
            if old in live:
                steps.append(Step("drain", old))
            steps.append(Step("stop", old, count=state.count(old)))
        return steps
    return [
        *(Step("drain", old) for old in previous if old in live),
        Step("verify", release, seconds=verification, baseline=baseline, analysis=analysis),
        *(Step("stop", old, count=state.count(old)) for old in previous),
    ]


def plan_blue_green(state: ServiceState, target: Target, verification: float | None = None,
                    analysis: Thresholds | None = None) -> Plan:
    """Start the new release at full count, switch all traffic to it, retire the others (after the
    verification window, judged by `analysis`, when one is given)."""
    release = target.release
    steps: list[Step] = []
    have = state.count(release)
    if have < target.replicas:
        steps.append(Step("start", release, count=target.replicas - have))
        steps.append(Step("wait_healthy", release))
    wanted_weights = ((release, 100),) if target.replicas > 0 else ()
    if tuple(sorted(state.weights)) != wanted_weights or (have < target.replicas and wanted_weights):
        steps.append(Step("route", weights=wanted_weights))
    steps.extend(retire_previous(state, release, verification if wanted_weights else None, analysis))
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
