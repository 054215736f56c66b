"""Applying a cluster plan step by step: server-side apply, then waiting on what the cluster reports.

A Deployment is ready when the controller has seen its latest spec and all its replicas are updated and
Available. It has failed when its progress deadline (the health deadline) passes, or earlier when a pod
is in a state it does not leave by itself (its container keeps exiting, its config cannot be made, its
image name is invalid). The failure names each failing pod with its container states, its events and
the last lines of its log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingot.analysis import decide
from ingot.checks import masker
from ingot.errors import IngotError, OperationFailed
from ingot.kube import names, render
from ingot.kube.api import KubeApi
from ingot.kube.plan import KubePlan, KubeStep
from ingot.kube.prometheus import Query, http_query, verdict
from ingot.kube.render import Layout, Workload
from ingot.oneoff import KEPT_LINES, SECRET_MARK  # a release_command's log is kept and masked as one-off ones are
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
    # The release_command's Job: where its log is kept (by Job name), and how its end is recorded
    # (ok, detail): the ledger entry that keeps a reused release from running it again.
    job_log: Callable[[str], Path] | None = None
    release_ran: Callable[[bool, dict[str, Any]], None] = lambda _ok, _detail: None

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
            case "release_command":
                return self.run_release_command(step)
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
        applied = self._apply_what_pods_need(rendered)
        self.api.apply(render.deployment(self.workload, step.replicas))
        return {"applied": [*applied, f"Deployment {step.deployment}"], "replicas": step.replicas}

    def _apply_what_pods_need(self, rendered: render.Rendered) -> list[str]:
        """The release's ConfigMap and Secret, and its volumes' claims (made once, kept across releases)."""
        applied = []
        for obj in rendered.objects:
            if obj["kind"] == "PersistentVolumeClaim":
                self._check_claim_is_ours(obj)
            if obj["kind"] in ("ConfigMap", "Secret", "PersistentVolumeClaim"):
                self.api.apply(obj)
                applied.append(f"{obj['kind']} {obj['metadata']['name']}")
        return applied

    def _check_claim_is_ours(self, claim: Mapping[str, Any]) -> None:
        """A claim of that name holding another service's (or another tool's) data is never taken over."""
        name = str(claim["metadata"]["name"])
        live = self.api.get("PersistentVolumeClaim", name)
        if live is None:
            return
        labels, want = live["metadata"].get("labels") or {}, claim["metadata"]["labels"]
        keys = (names.PROJECT, names.ENVIRONMENT, names.SERVICE, names.VOLUME)
        if any(labels.get(key) != want[key] for key in keys):
            owner = ", ".join(f"{key}={labels.get(key)}" for key in keys if key in labels) or "no ingot labels"
            raise OperationFailed(f"PersistentVolumeClaim {name} exists in {self.api.where} but is not volume "
                                  f"{want[names.VOLUME]} of {self.workload.service} ({owner}); ingot does not "
                                  "take over another's data: rename the volume in the spec or move that claim")

    # ---- the release_command -------------------------------------------------------------------

    def run_release_command(self, step: KubeStep) -> dict[str, Any]:
        """Its Job applied and followed to its end, its log streamed (secret values masked) and kept;
        nothing else of the release exists yet but its config and volumes. A failure raises."""
        job = render.release_job(self.workload)
        if job is None:
            raise OperationFailed(f"release {step.release} has no release_command; plan again")
        name, command = str(job["metadata"]["name"]), list(job["spec"]["template"]["spec"]["containers"][0]["args"])
        secrets = self.secret_values(self.workload)
        self._apply_what_pods_need(render.render_release(self.workload, self.layout, secrets))
        mask = masker(list(secrets.values()), SECRET_MARK)
        started = self.clock()
        if self.api.get("Job", name) is not None:
            # An earlier run of this release (failed, or asked to run again): its Job name is the release's.
            self.api.delete("Job", name)
            self._wait_gone("Job", name, float(step.seconds or 0) + 30.0)
        self.api.apply(job)
        lines: list[str] = []
        try:
            state, why, pod = self._follow_job(name, float(step.seconds or 0), lines, mask)
        except RolloutAborted as exc:
            self.api.delete("Job", name)  # stops its pod: nothing of the aborted release is left running
            self.release_ran(False, {"job": name, "command": command, "aborted": exc.message,
                                     "log_path": self._keep_log(name, lines)})
            raise
        tail = lines[-LOG_LINES:]
        detail: dict[str, Any] = {"job": name, "command": command, "exit_code": exit_code(pod) if pod else None,
                                  "seconds": round(self.clock() - started, 3), "log_path": self._keep_log(name, lines),
                                  "tail": tail}
        ok = state == "succeeded"
        self.release_ran(ok, detail)
        if ok:
            return detail
        kept = [f"Job {name} is kept for `kubectl describe job {name}` until its TTL"] \
            if self.api.get("Job", name) is not None else []
        raise OperationFailed(f"release command `{' '.join(command)}` of {step.release} failed: {why}",
                              details=[f"its log: {detail['log_path']}", *(f"  | {line}" for line in tail),
                                       *kept, "no Deployment of the new release was created"])

    def run_one_off(self, job: dict[str, Any], *, detach: bool) -> dict[str, Any]:
        """`ingot run`'s Job applied, with what its pod needs, and unless `detach` followed to its end: its log
        streamed through `emit` (secret values masked) and kept. Interrupted (Ctrl-C), the Job is deleted,
        which stops its pod, before the interruption goes on."""
        name = str(job["metadata"]["name"])
        secrets = self.secret_values(self.workload)
        self._apply_what_pods_need(render.render_release(self.workload, self.layout, secrets))
        self.api.apply(job)
        if detach:
            return {"job": name, "state": "running", "why": "", "exit_code": None, "log_path": None}
        mask = masker(list(secrets.values()), SECRET_MARK)
        started = self.clock()
        lines: list[str] = []
        try:
            state, why, pod = self._follow_job(name, math.inf, lines, mask)
        except BaseException:
            self.api.delete("Job", name)
            raise
        return {"job": name, "state": state, "why": why, "exit_code": exit_code(pod) if pod else None,
                "seconds": round(self.clock() - started, 3), "log_path": self._keep_log(name, lines)}

    def _follow_job(self, name: str, seconds: float, lines: list[str],
                    mask: Callable[[str], str]) -> tuple[str, str, dict[str, Any] | None]:
        """("succeeded" | "failed", why, its pod) once the Job ends, its new log lines emitted meanwhile."""
        deadline = self.clock() + seconds + 30.0  # the Job's own activeDeadlineSeconds stops it first
        while True:
            live = self.api.get("Job", name)
            if live is None:
                raise OperationFailed(f"Job {name} was deleted while ingot waited for it")
            state, why = job_state(live)
            pods = sorted(self.api.find("Pod", f"{names.JOB}={name}"),
                          key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
            pod = pods[-1] if pods else None
            if pod is not None:
                for line in (self.api.pod_log(str(pod["metadata"]["name"]), self.workload.service) or [])[len(lines):]:
                    lines.append(mask(line))
                    self.emit({"event": "release_output", "instance": name, "line": lines[-1]})
            stuck = hopeless(pod) if pod is not None and state == "running" else None
            if state != "running" or stuck or self.clock() >= deadline:
                if state == "running":
                    why = stuck or f"not finished within {seconds:g}s (release_command_timeout)"
                    self.api.delete("Job", name)
                    state = "failed"
                return state, why, pod
            self._check_abort()
            self.sleep(self.poll)

    def _wait_gone(self, kind: str, name: str, seconds: float) -> None:
        deadline = self.clock() + seconds
        while self.api.get(kind, name) is not None:
            if self.clock() >= deadline:
                raise OperationFailed(f"{kind} {name} was deleted but is still there after {seconds:g}s")
            self.sleep(self.poll)

    def _keep_log(self, job: str, lines: list[str]) -> str | None:
        if self.job_log is None:
            return None
        path = self.job_log(job)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text("".join(f"{line}\n" for line in lines[-KEPT_LINES:]))
        return str(path)

    def wait_available(self, deployment: str) -> dict[str, Any]:
        deadline = self.clock() + self.workload.ready_deadline + 5.0  # the controller's own reaction time
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
                                                         f"not Available within {self.workload.ready_deadline:g}s "
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


def job_state(job: Mapping[str, Any]) -> tuple[str, str]:
    """("succeeded" | "failed" | "running", why) from a Job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "succeeded", ""
        if condition.get("type") == "Failed":
            reason = {"BackoffLimitExceeded": "its command exited non-zero",
                      "DeadlineExceeded": "it ran past release_command_timeout and was stopped"}.get(
                str(condition.get("reason")), str(condition.get("reason") or "failed"))
            message = condition.get("message")
            return "failed", reason + (f" ({message})" if message else "")
    return "running", ""


def exit_code(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated")
        if ended is not None and ended.get("exitCode") is not None:
            return int(ended["exitCode"])
    return None


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
