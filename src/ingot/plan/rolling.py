"""Rolling: replace the serving instances in batches, the router splitting traffic by instance count.

Each batch starts what `max_surge` allows (never more than replicas + max_surge instances in all) and
waits for them to be healthy, then routes every release a share of traffic proportional to the
instances it will have once the batch is done, then takes out of the router, drains and stops as many
old instances as `max_unavailable` allows (never fewer than replicas - max_unavailable routed, healthy
instances). With max_surge 0 a batch begins by retiring; with max_unavailable 0 serving capacity never
drops below `replicas`.

With `min_ready`, every batch settles: once its fresh instances take their share of traffic, they must
stay up and healthy for min_ready before the batch retires any old instance (the last batch's settle
is at full traffic, with its old instances still running). So an old instance is retired only in
exchange for instances that proved stable under traffic, as Kubernetes' minReadySeconds and Nomad's
min_healthy_time do per instance. Settling once, after the last batch, would prove nothing before
the earlier batches' old instances were gone: a release that dies 5 s after its health gate would
be found with a single batch of the old release left to go back to. Per batch, it is found in the
first batch, with all but one batch of the old release still serving. The cost is min_ready per
batch; a larger max_surge makes fewer, larger batches.
"""

from __future__ import annotations

from ingot.plan.blue_green import plan_blue_green, settle
from ingot.plan.model import Plan, ServiceState, Step, Target

Weights = tuple[tuple[str, int], ...]


def plan_rolling(state: ServiceState, target: Target, max_surge: int = 1, max_unavailable: int = 0,
                 min_ready: float | None = None) -> Plan:
    if max_surge < 0 or max_unavailable < 0:
        raise ValueError(f"max_surge and max_unavailable must be >= 0, got {max_surge} and {max_unavailable}")
    if max_surge == 0 and max_unavailable == 0:
        raise ValueError("a rolling update with max_surge 0 and max_unavailable 0 can never replace an instance")
    if target.replicas == 0:
        return Plan("rolling", target, plan_blue_green(state, target).steps)

    release, replicas = target.release, target.replicas
    # A settle after each batch that puts fresh instances in traffic; none when only scaling the live release.
    settling = settle(state, release, min_ready)
    live = set(state.live_releases())
    steps: list[Step] = []
    # Instances of other releases that take no traffic serve nobody: they go first, freeing room to surge.
    for other in state.releases_running():
        if other != release and other not in live:
            steps.append(Step("stop", other, count=state.count(other)))

    new = state.count(release)
    old = {r: state.count(r) for r in state.releases_running() if r != release and r in live}  # retired in order
    weights: Weights = tuple(sorted(state.weights))
    floor = replicas - max_unavailable
    while new < replicas or old:
        serving_old = sum(old.values())
        start = max(0, min(replicas - new, replicas + max_surge - (new + serving_old)))
        if start:
            steps.append(Step("start", release, count=start))
            steps.append(Step("wait_healthy", release))
            new += start
        retire = max(0, min(serving_old, new + serving_old - floor))
        batch: list[tuple[str, int, bool]] = []  # (release, count, whether these are its last instances)
        for name in list(old):
            take = min(old[name], retire)
            if take:
                retire -= take
                old[name] -= take
                batch.append((name, take, old[name] == 0))
                if not old[name]:
                    del old[name]
        wanted = proportional([(release, new), *old.items()])
        # A route after a start also puts the new instances into the router's pool.
        if start or tuple(sorted(wanted)) != weights:
            steps.append(Step("route", weights=wanted))
            weights = tuple(sorted(wanted))
        if start:
            steps.extend(settling)
        for name, count, last in batch:
            steps.append(Step("drain", name) if last else Step("drain_instances", name, count=count))
            steps.append(Step("stop", name, count=count))
        if not start and not batch:  # unreachable while max_surge + max_unavailable > 0
            raise AssertionError(f"rolling plan made no progress: {new} new, {old} old")

    if weights != ((release, 100),):
        steps.append(Step("route", weights=((release, 100),)))
    if new > replicas:
        steps.append(Step("drain_instances", release, count=new - replicas))
        steps.append(Step("stop", release, count=new - replicas))
    return Plan("rolling", target, tuple(steps))


def proportional(counts: list[tuple[str, int]]) -> Weights:
    """Percent weights proportional to instance counts, summing to 100, at least 1 for any release with
    instances (largest remainder); releases without instances are left out."""
    present = [(r, n) for r, n in counts if n > 0]
    if not present:
        return ()
    total = sum(n for _, n in present)
    exact = [(r, 100 * n / total) for r, n in present]
    shares = {r: max(1, int(x)) for r, x in exact}
    by_remainder = sorted(exact, key=lambda e: (-(e[1] - int(e[1])), e[0]))
    i = 0
    while sum(shares.values()) < 100:
        shares[by_remainder[i % len(by_remainder)][0]] += 1
        i += 1
    while sum(shares.values()) > 100:  # only when the minimum of 1 pushed the sum over
        biggest = max(shares, key=lambda r: (shares[r], r))
        shares[biggest] -= 1
    return tuple((r, shares[r]) for r, _ in present)
