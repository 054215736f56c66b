"""Plans are data: what a deploy will do, step by step, before anything is done."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ingot.analysis import Thresholds

StepKind = Literal["release_command", "start", "wait_healthy", "route", "settle", "drain", "drain_instances",
                   "stop", "pause", "analyse", "verify"]
Pause = float | Literal["manual"] | None


@dataclass(frozen=True)
class Step:
    """One step of a plan.

    release_command: run `release`'s release_command once, in a one-off instance of it, with `seconds` as its
                     deadline, before any instance of it starts; a failure ends the deploy before anything of
                     `release` has run, the previous release serving as it was
    start:           start `count` fresh instances of `release`
    wait_healthy:    wait until every starting instance of `release` passes the health gate
    route:           send traffic by `weights` (release -> percent of traffic); releases not named get none;
                     with `seconds` (strategy.hold, on a switch that takes a release's last traffic away), new
                     requests are held in the router meanwhile, until the releases left without weight have
                     finished their requests, at most `seconds`: the two never serve at once
    settle:          min_ready: for `seconds` after `release`'s fresh instances take their traffic, each must
                     keep running and keep passing its health probes before anything of `baseline` (the
                     release it replaces, None on a first deploy) is drained or stopped; one that dies or
                     fails its probes fails the step, and the deploy goes back by a traffic switch
    drain:           wait until `release` has no requests in flight, then forget it in the router
    drain_instances: take `count` instances of `release` (its oldest first, the ones the next `stop`
                     stops) out of its router pool and wait until they have no requests in flight; the
                     release keeps its weight and its other instances
    stop:            stop `count` instances of `release` (its oldest first)
    pause:           wait `seconds`, or with `manual` until an operator resumes (or aborts); with
                     `analysis`, keep judging `release` against `baseline` meanwhile: a fail ends the pause
                     as a failure
    analyse:         judge `release` (canary) against `baseline` (stable) with `analysis`, interval after
                     interval: until the first conclusive verdict, or with `seconds` for that long
    verify:          the verification window after full traffic: `release` takes all traffic while
                     `baseline` (the previous release) stays running but idle for `seconds`, so that a
                     failure goes back by a traffic switch alone; with `analysis`, `release` is judged
                     meanwhile and a failed verdict switches back. The deploy command returns here.
    """

    kind: StepKind
    release: str | None = None
    count: int = 0
    weights: tuple[tuple[str, int], ...] = ()
    seconds: float | None = None
    manual: bool = False
    baseline: str | None = None
    analysis: Thresholds | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"{self.kind}: count must be >= 0, got {self.count}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"{self.kind}: seconds must be > 0, got {self.seconds}")
        if self.kind == "pause":
            if self.manual == (self.seconds is not None):
                raise ValueError("pause: give either seconds or manual=True")
            if self.analysis is not None and (self.release is None or self.baseline is None):
                raise ValueError("pause: an analysis guard needs the canary (release) and the stable (baseline)")
        elif self.manual:
            raise ValueError(f"{self.kind}: only a pause can be manual")
        if self.kind == "analyse" and (self.analysis is None or self.release is None or self.baseline is None):
            raise ValueError("analyse: needs analysis, the canary (release) and the stable (baseline)")
        if self.kind == "settle" and (self.seconds is None or self.release is None):
            raise ValueError("settle: needs seconds and the release whose instances must stay up (release)")
        if self.kind == "verify" and (self.seconds is None or self.release is None or self.baseline is None):
            raise ValueError("verify: needs seconds, the new release (release) and the previous one (baseline)")
        if self.kind == "route":
            for release, weight in self.weights:
                if not 0 <= weight <= 100:
                    raise ValueError(f"route: weight of {release} must be a percent 0..100, got {weight}")

    def describe(self) -> str:
        match self.kind:
            case "release_command":
                return (f"run the release command of {self.release} in a one-off instance (deadline "
                        f"{self.seconds:g}s), before any of its instances starts")
            case "start":
                return f"start {self.count} instance(s) of {self.release}"
            case "wait_healthy":
                return f"wait until {self.release} passes its health gate"
            case "route":
                split = ", ".join(f"{release} {weight}%" for release, weight in self.weights)
                if self.seconds is not None:
                    return (f"switch traffic: {split}, holding new requests up to {self.seconds:g}s until the "
                            "releases leaving have finished theirs (strategy.hold)")
                return f"switch traffic: {split}"
            case "settle":
                back = (f"traffic switches back to {self.baseline}, which is still running" if self.baseline
                        else "the deploy fails")
                return (f"settle: {self.release} must stay up and healthy for {self.seconds:g}s (min_ready) "
                        f"under traffic; if an instance dies or fails its health probes, {back}")
            case "drain":
                return f"drain {self.release} (requests in flight finish)"
            case "drain_instances":
                return (f"take {self.count} instance(s) of {self.release} out of the router "
                        "(their requests in flight finish)")
            case "stop":
                return f"stop {self.count} instance(s) of {self.release}"
            case "pause":
                wait = "until an operator resumes or aborts" if self.manual else f"for {self.seconds:g}s"
                if self.analysis is None:
                    return f"pause {wait}"
                return (f"pause {wait}, judging {self.release} against {self.baseline} meanwhile "
                        f"({self.analysis.describe(bounded=not self.manual)}); a failed verdict aborts")
            case "analyse":
                assert self.analysis is not None
                span = f"for {self.seconds:g}s" if self.seconds is not None else "until a verdict"
                return f"analyse {self.release} against {self.baseline} {span}: {self.analysis.describe()}"
            case "verify":
                text = (f"verify {self.release} for {self.seconds:g}s with {self.baseline} kept warm "
                        "(a failure or a rollback meanwhile is a traffic switch)")
                if self.analysis is not None:
                    text += f"; judged by {self.analysis.describe()}"
                return text
        raise AssertionError(self.kind)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "description": self.describe()}
        if self.release is not None:
            data["release"] = self.release
        if self.count:
            data["count"] = self.count
        if self.weights:
            data["weights"] = dict(self.weights)
        if self.seconds is not None:
            data["seconds"] = self.seconds
        if self.manual:
            data["manual"] = True
        if self.baseline is not None:
            data["baseline"] = self.baseline
        if self.analysis is not None:
            data["analysis"] = self.analysis.as_dict()
        return data


@dataclass(frozen=True)
class ServiceState:
    """What runs now for one service in one environment, as the planner sees it."""

    weights: tuple[tuple[str, int], ...] = ()
    instances: tuple[tuple[str, int], ...] = ()  # (release, healthy running count)

    def count(self, release: str) -> int:
        return sum(n for r, n in self.instances if r == release)

    def weight(self, release: str) -> int:
        return sum(w for r, w in self.weights if r == release)

    def releases_running(self) -> list[str]:
        return [r for r, n in self.instances if n > 0]

    def live_releases(self) -> list[str]:
        return [r for r, w in self.weights if w > 0]


@dataclass(frozen=True)
class Target:
    release: str
    replicas: int


@dataclass(frozen=True)
class Plan:
    strategy: str
    target: Target
    steps: tuple[Step, ...] = field(default_factory=tuple)
    note: str = ""  # why the plan has the shape it has, when that is not obvious (e.g. a canary with no stable)

    @property
    def empty(self) -> bool:
        return not self.steps

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "strategy": self.strategy,
            "release": self.target.release,
            "replicas": self.target.replicas,
            "steps": [s.as_dict() for s in self.steps],
        }
        if self.note:
            data["note"] = self.note
        return data


class CanaryStep(NamedTuple):
    """One canary step: send `weight` percent to the canary, then pause (seconds, "manual" or None)."""

    weight: int
    pause: Pause = None


@dataclass(frozen=True)
class StrategyOptions:
    """The options of the progressive strategies, as the spec's `strategy` block gives them."""

    steps: tuple[CanaryStep, ...] = ()
    analysis: Thresholds | None = None
    max_surge: int = 1
    max_unavailable: int = 0
    verification: float | None = None  # seconds the previous release stays warm after full traffic
    # Seconds fresh instances must stay up and healthy under traffic before what they replace retires
    # (the spec's strategy.min_ready, default 10 s there). None or 0 here: no settle step.
    min_ready: float | None = None
    # Seconds new requests may be held during a switch that takes a release's last traffic away (strategy.hold).
    hold: float | None = None

    @staticmethod
    def from_mapping(data: Mapping[str, Any]) -> StrategyOptions:
        """From `StrategySpec.model_dump()`; `type` and `drain_timeout` are not planning options."""
        steps: Sequence[Mapping[str, Any]] = data.get("steps") or ()
        analysis = data.get("analysis")
        return StrategyOptions(
            steps=tuple(CanaryStep(int(s["weight"]), s.get("pause")) for s in steps),
            analysis=Thresholds.from_mapping(analysis) if analysis is not None else None,
            max_surge=int(data.get("max_surge", 1)),
            max_unavailable=int(data.get("max_unavailable", 0)),
            verification=float(data["verification"]) if data.get("verification") else None,
            # Absent from deployment parameters recorded before min_ready existed: those plan no settle.
            min_ready=float(data["min_ready"]) if data.get("min_ready") else None,
            hold=float(data["hold"]) if data.get("hold") else None,
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"steps": [{"weight": s.weight, "pause": s.pause} for s in self.steps],
                                "max_surge": self.max_surge, "max_unavailable": self.max_unavailable}
        if self.verification is not None:
            data["verification"] = self.verification
        if self.min_ready is not None:
            data["min_ready"] = self.min_ready
        if self.hold is not None:
            data["hold"] = self.hold
        if self.analysis is not None:
            data["analysis"] = self.analysis.as_dict()
        return data
