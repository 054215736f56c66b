"""Applying a cluster plan step by step: server-side apply, then waiting on what the cluster reports.

A Deployment is ready when the controller has seen its latest spec and all its replicas are updated and
Available. It has failed when its progress deadline (the health deadline) passes, or earlier when a pod
is in a state it does not leave by itself (its container keeps exiting, its config cannot be made, its
image name is invalid). The failure names each failing pod with its container states, its events and
the last lines of its log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingot.analysis import decide
from ingot.errors import IngotError, OperationFailed
from ingot.kube import names, render
from ingot.kube.api import KubeApi
from ingot.kube.plan import KubePlan, KubeStep
from ingot.kube.prometheus import Query, http_query, verdict
from ingot.kube.render import Layout, Workload
from ingot.rollout_analysis import AnalysisFailed
from ingot.rollout_control import RolloutAborted
from ingot.spec.models import PrometheusSpec

LOG_LINES = 20
EVENTS_SHOWN = 6
# Waiting reasons a container does not get out of by waiting: the rollout fails at once, as the local
# health gate does when the process exits.
HOPELESS = ("CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "InvalidImageName",
            "ErrImageNeverPull", "RunContainerError")


@dataclass(frozen=True)
class Steering:
    """Requests from other terminals (`ingot pause`, `resume`, `abort`), read from the ledger."""

    paused_by: str | None = None
    aborted_by: str | None = None
    resumes: int = 0


@dataclass
class Rollout:
    """What applying one plan needs. `record(step, status, detail)` makes each step durable."""

    api: KubeApi
    layout: Layout
    workload: Workload  # the target release's: renders its Deployment, and labels Services and routes
    secret_values: Callable[[Workload], Mapping[str, str]]
    record: Callable[[str, str, dict[str, Any]], None]
    emit: Callable[[dict[str, Any]], None] = lambda _event: None
    steering: Callable[[], Steering] = Steering
    prometheus: PrometheusSpec | None = None
    ask: Query | None = None  # how Prometheus is asked (tests give a function)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll: float = 1.0
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    # ---- the loop ------------------------------------------------------------------------------

    def apply(self, plan: KubePlan) -> None:
        """Every step in order; raises the first step's failure (already recorded) as it is."""
        total = len(plan.steps)
        for index, step in enumerate(plan.steps, start=1):
            self._check_abort()
            self.emit({"event": "step", "index": index, "total": total, "status": "started", "step": step.as_dict()})
            self.record(step.kind, "started", step.as_dict())
            started = self.clock()
            try:
                detail = self.run(step)
            except IngotError as exc:
                self.record(step.kind, "failed", {"error": exc.message, "details": exc.details})
                self.emit({"event": "step", "index": index, "total": total, "status": "failed",
                           "step": step.as_dict(), "error": exc.message})
                raise
            elapsed = round(self.clock() - started, 3)
            self.record(step.kind, "done", {**detail, "seconds": elapsed})
            self.emit({"event": "step", "index": index, "total": total, "status": "done", "step": step.as_dict(),
                       "seconds": elapsed, "detail": detail})

    def run(self, step: KubeStep) -> dict[str, Any]:
        match step.kind:
            case "create":
                return self._create(step)
            case "scale":
                assert step.deployment is not None and step.replicas is not None
                self.api.scale(step.deployment, step.replicas)
                return {"replicas": step.replicas}
            case "wait_available":
                assert step.deployment is not None
                return self.wait_available(step.deployment)
            case "select":
                assert step.service is not None and step.deployment is not None
                self.api.apply(render.service(self.workload, step.service, step.deployment))
                return {"service": step.service, "selects": step.deployment}
            case "route":
                assert self.layout.gateway is not None
                self.api.apply(render.http_route(self.workload, self.layout.gateway, step.weights))
                return {"weights": dict(step.weights)}
            case "pause":
                return self._pause(step)
            case "analyse" | "verify":
                return self._judge(step)
            case "delete":
                assert step.deployment is not None
                self.api.delete("Deployment", step.deployment)
                return {"deleted": step.deployment, "unused": self.delete_unused_config()}
        raise AssertionError(step.kind)

    # ---- steps ---------------------------------------------------------------------------------

    def _create(self, step: KubeStep) -> dict[str, Any]:
        rendered = render.render_release(self.workload, self.layout, self.secret_values(self.workload))
        if rendered.deployment != step.deployment:
            raise OperationFailed(f"the plan creates {step.deployment}, but release {step.release} renders as "
                                  f"{rendered.deployment}; plan again")
        applied = []
        for obj in rendered.objects:
            if obj["kind"] in ("ConfigMap", "Secret"):
                self.api.apply(obj)
                applied.append(f"{obj['kind']} {obj['metadata']['name']}")
        self.api.apply(render.deployment(self.workload, step.replicas))
        return {"applied": [*applied, f"Deployment {step.deployment}"], "replicas": step.replicas}

    def wait_available(self, deployment: str) -> dict[str, Any]:
        deadline = self.clock() + self.workload.health.deadline + 5.0  # the controller's own reaction time
        while True:
            obj = self.api.get("Deployment", deployment)
            if obj is None:
                raise OperationFailed(f"Deployment {deployment} was deleted while ingot waited for it")
            state, why = availability(obj)
            if state == "ready":
                return {"available": int((obj.get("status") or {}).get("availableReplicas") or 0)}
            pods = self.api.find("Pod", f"{names.DEPLOYMENT}={deployment}")
            stuck = [reason for reason in (hopeless(pod) for pod in pods) if reason]
            if state == "failed" or stuck or self.clock() >= deadline:
                reason = why if state == "failed" else (stuck[0] if stuck else
                                                         f"not Available within {self.workload.health.deadline:g}s "
                                                         f"(the health deadline): {why}")
                raise OperationFailed(f"Deployment {deployment} did not become Available: {reason}",
                                      details=self.pod_report(pods))
            self._check_abort()
            self.sleep(self.poll)

    def pod_report(self, pods: Iterable[Mapping[str, Any]]) -> list[str]:
        """Each pod that is not ready: its containers' states, its events, its last log lines."""
        lines: list[str] = []
        for pod in pods:
            if pod_ready(pod):
                continue
            name = str(pod["metadata"]["name"])
            status = pod.get("status") or {}
            lines.append(f"pod {name}: {status.get('phase', 'Unknown')}, not ready")
            restarted = False
            for container in status.get("containerStatuses") or []:
                lines.append(f"  container {container.get('name')}: {container_state(container)}")
                restarted = restarted or int(container.get("restartCount") or 0) > 0
            events = sorted(self.api.events("Pod", name), key=lambda e: str(e.get("lastTimestamp") or ""))
            for event in events[-EVENTS_SHOWN:]:
                lines.append(f"  event {event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}")
            container_name = self.workload.service
            tail = self.api.log_tail(name, container_name, LOG_LINES, previous=restarted)
            if tail:
                lines.append(f"  last log lines{' (of the previous run)' if restarted else ''}:")
                lines.extend(f"    | {line}" for line in tail)
        return lines

    def _pause(self, step: KubeStep) -> dict[str, Any]:
        if not step.manual:
            assert step.seconds is not None
            self._wait(step.seconds)
            return {"paused": step.seconds}
        resumes = self.steering().resumes
        self.emit({"event": "waiting", "message": "paused: waiting for `ingot resume` (or `ingot abort`)"})
        while self.steering().resumes <= resumes:
            self._check_abort()
            self.sleep(self.poll)
        return {"resumed": True}

    def _judge(self, step: KubeStep) -> dict[str, Any]:
        """`analyse` (until a verdict, or for `seconds`) and `verify` (for `seconds`, judged if it can be)."""
        assert step.deployment is not None
        if step.analysis is None or self.prometheus is None:
            assert step.seconds is not None
            self._wait(step.seconds)
            return {"verified" if step.kind == "verify" else "waited": step.seconds}
        thresholds, spec = step.analysis, self.prometheus
        ask = self.ask or http_query(spec.url)
        canary = self._placeholders(step.deployment, step.release or "", thresholds.interval)
        stable = self._placeholders(step.baseline or "", "", thresholds.interval)
        started, inconclusive_since, windows = self.clock(), None, 0
        while True:
            self._wait(thresholds.interval)
            found = verdict(spec, ask, canary, stable, thresholds)
            waited = 0.0 if inconclusive_since is None else self.clock() - inconclusive_since
            decision = decide(found, thresholds, waited)
            windows += 1
            entry = {"canary": step.deployment, "stable": step.baseline, "window": windows,
                     "verdict": found.as_dict(), "decision": decision.as_dict()}
            self.verdicts.append(entry)
            self.record("verdict", decision.action, entry)
            if decision.action == "fail":
                raise AnalysisFailed(f"analysis failed: {decision.reason}",
                                     details=[*found.reasons, f"traffic goes back to {step.baseline}"])
            inconclusive_since = (inconclusive_since or self.clock()) if decision.action == "wait" else None
            elapsed = self.clock() - started
            if step.kind == "analyse" and decision.action == "proceed" and (step.seconds is None
                                                                            or elapsed >= step.seconds):
                return {"windows": windows, "verdict": found.as_dict()}
            if step.kind == "verify" and step.seconds is not None and elapsed >= step.seconds:
                return {"windows": windows, "verified": step.seconds}

    def _placeholders(self, deployment: str, release: str, interval: float) -> dict[str, str]:
        return {"deployment": deployment, "release": release, "service": self.workload.service,
                "namespace": self.api.namespace, "interval": f"{max(1, round(interval))}s"}

    def _wait(self, seconds: float) -> None:
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            self._check_abort()
            self.sleep(min(self.poll, left))

    def _check_abort(self) -> None:
        steering = self.steering()
        if steering.aborted_by:
            raise RolloutAborted(f"aborted by {steering.aborted_by}")
        while steering.paused_by:
            self.sleep(self.poll)
            steering = self.steering()
            if steering.aborted_by:
                raise RolloutAborted(f"aborted by {steering.aborted_by}")

    def delete_unused_config(self) -> list[str]:
        """ConfigMaps and Secrets of the service that no remaining Deployment refers to."""
        w = self.workload
        selector = f"{names.environment_selector(w.project, w.environment)},{names.SERVICE}={w.service}"
        used = referenced_config(self.api.find("Deployment", selector))
        removed = []
        for kind in ("ConfigMap", "Secret"):
            for obj in self.api.find(kind, selector):
                name = str(obj["metadata"]["name"])
                if (kind, name) not in used:
                    self.api.delete(kind, name)
                    removed.append(f"{kind} {name}")
        return removed


# ---- reading what the cluster says --------------------------------------------------------------


def availability(deployment: Mapping[str, Any]) -> tuple[str, str]:
    """("ready" | "waiting" | "failed", why) from a Deployment's status and conditions."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    wanted = int(spec.get("replicas", 1))
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "failed", f"its progress deadline passed ({progressing.get('message', '')})"
    if int(status.get("observedGeneration") or 0) < generation:
        return "waiting", "the controller has not seen its latest spec yet"
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if wanted == 0:
        return ("ready", "") if int(status.get("replicas") or 0) == 0 else ("waiting", "pods still terminating")
    if updated >= wanted and available >= wanted and (conditions.get("Available") or {}).get("status") == "True":
        return "ready", ""
    return "waiting", f"{available} of {wanted} replica(s) available, {updated} updated"


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def container_state(container: Mapping[str, Any]) -> str:
    state = container.get("state") or {}
    restarts = int(container.get("restartCount") or 0)
    suffix = f", restarted {restarts} time(s)" if restarts else ""
    if "waiting" in state:
        waiting = state["waiting"] or {}
        return f"waiting: {waiting.get('reason', '?')} ({waiting.get('message', '')}){suffix}"
    if "terminated" in state:
        ended = state["terminated"] or {}
        return f"terminated: {ended.get('reason', '?')}, exit code {ended.get('exitCode', '?')}{suffix}"
    if "running" in state:
        return f"running, not ready (its readiness probe fails){suffix}"
    return f"unknown state{suffix}"


def hopeless(pod: Mapping[str, Any]) -> str | None:
    """Why a pod will not become ready by waiting, or None."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HOPELESS:
            return (f"pod {pod['metadata']['name']}: container {container.get('name')} is in "
                    f"{waiting['reason']} ({waiting.get('message', '')})")
    return None


def referenced_config(deployments: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """The (kind, name) of every ConfigMap and Secret the Deployments' containers take variables from."""
    found: set[tuple[str, str]] = set()
    for dep in deployments:
        template = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in template.get("containers") or []:
            for var in container.get("env") or []:
                source = var.get("valueFrom") or {}
                if "configMapKeyRef" in source:
                    found.add(("ConfigMap", str(source["configMapKeyRef"].get("name"))))
                if "secretKeyRef" in source:
                    found.add(("Secret", str(source["secretKeyRef"].get("name"))))
    return found
