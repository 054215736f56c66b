"""Canary: the new release beside the stable one, traffic shifted in steps, judged between steps.

The canary starts at its full replica count before it takes any traffic. The router splits traffic
by weight between releases, not by instance, so a smaller canary pool would only carry its share with
fewer instances (more load on each, skewing latency against stable) and would need scaling steps
before 100%. At full count the last step is a weight change only, and going back to stable at any
point is a weight change too. The cost is the same peak as blue-green: twice the replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingot.analysis import Thresholds
from ingot.plan.blue_green import plan_blue_green, retire_previous, stable_release
from ingot.plan.model import CanaryStep, Pause, Plan, ServiceState, Step, Target


def plan_canary(state: ServiceState, target: Target, steps: Sequence[tuple[int, Pause]],
                analysis: Thresholds | None = None, verification: float | None = None,
                min_ready: float | None = None) -> Plan:
    """Start the canary, then per step: route {canary: w, stable: 100 - w}, analyse and/or pause;
    finally all traffic to the canary, settle for `min_ready` (after the last step's pause, just before
    stable would retire: it is judged at full traffic), drain and stop stable.

    Steps below the canary's current weight are skipped, so a re-plan after an interrupted canary
    goes on from where traffic is (never backwards); the step at the current weight runs again.
    """
    checked = _checked(steps)
    release = target.release
    stable = stable_release(state, release)
    if target.replicas == 0 or stable is None:
        plan = plan_blue_green(state, target, verification, analysis, min_ready)
        return Plan("canary", target, plan.steps, note=_why_no_canary(state, target) if plan.steps else "")

    out: list[Step] = []
    have = state.count(release)
    current = state.weight(release)
    if have > target.replicas:
        if current > 0:
            out.append(Step("drain_instances", release, count=have - target.replicas))
        out.append(Step("stop", release, count=have - target.replicas))
    elif have < target.replicas:
        out.append(Step("start", release, count=target.replicas - have))
        out.append(Step("wait_healthy", release))

    skip = 0
    while skip < len(checked) and checked[skip].weight < current:
        skip += 1
    last = current
    for step in checked[skip:]:
        weights = ((release, 100),) if step.weight == 100 else ((release, step.weight), (stable, 100 - step.weight))
        out.append(Step("route", weights=weights))
        out.extend(_hold(release, stable, step.pause, analysis))
        last = step.weight
    if last != 100 or not checked[skip:]:
        out.append(Step("route", weights=((release, 100),)))

    out.extend(retire_previous(state, release, verification, analysis, min_ready))
    return Plan("canary", target, tuple(out))


def plan_abort(state: ServiceState, stable: str) -> Plan:
    """All traffic back to `stable`, which must still run; everything else drained and stopped.

    The automatic rollback of a failed analysis (or of `ingot abort`): a traffic switch, nothing starts.
    """
    count = state.count(stable)
    if count == 0:
        raise ValueError(f"cannot abort to {stable}: none of its instances is running")
    target = Target(stable, count)
    return Plan("abort", target, plan_blue_green(state, target).steps)


def _hold(canary: str, stable: str, pause: Pause, analysis: Thresholds | None) -> list[Step]:
    """What happens at one weight before the next: analysis during the pause, or the pause alone."""
    if analysis is None:
        if pause is None:
            return []
        if pause == "manual":
            return [Step("pause", manual=True)]
        return [Step("pause", seconds=pause)]
    if pause is None:
        return [Step("analyse", canary, baseline=stable, analysis=analysis)]
    if pause == "manual":
        return [Step("analyse", canary, baseline=stable, analysis=analysis),
                Step("pause", canary, manual=True, baseline=stable, analysis=analysis)]
    return [Step("analyse", canary, seconds=pause, baseline=stable, analysis=analysis)]


def _checked(steps: Sequence[tuple[int, Pause]]) -> list[CanaryStep]:
    if not steps:
        raise ValueError("a canary needs at least one step, e.g. [(10, 60.0)]")
    checked = []
    for index, (weight, pause) in enumerate(steps):
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
            raise ValueError(f"canary step {index}: weight must be a percent 1..100, got {weight!r}")
        if pause is not None and pause != "manual":
            if isinstance(pause, bool) or not isinstance(pause, int | float) or not pause > 0:
                raise ValueError(f"canary step {index}: pause must be seconds > 0, 'manual' or None, got {pause!r}")
            pause = float(pause)
        checked.append(CanaryStep(weight, pause))
    return checked


def _why_no_canary(state: ServiceState, target: Target) -> str:
    if target.replicas == 0:
        return "0 replicas: nothing to canary; everything is drained and stopped"
    if state.weight(target.release) > 0 and not any(
        r != target.release and w > 0 for r, w in state.weights
    ):
        return f"{target.release} already takes all traffic: only scaling and clean-up remain"
    return (f"no other release serves traffic to compare {target.release} with: it goes live at once, "
            "as with blue-green")
