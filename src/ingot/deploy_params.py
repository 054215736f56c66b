"""The deployment parameters of a service in an environment: how many, how gated, where routed.

They are not part of a release's identity: changing replicas or the router address deploys the same
release differently, while changing what runs (code, command, env, config) makes a new release.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ingot.edge.front import Route
from ingot.routers.base import ClientPolicy, HealthCheck

NO_LISTENER = ("", 0)  # `listen` of a service with routes and no `router.listen`: no listener of its own


@dataclass(frozen=True)
class HealthPolicy:
    path: str = "/healthz"
    interval: float = 1.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    deadline: float = 60.0
    unhealthy_threshold: int = 2  # failed probes in a row that make a settling or verified instance unhealthy
    command: tuple[str, ...] | None = None  # a command check instead of GET path (see ingot.health)
    http: bool = True  # False for a worker: without a command, running is all it can show (see ingot.health)

    @property
    def probes(self) -> bool:
        """Whether there is anything to probe: a command, or the HTTP path of a service with a port."""
        return self.command is not None or self.http

    def for_router(self) -> HealthCheck:
        """What the router checks between deploys: the same path, probed at most 0.5 s apart with at most a
        1 s timeout and 2 failures in a row to eject, so that a hung or dead instance is out within
        2 s (`fall * interval + timeout`) under load; back after `healthy_threshold` passing probes, like the
        deploy's gate."""
        return HealthCheck(path=self.path, interval=min(self.interval, 0.5), timeout=min(self.timeout, 1.0),
                           fall=2, rise=self.healthy_threshold, max_failures=3)


@dataclass(frozen=True)
class DeployParams:
    replicas: int
    health: HealthPolicy
    listen: tuple[str, int]
    router_kind: str = "builtin"
    strategy: str = "blue-green"
    drain_timeout: float = 30.0
    stop_timeout: float = 10.0
    runtime: str = "process"
    strategy_options: dict[str, Any] = field(default_factory=dict)  # the spec's strategy block
    self_heal: bool = True  # the environment's: the agent repairs drift on its own, or only records it
    clients: ClientPolicy = field(default_factory=ClientPolicy)  # the router's limits on its clients
    routes: tuple[Route, ...] = ()  # on the machine's shared listeners (the edge's front)
    checks: tuple[dict[str, Any], ...] = ()  # smoke checks before traffic (spec CheckSpec, as JSON; ingot.checks)
    worker: bool = False  # port: null: no router, no listener; ready by health.command or after min_ready alive
    # Set by `ingot scale`: the replicas the service had before it was scaled (its spec's, as deployed), while
    # `replicas` is the scaled count; later deploys keep the scaled count while the spec still says this.
    spec_replicas: int | None = None

    @property
    def urls(self) -> list[str]:
        """Where people reach the service: its routes, and its own listener if it has one."""
        found = [f"{'http' if r.tls == 'off' else 'https'}://{r.host}{r.path}" for r in self.routes]
        if self.listen != NO_LISTENER:
            found.append(f"http://{self.listen[0]}:{self.listen[1]}/")
        return found

    @property
    def url(self) -> str:
        # A worker is reached by nobody: what it is said instead of an address.
        return self.urls[0] if self.urls else "worker (no listener)"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["listen"] = f"{self.listen[0]}:{self.listen[1]}"
        data["clients"] = self.clients.as_dict()
        if self.routes:
            data["routes"] = [r.as_dict() for r in self.routes]
        else:
            del data["routes"]  # as before routes existed: an unchanged spec deploys nothing new
        if self.checks:
            data["checks"] = [dict(c) for c in self.checks]
        else:
            del data["checks"]  # likewise
        # Likewise left out at their defaults, so that parameters recorded before them compare equal.
        if self.health.http:
            del data["health"]["http"]
        if self.health.command is None:
            del data["health"]["command"]
        else:
            data["health"]["command"] = list(self.health.command)
        if not self.worker:
            del data["worker"]
        if self.spec_replicas is None:
            del data["spec_replicas"]
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> DeployParams:
        host, _, port = str(data["listen"]).rpartition(":")
        return DeployParams(
            replicas=int(data["replicas"]),
            health=_health(data["health"]),
            listen=(host, int(port)),
            router_kind=str(data.get("router_kind", "builtin")),
            strategy=str(data.get("strategy", "blue-green")),
            drain_timeout=float(data.get("drain_timeout", 30.0)),
            stop_timeout=float(data.get("stop_timeout", 10.0)),
            runtime=str(data.get("runtime", "process")),
            strategy_options=dict(data.get("strategy_options") or {}),
            self_heal=bool(data.get("self_heal", True)),
            clients=ClientPolicy.from_dict(data.get("clients")),
            routes=tuple(Route.from_dict(r) for r in data.get("routes") or []),
            checks=tuple(dict(c) for c in data.get("checks") or []),
            worker=bool(data.get("worker", False)),
            spec_replicas=int(data["spec_replicas"]) if data.get("spec_replicas") is not None else None,
        )

    def scaled(self, replicas: int) -> DeployParams:
        """These parameters scaled to `replicas` by `ingot scale`: back at the spec's count, no override."""
        base = self.spec_replicas if self.spec_replicas is not None else self.replicas
        return replace(self, replicas=replicas, spec_replicas=None if replicas == base else base)

    def keeping_scale(self, live: DeployParams | None) -> DeployParams:
        """A deploy's parameters (from the spec) with the live scale override kept: `ingot scale` outlives
        deploys, rollbacks and promotions while the spec's replicas are still those it overrode; a spec that
        changes replicas wins (the change in git is the newer intent)."""
        if live is None or live.spec_replicas is None or self.spec_replicas is not None:
            return self
        if live.spec_replicas != self.replicas:
            return self
        return replace(self, replicas=live.replicas, spec_replicas=live.spec_replicas)


def _health(data: dict[str, Any]) -> HealthPolicy:
    command = data.get("command")
    return HealthPolicy(**{**data, "command": tuple(command) if command is not None else None})
