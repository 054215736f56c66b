"""Applies a plan step by step.

Each step is written to the store (and the ledger) before it is taken and again when it is done, so
an interrupted deploy can be recognised and cleaned up. Until the `route` step, the previous release
keeps all traffic; a failure before it stops only what this deployment started.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from ingot import ledger
from ingot.artifacts import ArtifactStore
from ingot.artifacts.store import force_rmtree
from ingot.config_store import secret_values
from ingot.deploy_params import DeployParams
from ingot.errors import IngotError, OperationFailed
from ingot.health import wait_healthy
from ingot.paths import StatePaths
from ingot.plan import Plan, Step
from ingot.rollout_analysis import analyse
from ingot.rollout_control import RolloutAborted, RolloutControl
from ingot.routers.base import Router
from ingot.runtimes.base import Hardening, InstanceRequest
from ingot.runtimes.registry import Runtimes
from ingot.store import DeploymentRow, InstanceRow, ReleaseRow, Store

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class StepFailed(OperationFailed):
    pass


@dataclass
class Deployment:
    row: DeploymentRow
    release: ReleaseRow
    params: DeployParams
    router: Router
    started: list[InstanceRow] = field(default_factory=list)
    routed: bool = False  # the new release has taken traffic
    drained: list[str] = field(default_factory=list)  # instances taken out of the pool, to stop next
    control: RolloutControl = field(default_factory=RolloutControl)
    # Called when the verification window opens (with its seconds): the agent answers the caller then.
    on_verify: Callable[[float], None] | None = None
    # Why the rest of the plan was cancelled, if it is (another operation took over the service).
    superseded_by: str = "the agent stopped"
    in_window: bool = False  # inside a verify step: the only point where the rest of the plan may be cancelled


class Executor:
    def __init__(self, store: Store, runtimes: Runtimes, artifacts: ArtifactStore, paths: StatePaths) -> None:
        self.store = store
        self.runtimes = runtimes
        self.artifacts = artifacts
        self.paths = paths

    # ---- recording ---------------------------------------------------------------------
    def _record(self, dep: Deployment, name: str, status: str, detail: dict[str, Any],
                action: str = "step", payload: dict[str, Any] | None = None) -> None:
        """One deployment step and its ledger entry, durable together before the caller goes on."""
        with self.store.begin() as conn:
            self.store.add_step(conn, dep.row.id, name, status, detail)
            ledger.append(
                conn,
                actor=dep.row.actor,
                action=f"{dep.row.kind}.{action}",
                environment=dep.row.environment,
                service=dep.row.service,
                subject=dep.row.id,
                payload=payload if payload is not None else {"step": name, "status": status, **detail},
            )

    def finish(self, dep: Deployment, outcome: str, detail: dict[str, Any]) -> None:
        action = {"succeeded": "finish", "failed": "fail", "aborted": "abort"}.get(outcome, outcome)
        self._record(dep, "finish", outcome, {"outcome": outcome, **detail}, action=action,
                     payload={"release": dep.release.id, "outcome": outcome, **detail})

    # ---- applying ----------------------------------------------------------------------
    async def apply(self, dep: Deployment, plan: Plan, emit: Emit) -> None:
        for index, step in enumerate(plan.steps, start=1):
            try:
                await dep.control.checkpoint()
            except IngotError as exc:
                await self._fail(dep, step, index, len(plan.steps), exc, emit)
            await emit({"event": "step", "index": index, "total": len(plan.steps), "status": "started",
                        "step": step.as_dict()})
            self._record(dep, step.kind, "started", step.as_dict())
            started = time.monotonic()
            try:
                detail = await self._run(dep, step)
            except asyncio.CancelledError:
                self._record(dep, step.kind, "ended", {"by": dep.superseded_by})
                self.finish(dep, "superseded", {"by": dep.superseded_by, "serving": self._serving_text(dep)})
                raise
            except IngotError as exc:
                self._record(dep, step.kind, "failed", {"error": exc.message, "details": exc.details})
                await self._fail(dep, step, index, len(plan.steps), exc, emit)
            elapsed = round(time.monotonic() - started, 3)
            self._record(dep, step.kind, "done", {**detail, "seconds": elapsed})
            await emit({"event": "step", "index": index, "total": len(plan.steps), "status": "done",
                        "step": step.as_dict(), "seconds": elapsed, "detail": detail})
        self.finish(dep, "succeeded", {"steps": len(plan.steps)})

    async def _fail(self, dep: Deployment, step: Step, index: int, total: int, exc: IngotError,
                    emit: Emit) -> NoReturn:
        """Put traffic back where it was, stop what this deployment started, record it, and raise."""
        await emit({"event": "step", "index": index, "total": total, "status": "failed",
                    "step": step.as_dict(), "error": exc.message})
        await self._undo(dep)
        serving = self._serving_text(dep)
        outcome = "aborted" if isinstance(exc, RolloutAborted) else "failed"
        self.finish(dep, outcome, {"error": exc.message, "details": exc.details, "serving": serving})
        raise OperationFailed(
            f"{dep.row.kind} of {dep.row.service} to {dep.release.id} {outcome} at step "
            f"'{step.describe()}': {exc.message}",
            details=[*exc.details, serving],
        ) from exc

    async def _run(self, dep: Deployment, step: Step) -> dict[str, Any]:
        match step.kind:
            case "start":
                return await self._start(dep, step)
            case "wait_healthy":
                return await self._wait_healthy(dep)
            case "route":
                return await self._route(dep, step)
            case "drain":
                assert step.release is not None
                drained = await dep.router.drain(step.release, dep.params.drain_timeout)
                await dep.router.remove_release(step.release)
                return {"drained": drained}
            case "drain_instances":
                assert step.release is not None
                return await self._drain_instances(dep, step.release, step.count)
            case "stop":
                assert step.release is not None
                return await self._stop(dep, step.release, step.count)
            case "pause":
                return await self._pause(dep, step)
            case "analyse":
                return await analyse(dep, step, self._record_verdict)
            case "verify":
                return await self._verify(dep, step)
        raise AssertionError(step.kind)

    async def _verify(self, dep: Deployment, step: Step) -> dict[str, Any]:
        assert step.seconds is not None
        dep.in_window = True
        try:
            if dep.on_verify is not None:
                dep.on_verify(step.seconds)
            if step.analysis is None:
                return {"ended": await dep.control.hold(step.seconds)}
            return await analyse(dep, step, self._record_verdict)
        finally:
            dep.in_window = False

    async def _pause(self, dep: Deployment, step: Step) -> dict[str, Any]:
        seconds = None if step.manual else step.seconds
        if step.analysis is None:
            ended = await dep.control.hold(seconds)
            return {"ended": ended}
        # A guarded pause: the analysis keeps judging while the operator decides; a fail aborts it.
        guard = asyncio.create_task(analyse(dep, step, self._record_verdict, until_failure=True))
        hold = asyncio.create_task(dep.control.hold(seconds))
        done, _ = await asyncio.wait({guard, hold}, return_when=asyncio.FIRST_COMPLETED)
        for task in (guard, hold):
            if task not in done:
                task.cancel()
        if guard in done:
            guard.result()  # raises the analysis failure
        return {"ended": hold.result()}

    def _record_verdict(self, dep: Deployment, verdict: dict[str, Any]) -> None:
        with self.store.begin() as conn:
            ledger.append(conn, actor=dep.row.actor, action=f"{dep.row.kind}.analysis",
                          environment=dep.row.environment, service=dep.row.service, subject=dep.row.id,
                          payload=verdict)

    async def _drain_instances(self, dep: Deployment, release: str, count: int) -> dict[str, Any]:
        leaving = [r for r in self.store.live_instances(dep.row.environment, dep.row.service)
                   if r.release_id == release and r.state == "running"][:count]
        drained = await dep.router.drain_backends(release, [(r.host, r.port) for r in leaving],
                                                  dep.params.drain_timeout)
        dep.drained.extend(r.id for r in leaving)
        return {"instances": [r.id for r in leaving], "drained": drained}

    async def _start(self, dep: Deployment, step: Step) -> dict[str, Any]:
        rows = await self.start_instances(dep.row.environment, dep.row.service, dep.release, dep.params, step.count)
        dep.started.extend(rows)
        return {"instances": [{"id": r.id, "port": r.port, "pid": r.pid} for r in rows]}

    async def start_instances(self, environment: str, service: str, release: ReleaseRow, params: DeployParams,
                              count: int) -> list[InstanceRow]:
        """Start `count` fresh instances of `release`; each is recorded before anything waits on it."""
        runtime = self.runtimes.get(params.runtime)
        template = await self._request_template(environment, service, release, params)
        requests = []
        for _ in range(count):
            instance_id = f"{service}-{release.id[:6]}-{uuid.uuid4().hex[:6]}"
            requests.append(replace(template, instance_id=instance_id,
                                    log_path=self.paths.instance_log(environment, service, instance_id)))
        # In parallel: container engines take a while per container, and nothing orders replicas.
        outcomes = await asyncio.gather(*(asyncio.to_thread(runtime.start, r) for r in requests),
                                        return_exceptions=True)
        rows = [o for o in outcomes if isinstance(o, InstanceRow)]
        for row in rows:
            self.store.add_instance(row)
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(self.stop_instance(r, params.stop_timeout, state="failed") for r in rows))
            raise failure
        return rows

    async def _request_template(self, environment: str, service: str, release: ReleaseRow,
                                params: DeployParams) -> InstanceRequest:
        spec = release.spec
        # Secret values are decrypted here, for the instance's environment only: never stored or logged.
        secrets = await asyncio.to_thread(secret_values, self.store, self.paths.keys, release, environment)
        common = InstanceRequest(instance_id="", environment=environment, service=service, release_id=release.id,
                                 project=release.project, state_dir=str(self.paths.root),
                                 env={**release_environment(release), **secrets},
                                 command=tuple(spec.get("command") or ()))
        if params.runtime == "process":
            run_dir = await asyncio.to_thread(self.artifacts.checkout, release.artifact_digest, self.paths.runs)
            return replace(common, artifact_path=run_dir)
        security = spec.get("security") or {}
        hardening = Hardening(
            read_only=bool(security.get("read_only", True)),
            no_new_privileges=bool(security.get("no_new_privileges", True)),
            drop_all_capabilities=bool(security.get("drop_all_capabilities", True)),
            add_capabilities=tuple(security.get("add_capabilities", ())),
            tmpfs=tuple(security.get("tmpfs", ("/tmp",))),
        )
        return replace(common, image=release.artifact_digest, container_port=int(spec["port"]), hardening=hardening)

    async def _wait_healthy(self, dep: Deployment) -> dict[str, Any]:
        pending = [row for row in dep.started if row.state == "starting"]
        verdicts = await dep.control.or_abort(asyncio.gather(*(self.gate(row, dep.params) for row in pending)))
        failed = [(row, v) for row, v in zip(pending, verdicts, strict=True) if not v.healthy]
        if failed:
            row, verdict = failed[0]
            raise StepFailed(
                f"instance {row.id} did not become healthy: {verdict.reason}",
                details=[f"last log lines of {row.id} ({row.log_path}):",
                         *[f"  | {line}" for line in self.runtimes.of(row).log_tail(row, 15)]],
            )
        for row in pending:
            self.store.set_instance_state(row.id, "running")
        dep.started = [replace(r, state="running") if r in pending else r for r in dep.started]
        return {"healthy": [{"id": r.id, "seconds": round(v.waited_s, 3)} for r, v in
                            zip(pending, verdicts, strict=True)]}

    async def gate(self, row: InstanceRow, params: DeployParams) -> Any:
        def still_running() -> str | None:
            observed = self.runtimes.of(row).observe(row)
            return None if observed.alive else f"it exited before becoming healthy ({observed.detail})"

        return await wait_healthy(row.host, row.port, params.health, still_running)

    async def _route(self, dep: Deployment, step: Step) -> dict[str, Any]:
        weights = dict(step.weights)
        for release in weights:
            backends = [(r.host, r.port) for r in self.store.live_instances(dep.row.environment, dep.row.service)
                        if r.release_id == release and r.state == "running"]
            await dep.router.set_backends(release, backends)
        await dep.router.set_weights(weights)
        live = [release for release, weight in weights.items() if weight > 0]
        # The live release of record changes only when one release takes all the traffic (or none
        # does: scaled to zero); a canary's partial split leaves the stable release of record.
        if len(live) <= 1:
            self._activate(dep, live[0] if live else None)
        dep.routed = dep.routed or weights.get(dep.release.id, 0) > 0
        return {"weights": weights}

    def _activate(self, dep: Deployment, release_id: str | None) -> None:
        with self.store.begin() as conn:
            self.store.activate(conn, environment=dep.row.environment, service=dep.row.service,
                                release_id=release_id, deployment_id=dep.row.id, params=dep.params.as_dict())

    async def _stop(self, dep: Deployment, release: str, count: int) -> dict[str, Any]:
        candidates = [r for r in self.store.live_instances(dep.row.environment, dep.row.service)
                      if r.release_id == release]
        # The instances a drain_instances step took out of the pool go first: they are the ones drained.
        candidates.sort(key=lambda r: (r.id not in dep.drained, r.started_at))
        victims = candidates[:count]
        await asyncio.gather(*(self.stop_instance(r, dep.params.stop_timeout) for r in victims))
        return {"stopped": [r.id for r in victims]}

    async def stop_instance(self, row: InstanceRow, timeout: float, state: str = "stopped") -> None:
        await asyncio.to_thread(self.runtimes.of(row).stop, row, timeout)
        self.store.set_instance_state(row.id, state, stopped=True)
        self.release_checkout(row)

    def release_checkout(self, row: InstanceRow) -> None:
        """Remove a process instance's run directory once no live instance runs from it."""
        if row.runtime != "process" or not row.handle:
            return
        run_dir = Path(row.handle)
        if run_dir.parent != self.paths.runs:
            return
        if any(other.handle == row.handle for other in self.store.live_instances() if other.id != row.id):
            return
        if run_dir.exists():
            force_rmtree(run_dir)

    async def _undo(self, dep: Deployment) -> None:
        """After a failure: traffic back to the previous release at once, then retire what this deployment
        started. Once the previous release's instances are gone there is nothing to go back to."""
        key = (dep.row.environment, dep.row.service)
        stable = dep.row.from_release
        stable_running = [r for r in self.store.live_instances(*key)
                          if stable and r.release_id == stable and r.state == "running"]
        if dep.routed:
            if not stable_running:
                return
            assert stable is not None
            await dep.router.set_backends(stable, [(r.host, r.port) for r in stable_running])
            await dep.router.set_weights({stable: 100})
            self._activate(dep, stable)
            await dep.router.drain(dep.release.id, dep.params.drain_timeout)
            await dep.router.remove_release(dep.release.id)
        await asyncio.gather(*(self.stop_instance(r, dep.params.stop_timeout) for r in dep.started))

    def _serving_text(self, dep: Deployment) -> str:
        current = self.store.current_activation(dep.row.environment, dep.row.service)
        if current and current.release_id:
            return f"still serving: release {current.release_id} on {dep.router.listen_address[0]}:" \
                   f"{dep.router.listen_address[1]}"
        return "nothing was serving this service before, and nothing serves it now"


def release_environment(release: ReleaseRow) -> dict[str, str]:
    """The release's plain variables: its spec's env and its config snapshot's values (secrets are apart)."""
    env = {str(k): str(v) for k, v in release.spec.get("env", {}).items()}
    env.update({str(k): str(v) for k, v in release.config.get("values", {}).items()})
    return env
