"""Rollouts on a cluster as data: (what the cluster has, the target, the options) -> steps.

A release runs as its own Deployment; traffic moves by changing what a Service selects (blue-green,
rollback), by the weights of a Gateway API HTTPRoute (canary on a gateway), or by the replica counts of
two Deployments behind one Service selecting both (canary without a gateway, rolling). The previous
Deployment stays scaled through the verification window, so going back is a selector switch; after it,
it is scaled to zero and kept while its release is within `retention`, then deleted.

These functions do nothing: `ingot.kube.rollout` applies the steps. Planning again against the state
the steps produce gives no steps (`apply_to_state` is that contract, and the tests hold it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ingot.analysis import Thresholds
from ingot.kube.names import ALL_TRACKS, canary_service, preview_service
from ingot.plan.model import CanaryStep

StepKind = Literal["release_command", "create", "scale", "wait_available", "select", "route", "pause", "analyse",
                   "verify", "delete"]
Traffic = Literal["gateway", "replicas"]


@dataclass(frozen=True)
class KubeStep:
    """One step of a rollout on a cluster.

    release_command: run `release`'s release_command as its Job, within `seconds`, and wait for it to
                    succeed before anything else changes; its log is streamed and kept
    create:         apply the objects of `release` as Deployment `deployment` with `replicas` (and its
                    ConfigMap and Secret)
    scale:          set Deployment `deployment` to `replicas`
    wait_available: wait until `deployment` has all its replicas updated and Available, within the health
                    deadline; on failure, report its failing pods with their events and last log lines
    select:         point Service `service` at the pods of `deployment` (ALL_TRACKS: of every Deployment)
    route:          set the HTTPRoute's backend `weights` (Service name -> weight)
    pause:          wait `seconds`, or with `manual` until `ingot resume` (or `ingot abort`)
    analyse:        judge `deployment` with `analysis` (Prometheus) for `seconds`, or until a verdict
    verify:         the verification window: `deployment` takes all traffic while `baseline` stays scaled
                    for `seconds`; judged by `analysis` when given; a failure switches back
    delete:         delete Deployment `deployment` (its release is beyond retention)
    """

    kind: StepKind
    deployment: str | None = None
    release: str | None = None
    replicas: int | None = None
    service: str | None = None
    weights: tuple[tuple[str, int], ...] = ()
    seconds: float | None = None
    manual: bool = False
    baseline: str | None = None
    analysis: Thresholds | None = None

    def describe(self) -> str:
        match self.kind:
            case "release_command":
                return f"run the release_command of release {self.release} as a Job (within {self.seconds:g}s)"
            case "create":
                return f"create Deployment {self.deployment} of release {self.release} with {self.replicas} replica(s)"
            case "scale":
                return f"scale Deployment {self.deployment} to {self.replicas} replica(s)"
            case "wait_available":
                return f"wait until Deployment {self.deployment} is Available"
            case "select":
                what = "every Deployment of the service" if self.deployment == ALL_TRACKS else self.deployment
                return f"point Service {self.service} at {what}"
            case "route":
                return "set HTTPRoute weights: " + ", ".join(f"{name} {weight}" for name, weight in self.weights)
            case "pause":
                return "pause until `ingot resume`" if self.manual else f"pause for {self.seconds:g}s"
            case "analyse":
                span = f"for {self.seconds:g}s" if self.seconds is not None else "until a verdict"
                assert self.analysis is not None
                return f"analyse {self.deployment} {span}: {self.analysis.describe()}"
            case "verify":
                text = (f"verify {self.deployment} for {self.seconds:g}s with {self.baseline} kept scaled "
                        "(going back meanwhile is a selector switch)")
                return text + (f"; judged by {self.analysis.describe()}" if self.analysis else "")
            case "delete":
                return f"delete Deployment {self.deployment} (beyond retention)"
        raise AssertionError(self.kind)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "description": self.describe()}
        for key in ("deployment", "release", "replicas", "service", "seconds", "baseline"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.weights:
            data["weights"] = dict(self.weights)
        if self.manual:
            data["manual"] = True
        if self.analysis is not None:
            data["analysis"] = self.analysis.as_dict()
        return data


@dataclass(frozen=True)
class Track:
    """One Deployment of the service on the cluster."""

    deployment: str
    release: str
    replicas: int  # spec.replicas: what it is asked to run


@dataclass(frozen=True)
class ClusterState:
    """What the cluster has for one service, as the planner sees it."""

    tracks: tuple[Track, ...] = ()
    selectors: tuple[tuple[str, str], ...] = ()  # Service name -> Deployment it selects (or ALL_TRACKS)
    route: tuple[tuple[str, int], ...] = ()  # HTTPRoute backends (Service name, weight); () without a route
    history: tuple[str, ...] = ()  # releases deployed, oldest first (from the store): what retention keeps

    def track(self, deployment: str) -> Track | None:
        return next((t for t in self.tracks if t.deployment == deployment), None)

    def replicas(self, deployment: str) -> int:
        track = self.track(deployment)
        return track.replicas if track else 0

    def selected(self, service: str) -> str | None:
        return dict(self.selectors).get(service)


@dataclass(frozen=True)
class Target:
    service: str
    deployment: str
    release: str
    replicas: int
    # The release_command's timeout when it is to run (not run yet in this environment, or asked again);
    # None: nothing to run first.
    release_command: float | None = None


@dataclass(frozen=True)
class Options:
    """The spec's strategy, as far as a cluster rollout uses it."""

    strategy: str = "blue-green"
    steps: tuple[CanaryStep, ...] = ()
    analysis: Thresholds | None = None  # only with a Prometheus source: there is nothing else to judge with
    verification: float | None = None
    traffic: Traffic = "replicas"
    retention: int = 5
    max_surge: int = 1
    services: bool = True  # False for a worker (`port: null`): no Service to select anything, no route


@dataclass(frozen=True)
class KubePlan:
    strategy: str
    target: Target
    steps: tuple[KubeStep, ...] = field(default_factory=tuple)
    note: str = ""

    @property
    def empty(self) -> bool:
        return not self.steps

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"strategy": self.strategy, "release": self.target.release,
                                "deployment": self.target.deployment, "replicas": self.target.replicas,
                                "steps": [s.as_dict() for s in self.steps]}
        if self.note:
            data["note"] = self.note
        return data


# ---- building blocks ----------------------------------------------------------------------------


def _apply_step(state: ClusterState, step: KubeStep) -> ClusterState:
    tracks = {t.deployment: t for t in state.tracks}
    selectors = dict(state.selectors)
    route = state.route
    if step.kind == "create" and step.deployment and step.release:
        tracks[step.deployment] = Track(step.deployment, step.release, step.replicas or 0)
    elif step.kind == "scale" and step.deployment in tracks:
        tracks[step.deployment] = replace(tracks[step.deployment], replicas=step.replicas or 0)
    elif step.kind == "select" and step.service and step.deployment:
        selectors[step.service] = step.deployment
    elif step.kind == "route":
        route = step.weights
    elif step.kind == "delete" and step.deployment:
        tracks.pop(step.deployment, None)
    return ClusterState(tuple(sorted(tracks.values(), key=lambda t: t.deployment)),
                        tuple(sorted(selectors.items())), route, state.history)


class _Builder:
    """Emits steps against a running picture of the state, so each decision sees the earlier steps."""

    def __init__(self, state: ClusterState, target: Target, options: Options) -> None:
        self.state = state
        self.target = target
        self.options = options
        self.steps: list[KubeStep] = []

    def emit(self, step: KubeStep) -> None:
        self.steps.append(step)
        self.state = _apply_step(self.state, step)

    def scale_target(self, replicas: int, *, preview: bool = False) -> None:
        """The target at `replicas`, waited on when it grows; the preview Service shows it meanwhile."""
        target = self.target
        track = self.state.track(target.deployment)
        if track is None:
            self.emit(KubeStep("create", target.deployment, target.release, replicas=replicas))
        elif track.replicas != replicas:
            self.emit(KubeStep("scale", target.deployment, replicas=replicas))
        if track is None or track.replicas < replicas:
            if preview:
                self.select(preview_service(target.service), target.deployment)
            self.emit(KubeStep("wait_available", target.deployment))

    def check_available(self) -> None:
        """A Deployment kept scaled (a rollback inside the verification window) is checked before traffic."""
        if not self.options.services:
            return  # a worker takes no traffic: there is no moment to check it before
        if self.state.selected(self.target.service) != self.target.deployment and self.target.replicas > 0 \
                and (not self.steps or self.steps[-1].kind != "wait_available"):
            self.emit(KubeStep("wait_available", self.target.deployment))

    def select(self, service: str, deployment: str) -> None:
        if self.options.services and self.state.selected(service) != deployment:
            self.emit(KubeStep("select", deployment, service=service))

    def route(self, weights: tuple[tuple[str, int], ...]) -> None:
        if self.options.traffic == "gateway" and self.state.route != weights:
            self.emit(KubeStep("route", weights=weights))

    def switch(self) -> None:
        """Every Service of the service, and the route, to the target: the moment traffic moves."""
        for service in _services(self.target, self.options):
            self.select(service, self.target.deployment)
        self.route(((self.target.service, 100),))

    def retire(self, verification: float | None, baseline: Track | None) -> None:
        """Every other Deployment to zero (after the verification window); what retention drops, deleted."""
        target, options = self.target, self.options
        previous = [t for t in self.state.tracks if t.deployment != target.deployment and t.replicas > 0]
        if verification is not None and baseline is not None and previous:
            self.emit(KubeStep("verify", target.deployment, target.release, seconds=verification,
                               baseline=baseline.deployment, analysis=options.analysis))
        kept = kept_releases(self.state.history, target.release, options.retention)
        for track in self.state.tracks:
            if track.deployment == target.deployment:
                continue
            # An older pod template of the target's own release is dropped too: a rollback to that release
            # would render the current template, never this one.
            if track.release == target.release or track.release not in kept:
                self.emit(KubeStep("delete", track.deployment))
            elif track.replicas > 0:
                self.emit(KubeStep("scale", track.deployment, replicas=0))

    def hold(self, step: CanaryStep, baseline: Track) -> None:
        target, analysis = self.target, self.options.analysis
        if analysis is None:
            if step.pause == "manual":
                self.emit(KubeStep("pause", manual=True))
            elif step.pause is not None:
                self.emit(KubeStep("pause", seconds=float(step.pause)))
            return
        seconds = float(step.pause) if isinstance(step.pause, int | float) else None
        self.emit(KubeStep("analyse", target.deployment, target.release, baseline=baseline.deployment,
                           analysis=analysis, seconds=seconds))
        if step.pause == "manual":
            self.emit(KubeStep("pause", manual=True))

    def plan(self, strategy: str, note: str = "") -> KubePlan:
        steps = tuple(self.steps)
        if steps and self.target.release_command is not None:
            # Before the new release's Deployment exists or anything moves: a failure leaves all as it was.
            steps = (KubeStep("release_command", release=self.target.release,
                              seconds=self.target.release_command), *steps)
        return KubePlan(strategy, self.target, steps, note if steps else "")


def _services(target: Target, options: Options) -> list[str]:
    """The Services that select the live Deployment at rest (the stable one first); a worker has none."""
    if not options.services:
        return []
    extra = {"blue-green": [preview_service(target.service)], "canary": [canary_service(target.service)]}
    return [target.service, *extra.get(options.strategy, [])]


def _stable(state: ClusterState, target: Target, options: Options) -> Track | None:
    """What serves now, other than the target: the Deployment the stable Service selects, or when it
    selects every Deployment (a replica split under way) or there is no Service (a worker), the biggest
    of the others."""
    selected = state.selected(target.service)
    others = [t for t in state.tracks if t.deployment != target.deployment and t.replicas > 0]
    chosen = next((t for t in others if t.deployment == selected), None)
    if chosen is None and (selected == ALL_TRACKS or not options.services) and others:
        chosen = min(others, key=lambda t: (-t.replicas, t.deployment))
    return chosen


def kept_releases(history: Sequence[str], current: str, retention: int) -> set[str]:
    """The `retention` most recent distinct releases, `current` (the one being deployed) counted first."""
    order = [current]
    for release in reversed(history):
        if release not in order:
            order.append(release)
    return set(order[: max(1, retention)])


# ---- planners -----------------------------------------------------------------------------------


def plan_rollout(state: ClusterState, target: Target, options: Options) -> KubePlan:
    """The plan of the spec's strategy."""
    if options.strategy == "blue-green" or target.replicas == 0:
        return plan_switch(state, target, options, options.verification)
    if options.strategy == "canary" and options.traffic == "gateway":
        return _canary_by_route(state, target, options)
    if options.strategy == "canary":
        return _by_replicas(state, target, options, options.steps)
    if options.strategy == "rolling":
        return _by_replicas(state, target, options, _rolling_steps(target.replicas, options.max_surge))
    raise ValueError(f"no cluster planner for strategy {options.strategy!r}")


def plan_switch(state: ClusterState, target: Target, options: Options, verification: float | None = None,
                strategy: str | None = None, note: str = "") -> KubePlan:
    """Blue-green, and every rollback or abort: bring the target up beside the others (the preview
    Service shows it meanwhile), switch every Service to it at once, retire the rest."""
    build = _Builder(state, target, options)
    baseline = _stable(state, target, options)
    build.scale_target(target.replicas, preview=options.strategy == "blue-green")
    build.check_available()
    build.switch()
    build.retire(verification, baseline)
    return build.plan(strategy or options.strategy, note)


def plan_rollback(state: ClusterState, target: Target, options: Options) -> KubePlan:
    """Back to an earlier release at once: a selector switch when its Deployment is still scaled, and the
    release it leaves is retired at once (going back should be immediate, not another canary)."""
    return plan_switch(state, target, options, None, strategy="rollback")


_AT_ONCE = "no other release serves traffic to compare with: it goes live at once, as with blue-green"


def _canary_by_route(state: ClusterState, target: Target, options: Options) -> KubePlan:
    """The canary at full count behind its own Service, traffic shifted by the HTTPRoute's weights."""
    stable = _stable(state, target, options)
    if stable is None or state.selected(target.service) == target.deployment:
        return plan_switch(state, target, options, options.verification, note=_AT_ONCE)
    canary = canary_service(target.service)
    build = _Builder(state, target, options)
    build.scale_target(target.replicas)
    build.select(canary, target.deployment)
    current = dict(state.route).get(canary, 0) if state.selected(canary) == target.deployment else 0
    for step in options.steps:
        if step.weight < current:
            continue  # a re-plan after an interruption goes on from where traffic is, never backwards
        if step.weight == 100:
            build.switch()
        else:
            build.route(((target.service, 100 - step.weight), (canary, step.weight)))
        build.hold(step, stable)
    build.switch()
    build.retire(options.verification, stable)
    return build.plan("canary")


def _by_replicas(state: ClusterState, target: Target, options: Options, steps: Sequence[CanaryStep]) -> KubePlan:
    """Traffic split by pod counts, without a gateway: the stable Service selects both Deployments, and
    their replicas follow the weights (the new one scaled up and Available before the old one shrinks)."""
    stable = _stable(state, target, options)
    if stable is None or state.selected(target.service) == target.deployment:
        return plan_switch(state, target, options, options.verification, strategy=options.strategy, note=_AT_ONCE)
    total = target.replicas
    build = _Builder(state, target, options)
    # A split under way (the Service selects both, or a worker's two Deployments) goes on from where it is.
    splitting = state.selected(target.service) == ALL_TRACKS or not options.services
    current = state.replicas(target.deployment) if splitting else 0
    final: CanaryStep | None = None
    for step in steps:
        count = min(total, max(1, math.ceil(total * step.weight / 100)))
        if count == total:
            final = step
            break
        if count < current:
            continue
        build.scale_target(count)
        if build.state.replicas(stable.deployment) != total - count:
            build.emit(KubeStep("scale", stable.deployment, replicas=total - count))
        build.select(target.service, ALL_TRACKS)
        build.hold(step, stable)
        current = count
    build.scale_target(total)
    build.switch()
    if final is not None:
        build.hold(final, stable)
    build.retire(options.verification, stable)
    return build.plan(options.strategy)


def _rolling_steps(replicas: int, surge: int) -> list[CanaryStep]:
    """A rolling update as replica steps: `max_surge` more new pods (and as many fewer old) at a time."""
    batch = max(1, surge)
    # Rounded down: the replica count the step maps back to (ceil of the share) is then exactly `count`.
    return [CanaryStep((100 * count) // replicas) for count in range(batch, replicas, batch)]


# ---- the executor's contract -------------------------------------------------------------------


def apply_to_state(state: ClusterState, plan: KubePlan) -> ClusterState:
    """What the cluster holds once `plan` is applied successfully, as the planner sees it."""
    for step in plan.steps:
        state = _apply_step(state, step)
    if state.history[-1:] != (plan.target.release,):
        state = replace(state, history=(*state.history, plan.target.release))
    return state
