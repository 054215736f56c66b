"""Scale and restart: plans that change how many instances of the live release run, or replace them all
with fresh ones, without a new release.

Both are made of the rolling planner's steps (`start`, `wait_healthy`, `route`, `drain_instances`,
`stop`) and applied by the same executor; they only differ from a rolling update in what they replace:
a rolling update retires the instances of *other* releases, a restart the older instances of the *same*
release (the executor's `drain_instances` and `stop` take a release's oldest instances first, and the
ones the operation starts are its newest).

Scaling up starts the missing instances `batch` at a time; each batch passes its health gate and then
joins the pool (the `route`) before the next one starts, so capacity arrives while the rest still
starts. Scaling down takes the excess out of the pool, waits until their requests in flight are done,
and stops them.

A restart goes batch by batch too: `batch` fresh instances start and pass their gate, join the pool,
and only then as many of the old ones are drained and stopped, so serving capacity never drops below
what ran (max_unavailable 0). It is an action, not a convergence: planned again against its result it
would replace everything again (unlike a deploy's plan, which is empty then).
"""

from __future__ import annotations

from ingot.plan.model import Plan, ServiceState, Step, Target

SCALE_BATCH = 10  # instances started at once by a scale-up when the caller gives no batch


def plan_scale(state: ServiceState, target: Target, batch: int = SCALE_BATCH) -> Plan:
    """From what runs of the live release (`target.release`) to `target.replicas` of it."""
    _check(state, target.release, batch)
    release = target.release
    have = state.count(release)
    steps = _idle_others(state, release)
    while have < target.replicas:
        count = min(batch, target.replicas - have)
        steps += [Step("start", release, count=count), Step("wait_healthy", release),
                  Step("route", weights=((release, 100),))]
        have += count
    if have > target.replicas:
        excess = have - target.replicas
        steps += [Step("drain_instances", release, count=excess), Step("stop", release, count=excess)]
    return Plan("scale", target, tuple(steps))


def plan_restart(state: ServiceState, target: Target, batch: int = 1) -> Plan:
    """Every running instance of `target.release` replaced by a fresh one, `batch` at a time; the result
    has `target.replicas` instances (more old ones than that are retired without a replacement, fewer
    are made up for in the first batch)."""
    _check(state, target.release, batch)
    release = target.release
    old = state.count(release)
    new = 0
    steps = _idle_others(state, release)
    while old or new < target.replicas:
        start = min(batch, target.replicas - new) if new < target.replicas else 0
        if not new and old < target.replicas:
            start = min(max(start, target.replicas - old), target.replicas)  # the missing ones come too
        retire = min(old, batch if new + start < target.replicas else old)
        if start:
            steps += [Step("start", release, count=start), Step("wait_healthy", release),
                      Step("route", weights=((release, 100),))]
            new += start
        if retire:
            steps += [Step("drain_instances", release, count=retire), Step("stop", release, count=retire)]
            old -= retire
    return Plan("restart", target, tuple(steps))


def _idle_others(state: ServiceState, release: str) -> list[Step]:
    """Instances of other releases run without traffic only inside a deploy's verification window, which
    this operation ends: they serve nobody, and go first (as in a rolling update)."""
    return [Step("stop", other, count=state.count(other)) for other in state.releases_running() if other != release]


def _check(state: ServiceState, release: str, batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if state.weight(release) < 100:
        raise ValueError(f"release {release} does not take all traffic: scale and restart act on the live "
                         "release only")
