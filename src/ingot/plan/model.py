"""Plans are data: what a deploy will do, step by step, before anything is done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StepKind = Literal["start", "wait_healthy", "route", "drain", "stop"]


@dataclass(frozen=True)
class Step:
    """One step of a plan.

    start:        start `count` fresh instances of `release`
    wait_healthy: wait until every starting instance of `release` passes the health gate
    route:        send traffic by `weights` (release -> relative weight); recorded as the live release
    drain:        wait until `release` has no requests in flight
    stop:         stop `count` instances of `release` (its oldest first)
    """

    kind: StepKind
    release: str | None = None
    count: int = 0
    weights: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        match self.kind:
            case "start":
                return f"start {self.count} instance(s) of {self.release}"
            case "wait_healthy":
                return f"wait until {self.release} passes its health gate"
            case "route":
                split = ", ".join(f"{release} {weight}%" for release, weight in self.weights)
                return f"switch traffic: {split}"
            case "drain":
                return f"drain {self.release} (requests in flight finish)"
            case "stop":
                return f"stop {self.count} instance(s) of {self.release}"
        raise AssertionError(self.kind)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "description": self.describe()}
        if self.release is not None:
            data["release"] = self.release
        if self.count:
            data["count"] = self.count
        if self.weights:
            data["weights"] = dict(self.weights)
        return data


@dataclass(frozen=True)
class ServiceState:
    """What runs now for one service in one environment, as the planner sees it."""

    weights: tuple[tuple[str, int], ...] = ()
    instances: tuple[tuple[str, int], ...] = ()  # (release, healthy running count)

    def count(self, release: str) -> int:
        return sum(n for r, n in self.instances if r == release)

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

    @property
    def empty(self) -> bool:
        return not self.steps

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "release": self.target.release,
            "replicas": self.target.replicas,
            "steps": [s.as_dict() for s in self.steps],
        }
