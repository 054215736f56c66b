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


def settle(state: ServiceState, release: str, min_ready: float | None) -> list[Step]:
    """The settle step once `release`'s fresh instances take traffic: none without min_ready, and none when
    `release` already took all traffic (scaling it, or cleaning up after it: no new release goes live)."""
    if not min_ready or state.weight(release) >= 100:
        return []
    return [Step("settle", release, seconds=min_ready, baseline=stable_release(state, release))]


def retire_previous(state: ServiceState, release: str, verification: float | None = None,
                    analysis: Thresholds | None = None, min_ready: float | None = None) -> list[Step]:
    """Once `release` takes all traffic: settle, then drain and stop every other release.

    With min_ready, `release` must first stay up and healthy under full traffic for that long while
    everything else still runs, so that a failure goes back by a traffic switch alone. With a
    verification window, the release that served before then stays running (drained, idle) through a
    `verify` step too: min_ready runs first (the deploy command waits for it), the window after it.
    """
    live = state.live_releases()
    previous = [r for r in state.releases_running() if r != release]
    baseline = stable_release(state, release)
    steps = settle(state, release, min_ready)
    if verification is None or baseline is None:
        for old in previous:
            if old in live:
                steps.append(Step("drain", old))
            steps.append(Step("stop", old, count=state.count(old)))
        return steps
    return [
        *steps,
        *(Step("drain", old) for old in previous if old in live),
        Step("verify", release, seconds=verification, baseline=baseline, analysis=analysis),
        *(Step("stop", old, count=state.count(old)) for old in previous),
    ]


def plan_blue_green(state: ServiceState, target: Target, verification: float | None = None,
                    analysis: Thresholds | None = None, min_ready: float | None = None) -> Plan:
    """Start the new release at full count, switch all traffic to it, let it settle for `min_ready`, retire
    the others (after the verification window, judged by `analysis`, when one is given)."""
    release = target.release
    steps: list[Step] = []
    have = state.count(release)
    if have < target.replicas:
        steps.append(Step("start", release, count=target.replicas - have))
        steps.append(Step("wait_healthy", release))
    wanted_weights = ((release, 100),) if target.replicas > 0 else ()
    if tuple(sorted(state.weights)) != wanted_weights or (have < target.replicas and wanted_weights):
        steps.append(Step("route", weights=wanted_weights))
    if wanted_weights:
        steps.extend(retire_previous(state, release, verification, analysis, min_ready))
    else:  # scaled to zero: nothing goes live, so nothing settles or is verified
        steps.extend(retire_previous(state, release))
    if have > target.replicas:
        excess = have - target.replicas
        if wanted_weights:  # it serves: the excess leaves its pool, and finishes its requests, before it stops
            steps.append(Step("drain_instances", release, count=excess))
        steps.append(Step("stop", release, count=excess))
    return Plan("blue-green", target, tuple(steps))


def apply_to_state(state: ServiceState, plan: Plan) -> ServiceState:
    """What the state becomes once `plan` is applied successfully (the executor's contract).

    Only `start`, `stop` and `route` change the planner's view; `wait_healthy`, `settle`, `drain`,
    `drain_instances`, `pause`, `analyse` and `verify` change nothing in it (or fail the deploy).
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
