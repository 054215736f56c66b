"""Drift: any difference between what runs and what the live release says should run.

The rules here are pure: they turn observations (gathered by the agent from the runtimes) into
findings, each naming the instance, its kind and the evidence, and the repair `ingot reconcile` will
make. Repairs are always by replacement: nothing that runs is patched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Kinds whose instance is replaced by a fresh one of the same release.
REPLACE = ("exited", "unhealthy", "changed_files", "changed_env", "artifact_mismatch", "image_mismatch")
REPAIRS = {
    "missing": "start fresh instances of the release",
    "exited": "start a fresh instance in its place",
    "unhealthy": "start a fresh instance, then retire this one",
    "changed_files": "start a fresh instance from a verified copy, then retire this one",
    "changed_env": "start a fresh instance, then retire this one",
    "artifact_mismatch": "start a fresh instance from the release's verified artifact, then retire this one",
    "image_mismatch": "start a fresh instance from the release's image, then retire this one",
    "unknown": "stop it: ingot did not start it and no release claims it",
    "leftover": "stop it: the operation that started it ended (or was interrupted) before it took traffic",
    "artifact_corrupt": "none possible from the store: rebuild and deploy again",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    environment: str
    service: str
    instance: str | None
    release: str | None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def repair(self) -> str:
        return REPAIRS[self.kind]

    def describe(self) -> str:
        who = f"instance {self.instance}" if self.instance else f"service {self.service}"
        return f"{self.environment}/{self.service}: {who}: {self.kind}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "repair": self.repair}


@dataclass(frozen=True)
class Observed:
    """What the agent saw of one tracked instance."""

    instance: str
    release: str
    alive: bool
    exit_detail: str = ""
    health: str | None = None  # None when healthy, else the failed probe's detail
    actual_artifact: str | None = None  # image ID or artifact digest the instance really runs
    changed_files: tuple[tuple[str, str], ...] = ()
    env_diff: tuple[tuple[str, str | None, str | None], ...] = ()  # (name, expected, actual)
    log_tail: tuple[str, ...] = ()
    # Started by an operation that is over (it never took traffic): a deploy that was interrupted, say.
    leftover: bool = False


@dataclass(frozen=True)
class Stray:
    """Something carrying ingot's labels that no live instance record claims."""

    ident: str  # pid or container ID
    instance: str | None
    release: str | None
    detail: str


@dataclass(frozen=True)
class ServiceObservation:
    environment: str
    service: str
    release: str
    artifact: str
    runtime: str
    replicas: int
    instances: tuple[Observed, ...]
    strays: tuple[Stray, ...] = ()
    store_problem: str | None = None  # the stored artifact failed verification


def find_drift(observation: ServiceObservation) -> list[Finding]:
    obs = observation
    findings: list[Finding] = []

    def add(kind: str, instance: str | None, **evidence: Any) -> None:
        findings.append(Finding(kind, obs.environment, obs.service, instance, obs.release, evidence))

    if obs.store_problem:
        add("artifact_corrupt", None, artifact=obs.artifact, problem=obs.store_problem)
    for inst in obs.instances:
        if inst.leftover:
            add("leftover", inst.instance, running=inst.alive, detail=inst.exit_detail)
            continue
        if not inst.alive:
            add("exited", inst.instance, detail=inst.exit_detail, last_log_lines=list(inst.log_tail))
            continue
        for kind, evidence in _instance_problems(obs, inst):
            add(kind, inst.instance, **evidence)
    # Each exited or faulty instance is replaced one for one; `missing` is capacity nothing accounts for.
    tracked = len([i for i in obs.instances if not i.leftover])
    if tracked < obs.replicas:
        add("missing", None, expected=obs.replicas, tracked=tracked, count=obs.replicas - tracked)
    for stray in obs.strays:
        add("unknown", stray.instance, ident=stray.ident, release=stray.release, detail=stray.detail)
    return findings


def _instance_problems(obs: ServiceObservation, inst: Observed) -> list[tuple[str, dict[str, Any]]]:
    problems: list[tuple[str, dict[str, Any]]] = []
    if inst.release != obs.release:
        problems.append(("artifact_mismatch" if obs.runtime == "process" else "image_mismatch",
                         {"expected_release": obs.release, "actual_release": inst.release}))
    elif inst.actual_artifact is not None and inst.actual_artifact != obs.artifact:
        kind = "image_mismatch" if obs.runtime != "process" else "artifact_mismatch"
        problems.append((kind, {"expected": obs.artifact, "actual": inst.actual_artifact}))
    if inst.changed_files:
        problems.append(("changed_files", {"files": [f"{change}: {path}" for path, change in inst.changed_files]}))
    if inst.env_diff:
        problems.append(("changed_env", {"variables": [
            {"name": name, "expected": expected, "actual": actual} for name, expected, actual in inst.env_diff
        ]}))
    if inst.health is not None:
        problems.append(("unhealthy", {"probe": inst.health}))
    return problems


def env_differences(expected: dict[str, str], actual: dict[str, str]) -> tuple[tuple[str, str | None, str | None], ...]:
    """Variables the release defines that are absent or different in the running instance."""
    return tuple(
        (name, value, actual.get(name)) for name, value in sorted(expected.items()) if actual.get(name) != value
    )
