"""Applies a plan step by step.

Each step is written to the store (and the ledger) before it is taken and again when it is done, so
an interrupted deploy can be recognised and cleaned up. Until the `route` step, the previous release
keeps all traffic; a failure before it stops only what this deployment started. After it, the previous
release keeps running until the new one has settled (min_ready) and, if asked, been verified: a
failure up to then sends traffic back to it by a switch alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ingot import checks, ledger, volumes
from ingot.artifacts import ArtifactStore
from ingot.artifacts.store import force_rmtree
from ingot.config_store import secret_values
from ingot.deploy_params import DeployParams
from ingot.diskspace import disk_full_error, is_disk_full
from ingot.errors import IngotError, OperationFailed
from ingot.health import CheckContext, Watched, WatchVerdict, wait_healthy, watch_instances
from ingot.paths import StatePaths
from ingot.plan import Plan, Step, StrategyOptions
from ingot.release_trust import refuse_untrusted
from ingot.rollout_analysis import analyse
from ingot.rollout_control import RolloutAborted, RolloutControl
from ingot.routers.base import Router, can_hold, drain_cut
from ingot.runtimes import fence
from ingot.runtimes.base import Hardening, InstanceRequest, Resources, Runtime
from ingot.runtimes.registry import Runtimes
from ingot.store import DeploymentRow, InstanceRow, ReleaseRow, Store
from ingot.store.repo import SPAWNING

Emit = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")
log = logging.getLogger("ingot.agent")
# How many of an instance's last log lines a failed health gate or watch shows.
LOG_EVIDENCE_LINES = 20


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
    checked: set[str] = field(default_factory=set)  # instances the smoke checks have passed on
    checked_weight: int = 0  # the release's weight after the last route its checks passed before
    # Instances this deployment started that a route put in the router's pool.
    pooled: set[str] = field(default_factory=set)
    # A restart: on a failure, the fresh instances already in the pool stay (they are the same release, and
    # the old ones they replaced are gone); only the rest of what it started is stopped.
    keep_pooled: bool = False


class Executor:
    def __init__(self, store: Store, runtimes: Runtimes, artifacts: ArtifactStore, paths: StatePaths) -> None:
        self.store = store
        self.runtimes = runtimes
        self.artifacts = artifacts
        self.paths = paths
        # Instances a `drain_instances` step took out of their router pool, until they are stopped: a pool
        # refreshed meanwhile (the agent's, after an instance exits) must not put them back, or requests go
        # to instances being stopped (a scale-down's 502s when all its tries land on those).
        self.leaving: set[str] = set()

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
        """Apply `plan`. Any failure, ingot's own or not (a bug, a full disk), ends it the same way: traffic
        back, what it started stopped, the failure recorded, and `OperationFailed` raised."""
        total = len(plan.steps)
        holding = next(((i, s) for i, s in enumerate(plan.steps, start=1) if s.kind == "route" and s.seconds), None)
        if holding is not None and not can_hold(dep.router):
            # Refused before anything starts: a switch without the hold would let the releases overlap.
            await self._fail(dep, holding[1], holding[0], total, StepFailed(
                "strategy.hold needs a router that can hold requests: the built-in one, or HAProxy built with Lua",
                details=["this machine's haproxy has no Lua (`haproxy -vv` lacks USE_LUA=1): it has no other "
                         "runtime way to park new requests (its only queue is a chosen server's);",
                         "remove strategy.hold, install a haproxy with Lua (Debian's has it), or use "
                         "router.kind: builtin for this service"]), emit)
        try:
            await self._steps(dep, plan, emit)
        finally:  # what it took out of a pool and did not stop is no longer on its way out
            self.leaving.difference_update(dep.drained)

    async def _steps(self, dep: Deployment, plan: Plan, emit: Emit) -> None:
        total = len(plan.steps)
        for index, step in enumerate(plan.steps, start=1):
            try:
                await dep.control.checkpoint()
            except Exception as exc:
                await self._fail(dep, step, index, total, _as_failure(exc, step), emit)
            started = time.monotonic()
            try:
                await emit({"event": "step", "index": index, "total": total, "status": "started",
                            "step": step.as_dict()})
                self._record(dep, step.kind, "started", step.as_dict())
                detail = await self._run(dep, step, emit)
                elapsed = round(time.monotonic() - started, 3)
                self._record(dep, step.kind, "done", {**detail, "seconds": elapsed})
            except asyncio.CancelledError:
                self._record(dep, step.kind, "ended", {"by": dep.superseded_by})
                self.finish(dep, "superseded", {"by": dep.superseded_by, "serving": self._serving_text(dep)})
                raise
            except Exception as exc:
                failure = _as_failure(exc, step)
                with contextlib.suppress(Exception):  # a full disk may refuse this; finish is what counts
                    self._record(dep, step.kind, "failed", {"error": failure.message, "details": failure.details})
                await self._fail(dep, step, index, total, failure, emit)
            await emit({"event": "step", "index": index, "total": total, "status": "done",
                        "step": step.as_dict(), "seconds": elapsed, "detail": detail})
        self.finish(dep, "succeeded", {"steps": total})

    async def _fail(self, dep: Deployment, step: Step, index: int, total: int, exc: IngotError,
                    emit: Emit) -> NoReturn:
        """Put traffic back where it was, stop what this deployment started, record it, and raise.

        Each part is tried even if one before it fails: the record of the outcome above all, so that no
        deployment stays `running` (what could not be recorded, the next operation on the service closes).
        """
        with contextlib.suppress(Exception):
            await emit({"event": "step", "index": index, "total": total, "status": "failed",
                        "step": step.as_dict(), "error": exc.message})
        problems = await self._undo(dep)
        try:
            serving = self._serving_text(dep)
        except Exception as read_exc:
            serving = f"what serves now could not be read: {_as_failure(read_exc, step).message}"
        outcome = "aborted" if isinstance(exc, RolloutAborted) else "failed"
        details = [*exc.details, *problems, serving]
        try:
            self.finish(dep, outcome, {"error": exc.message, "details": [*exc.details, *problems],
                                       "serving": serving})
        except Exception as record_exc:
            log.exception("deployment %s: its outcome could not be recorded", dep.row.id)
            details.append(f"its outcome could not be recorded ({_as_failure(record_exc, step).message}); "
                           "the next operation on the service records it as interrupted")
        raise OperationFailed(
            f"{dep.row.kind} of {dep.row.service} to {dep.release.id} {outcome} at step "
            f"'{step.describe()}': {exc.message}",
            details=details,
        ) from exc

    async def _run(self, dep: Deployment, step: Step, emit: Emit) -> dict[str, Any]:
        match step.kind:
            case "release_command":
                from ingot import oneoff  # (it imports this module for the instance template)

                return await oneoff.release_phase(self, dep, step, emit)
            case "start":
                return await self._start(dep, step)
            case "wait_healthy":
                return await self._wait_healthy(dep)
            case "route":
                return await self._route(dep, step)
            case "settle":
                assert step.release is not None and step.seconds is not None
                return await self._stay_up(dep, step.release, step.seconds, f"its min_ready of {step.seconds:g}s")
            case "drain":
                assert step.release is not None
                drained = await dep.router.drain(step.release, dep.params.drain_timeout)
                cut = drain_cut(dep.router, step.release)
                await dep.router.remove_release(step.release)
                return {"drained": drained, **_cut_note(step.release, cut, dep.params.drain_timeout),
                        **_drain_warning(drained, dep.params.drain_timeout)}
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
        assert step.seconds is not None and step.release is not None
        seconds = step.seconds
        dep.in_window = True
        try:
            if dep.on_verify is not None:
                dep.on_verify(seconds)

            async def judge() -> dict[str, Any]:
                if step.analysis is None:
                    return {"ended": await dep.control.hold(seconds)}
                return await analyse(dep, step, self._record_verdict)

            # The new release's instances stay watched as during min_ready: a death or failed probes inside
            # the window send traffic back to the warm release as a failed verdict does.
            return await guarded(judge(), self._stay_up(dep, step.release, None, "the verification window"))
        finally:
            dep.in_window = False

    async def _pause(self, dep: Deployment, step: Step) -> dict[str, Any]:
        seconds = None if step.manual else step.seconds
        if step.analysis is None:
            ended = await dep.control.hold(seconds)
            return {"ended": ended}
        # A guarded pause: the analysis keeps judging while the operator decides; a fail aborts it.
        ended = await guarded(dep.control.hold(seconds),
                              analyse(dep, step, self._record_verdict, until_failure=True))
        return {"ended": ended}

    # ---- staying up under traffic (min_ready, verification) ----------------------------------
    async def _stay_up(self, dep: Deployment, release: str, seconds: float | None, span: str) -> dict[str, Any]:
        """Watch `release`'s instances for `seconds` (None: until cancelled); raise StepFailed with the
        evidence as soon as one of them dies or fails `unhealthy_threshold` health probes in a row."""
        rows = self._passed_gate(dep, release)
        watched = [Watched(row.id, row.host, row.port, self._exit_reason_of(row), self.check_context(row))
                   for row in rows]
        verdict = await watch_instances(watched, dep.params.health, seconds, dep.control.check)
        if not verdict.stable:
            raise await self._unstable(dep, rows, verdict, span)
        return {"instances": [r.id for r in rows], "probes": verdict.probed}

    def _passed_gate(self, dep: Deployment, release: str) -> list[InstanceRow]:
        """`release`'s instances that passed their health gate: this deployment's, including one that has
        died since (the agent may already have marked it exited), and any that ran before it."""
        states = self.store.instance_states(dep.row.environment, dep.row.service)
        rows = {r.id: r for r in dep.started
                if r.release_id == release and r.state == "running" and states.get(r.id) in ("running", "exited")}
        for row in self.store.live_instances(dep.row.environment, dep.row.service):
            if row.release_id == release and row.state == "running":
                rows.setdefault(row.id, row)
        return list(rows.values())

    def _exit_reason_of(self, row: InstanceRow) -> Callable[[], Awaitable[str | None]]:
        runtime = self.runtimes.of(row)

        async def exit_reason() -> str | None:
            try:
                # A container engine is asked over a socket: off the loop, which also carries the router.
                seen = runtime.observe(row) if row.runtime == "process" else await asyncio.to_thread(
                    runtime.observe, row)
            except IngotError:
                return None  # an engine that cannot be asked: not knowing is not dead; the probes still judge
            return None if seen.alive else seen.detail or "not running"

        return exit_reason

    async def _unstable(self, dep: Deployment, rows: list[InstanceRow], verdict: WatchVerdict,
                        span: str) -> StepFailed:
        row = next(r for r in rows if r.id == verdict.instance)
        details = []
        if verdict.probes:
            details.append(f"last health probes of {row.id}: {', '.join(p.detail for p in verdict.probes)}")
        details += await self._log_evidence(dep, row)
        return StepFailed(f"instance {row.id} {verdict.reason} {verdict.seconds:.1f}s into {span}", details=details)

    async def _log_evidence(self, dep: Deployment, row: InstanceRow) -> list[str]:
        """An instance's last log lines for a failure's details (the deploy's output and the ledger), with
        the secret values of its release masked: an app that prints its config must not leak them there."""
        release = dep.release if row.release_id == dep.release.id else self.store.get_release(row.release_id)
        try:
            secrets = [] if release is None else list((await asyncio.to_thread(
                secret_values, self.store, self.paths.keys, release, dep.row.environment)).values())
        except IngotError as exc:  # values it cannot decrypt cannot be masked: the lines are not shown
            return [f"last log lines of {row.id}: not shown, its secrets cannot be read to mask them ({exc})",
                    f"  see {row.log_path}"]
        mask = checks.masker(secrets)
        lines = await asyncio.to_thread(self.runtimes.of(row).log_tail, row, LOG_EVIDENCE_LINES)
        return [f"last log lines of {row.id} ({row.log_path}):", *[f"  | {mask(line)}" for line in lines]]

    def _record_verdict(self, dep: Deployment, verdict: dict[str, Any]) -> None:
        with self.store.begin() as conn:
            ledger.append(conn, actor=dep.row.actor, action=f"{dep.row.kind}.analysis",
                          environment=dep.row.environment, service=dep.row.service, subject=dep.row.id,
                          payload=verdict)

    async def _drain_instances(self, dep: Deployment, release: str, count: int) -> dict[str, Any]:
        leaving = [r for r in self.store.live_instances(dep.row.environment, dep.row.service)
                   if r.release_id == release and r.state == "running"][:count]
        self.leaving.update(r.id for r in leaving)
        dep.drained.extend(r.id for r in leaving)
        drained = await dep.router.drain_backends(release, [(r.host, r.port) for r in leaving],
                                                  dep.params.drain_timeout)
        return {"instances": [r.id for r in leaving], "drained": drained,
                **_cut_note(release, drain_cut(dep.router, release), dep.params.drain_timeout),
                **_drain_warning(drained, dep.params.drain_timeout)}

    async def _start(self, dep: Deployment, step: Step) -> dict[str, Any]:
        rows = await self.start_instances(dep.row.environment, dep.row.service, dep.release, dep.params, step.count)
        dep.started.extend(rows)
        result: dict[str, Any] = {"instances": [{"id": r.id, "port": r.port, "pid": r.pid} for r in rows]}
        process = dep.params.runtime == "process"
        warning = fence.deploy_warning(dep.release.spec.get("resources") or {}) if process else None
        return {**result, "warning": warning} if warning and rows else result

    async def start_instances(self, environment: str, service: str, release: ReleaseRow, params: DeployParams,
                              count: int) -> list[InstanceRow]:
        """Start `count` fresh instances of `release`.

        Each one's row is written (`spawning`) before it is spawned, so nothing ingot starts is ever
        unrecorded: if the agent dies in between, `down`, recovery and drift find it by its labels.
        """
        if count <= 0:
            return []  # no checkout copied for nothing
        runtime = self.runtimes.get(params.runtime)
        await asyncio.to_thread(self.check_release, environment, service, release)
        template = await self.request_template(environment, service, release, params)
        requests = []
        for _ in range(count):
            instance_id = f"{service}-{release.id[:6]}-{uuid.uuid4().hex[:6]}"
            requests.append(replace(template, instance_id=instance_id,
                                    log_path=self.paths.instance_log(environment, service, instance_id)))
        intents = [_intent(r, params.runtime) for r in requests]
        try:
            self.store.add_instances(intents)
        except BaseException:
            self.remove_checkout(template.artifact_path)  # nothing was recorded to run from it
            raise
        # In parallel: container engines take a while per container, and nothing orders replicas.
        outcomes = await asyncio.gather(*(asyncio.to_thread(self._spawn, runtime, r) for r in requests),
                                        return_exceptions=True)
        rows = [o for o in outcomes if isinstance(o, InstanceRow)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            try:
                for intent, outcome in zip(intents, outcomes, strict=True):
                    if not isinstance(outcome, InstanceRow):
                        await self.stop_instance(intent, params.stop_timeout, state="failed")
                await asyncio.gather(*(self.stop_instance(r, params.stop_timeout, state="failed") for r in rows))
            except Exception:  # what could not be retired now, `clear_leftovers` retires later
                log.exception("retiring the instances of a failed start failed")
            raise failure
        return rows

    def check_release(self, environment: str, service: str, release: ReleaseRow) -> None:
        """Refuse (recorded) a release whose row does not verify against the pinned key (see
        `ingot.release_trust`): `start_instances` calls it before anything is recorded or started."""
        refuse_untrusted(self.store, self.paths, environment, service, release)

    def _spawn(self, runtime: Runtime, request: InstanceRequest) -> InstanceRow:
        row = runtime.start(request)
        try:
            filled = self.store.fill_instance(row)
        except BaseException:
            runtime.stop(row, 5.0)  # it could not be recorded: it must not run unrecorded
            raise
        if not filled:
            runtime.stop(row, 5.0)
            raise OperationFailed(f"instance {row.id} was given up while it started (ingot down, or the agent "
                                  "recovering); it was stopped")
        return row

    def resolve(self, row: InstanceRow) -> InstanceRow:
        """What a `spawning` row turned out to be; see `resolve_instance`."""
        return resolve_instance(self.store, self.runtimes, str(self.paths.root), row)

    async def clear_leftovers(self, key: tuple[str, str] | None = None) -> list[str]:
        """Retire what no operation will finish: instances left `spawning` or `starting`, and deployments
        left `running` (their finish could not be recorded: a full disk, say), of one service or all.

        Only for a caller that holds the service's lock (or the agent as it starts): nothing of it can
        be in progress then.
        """
        cleared = []
        # This machine's only: another machine's instances starting are its agent's operation, in progress.
        for row in self.store.live_instances(*(key or (None, None)), mine=True):
            if row.state in (SPAWNING, "starting"):
                await self.stop_instance(row, 10.0, state="failed")
                cleared.append(row.id)
        if key is None:
            # Checkouts no instance runs from: copied by an operation that was killed before it recorded them.
            used = {r.handle for r in self.store.live_instances(mine=True) if r.runtime == "process"}
            for run_dir in self.paths.runs.iterdir() if self.paths.runs.is_dir() else ():
                if str(run_dir) not in used:
                    self.remove_checkout(run_dir)
        if key is not None:
            for dep in self.store.deployments(*key, limit=20, mine=True):
                if dep.params.get("target") == "kubernetes" or self.store.deployment_outcome(dep.id) != "running":
                    continue
                with self.store.begin() as conn:
                    self.store.add_step(conn, dep.id, "finish", "interrupted", {"outcome": "interrupted"})
                    ledger.append(conn, actor=dep.actor, action=f"{dep.kind}.interrupted", environment=dep.environment,
                                  service=dep.service, subject=dep.id,
                                  payload={"release": dep.to_release,
                                           "note": "found unfinished by the next operation on the service"})
        return cleared

    async def request_template(self, environment: str, service: str, release: ReleaseRow,
                                params: DeployParams) -> InstanceRequest:
        spec = release.spec
        # Secret values are decrypted here, for the instance's environment only: never stored or logged.
        secrets = await asyncio.to_thread(secret_values, self.store, self.paths.keys, release, environment)
        common = InstanceRequest(instance_id="", environment=environment, service=service, release_id=release.id,
                                 project=release.project, state_dir=str(self.paths.root),
                                 env={**release_environment(release), **secrets},
                                 command=tuple(spec.get("command") or ()),
                                 resources=Resources.from_spec(spec.get("resources")),
                                 volumes=volumes.mounts(self.paths, release.project, environment, params.runtime,
                                                        spec.get("volumes") or {}),
                                 worker=spec.get("port") is None)
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
            # Left out of the release at their defaults (see SecuritySpec.release_dump).
            run_as_non_root=bool(security.get("run_as_non_root", True)),
            run_as_user=security.get("run_as_user"),
        )
        port = spec.get("port")
        return replace(common, image=release.artifact_digest, container_port=int(port) if port is not None else None,
                       hardening=hardening)

    def check_context(self, row: InstanceRow) -> CheckContext:
        """What a health command of `row` runs with: its INGOT_* variables and volumes, its checkout as cwd."""
        release = self.store.get_release(row.release_id)
        project = release.project if release is not None else ""
        env = {"INGOT_INSTANCE": row.id, "INGOT_SERVICE": row.service, "INGOT_ENVIRONMENT": row.environment,
               "INGOT_RELEASE": row.release_id, "INGOT_PROJECT": project}
        if row.port:
            env["PORT"] = str(row.port)
        # A process's volumes by their host directory; a container's by where they are mounted inside it
        # (its health command reaches them with `podman exec ${INGOT_CONTAINER} …`).
        declared = (release.spec.get("volumes") or {}) if release is not None else {}
        env.update(volumes.variables(volumes.mounts(self.paths, project, row.environment, row.runtime, declared),
                                     row.runtime))
        if row.runtime == "process":
            if row.pid is not None:
                env["INGOT_INSTANCE_PID"] = str(row.pid)
            return CheckContext(env, row.handle)
        if row.handle:
            env["INGOT_CONTAINER"] = row.handle
        return CheckContext(env)

    async def _wait_healthy(self, dep: Deployment) -> dict[str, Any]:
        pending = [row for row in dep.started if row.state == "starting"]
        verdicts = await dep.control.or_abort(asyncio.gather(*(self.gate(row, dep.params) for row in pending)))
        failed = [(row, v) for row, v in zip(pending, verdicts, strict=True) if not v.healthy]
        if failed:
            row, verdict = failed[0]
            raise StepFailed(f"instance {row.id} did not become healthy: {verdict.reason}",
                             details=await self._log_evidence(dep, row))
        for row in pending:
            self.store.set_instance_state(row.id, "running")
        dep.started = [replace(r, state="running") if r in pending else r for r in dep.started]
        return {"healthy": [{"id": r.id, "seconds": round(v.waited_s, 3)} for r, v in
                            zip(pending, verdicts, strict=True)]}

    async def gate(self, row: InstanceRow, params: DeployParams) -> Any:
        def still_running() -> str | None:
            observed = self.runtimes.of(row).observe(row)
            return None if observed.alive else f"it exited before becoming healthy ({observed.detail})"

        return await wait_healthy(row.host, row.port, params.health, still_running, self.check_context(row))

    async def _route(self, dep: Deployment, step: Step) -> dict[str, Any]:
        weights = dict(step.weights)
        checked = await self._smoke_check(dep, weights.get(dep.release.id, 0))
        for release in weights:
            await dep.router.set_backends(release, self.pool(dep.row.environment, dep.row.service, release))
            dep.pooled.update(r.id for r in dep.started if r.release_id == release and r.state == "running")
        held = await _switch(dep.router, weights, step.seconds)
        live = [release for release, weight in weights.items() if weight > 0]
        # The live release of record changes only when one release takes all the traffic (or none
        # does: scaled to zero); a canary's partial split leaves the stable release of record.
        if len(live) <= 1:
            self._activate(dep, live[0] if live else None)
        dep.routed = dep.routed or weights.get(dep.release.id, 0) > 0
        return {"weights": weights, **({"held": held, "hold": step.seconds} if held is not None else {}),
                **({"checked": checked} if checked else {})}

    async def _smoke_check(self, dep: Deployment, weight: int) -> list[str]:
        """The service's `checks` against the new release's own instances, before a route that gives it more
        traffic or puts fresh instances of it in the pool (the blue-green switch, each canary step, each
        rolling batch). Each result is in the ledger; a failure raises, and the route is not taken.

        Not for a rollback or a recovery: going back to a release that served before must not depend on
        checks written for the release that replaced it. Returns the instances checked."""
        if not dep.params.checks or weight <= 0 or dep.row.kind in ("rollback", "recover"):
            return []
        fresh = [r for r in dep.started if r.release_id == dep.release.id and r.state == "running"
                 and r.id not in dep.checked]
        if not fresh and weight <= dep.checked_weight:
            return []
        rows = fresh or self._passed_gate(dep, dep.release.id)
        if not rows:
            return []
        targets = [checks.Target(r.id, r.host, r.port, r.handle if r.runtime == "process" else None) for r in rows]
        secrets = await asyncio.to_thread(secret_values, self.store, self.paths.keys, dep.release,
                                          dep.row.environment)
        results = await dep.control.or_abort(checks.run_checks(
            checks.parse(dep.params.checks), targets, project=dep.release.project, environment=dep.row.environment,
            service=dep.row.service, release=dep.release.id, secrets=list(secrets.values())))
        with self.store.begin() as conn:
            for result in results:
                ledger.append(conn, actor=dep.row.actor, action=f"{dep.row.kind}.check",
                              environment=dep.row.environment, service=dep.row.service, subject=dep.row.id,
                              payload={"release": dep.release.id, "weight": weight, **result.as_dict()})
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            raise StepFailed(f"check '{failed.check}' failed: {failed.summary}",
                             details=[f"output of check '{failed.check}' ({failed.instance}):",
                                      *[f"  | {line}" for line in failed.output.splitlines()[-15:]]])
        dep.checked.update(r.id for r in rows)
        dep.checked_weight = max(dep.checked_weight, weight)
        return [r.id for r in rows]

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
        row = await asyncio.to_thread(self.resolve, row)  # a row still `spawning` is found by its labels
        await asyncio.to_thread(self.runtimes.of(row).stop, row, timeout)
        self.store.set_instance_state(row.id, state, stopped=True)
        self.leaving.discard(row.id)
        self.release_checkout(row)

    def pool(self, environment: str, service: str, release: str) -> list[tuple[str, int]]:
        """The addresses `release`'s router pool should hold: its running instances, but those on their way out."""
        return [(r.host, r.port) for r in self.store.live_instances(environment, service)
                if r.release_id == release and r.state == "running" and r.id not in self.leaving]

    def release_checkout(self, row: InstanceRow) -> None:
        """Remove a process instance's run directory once no live instance runs from it."""
        if row.runtime != "process" or not row.handle:
            return
        if any(other.handle == row.handle for other in self.store.live_instances() if other.id != row.id):
            return
        self.remove_checkout(Path(row.handle))

    def remove_checkout(self, run_dir: Path | None) -> None:
        # `runs/` in the state directory: where checkouts were before root's moved out of it (see StatePaths.runs).
        places = (self.paths.runs, self.paths.root / "runs")
        if run_dir is not None and run_dir.parent in places and run_dir.exists():
            force_rmtree(run_dir)

    async def _undo(self, dep: Deployment) -> list[str]:
        """After a failure: traffic back to the previous release at once, then retire what this deployment
        started. Once the previous release's instances are gone there is nothing to go back to.

        Returns what could not be undone, in words; every part is tried whatever happens to the others.
        """
        problems: list[str] = []
        kept = {r.id for r in dep.started if r.id in dep.pooled} if dep.keep_pooled else set()
        if dep.routed:
            key = (dep.row.environment, dep.row.service)
            stable = dep.row.from_release
            mine = {r.id for r in dep.started} - kept
            try:
                stable_running = [r for r in self.store.live_instances(*key)
                                  if stable and r.release_id == stable and r.state == "running" and r.id not in mine]
                if not stable_running:
                    return problems
                assert stable is not None
                # A switch alone: the previous release's instances never stopped.
                await dep.router.set_backends(stable, [(r.host, r.port) for r in stable_running])
                if stable != dep.release.id:  # else a failed scale-up: its release keeps serving, without the new
                    await self._switch_back(dep, stable)
                    self._activate(dep, stable)
                    await dep.router.drain(dep.release.id, dep.params.drain_timeout)
                    note = _cut_note(dep.release.id, drain_cut(dep.router, dep.release.id), dep.params.drain_timeout)
                    if "note" in note:
                        problems.append(note["note"])  # not a problem, but said with the outcome
                    await dep.router.remove_release(dep.release.id)
            except Exception as exc:
                log.exception("deployment %s: switching traffic back failed", dep.row.id)
                problems.append(f"switching traffic back failed: {type(exc).__name__}: {exc}")
        leaving = [r for r in dep.started if r.id not in kept]
        stopped = await asyncio.gather(*(self.stop_instance(r, dep.params.stop_timeout) for r in leaving),
                                       return_exceptions=True)
        for row, result in zip(leaving, stopped, strict=True):
            if isinstance(result, BaseException):
                problems.append(f"instance {row.id} could not be stopped: {type(result).__name__}: {result}")
        return problems

    async def _switch_back(self, dep: Deployment, stable: str) -> None:
        """All traffic to `stable`; with strategy.hold, held as the way forward was (no overlap either way)."""
        hold = StrategyOptions.from_mapping(dep.params.strategy_options).hold
        await _switch(dep.router, {stable: 100}, hold if can_hold(dep.router) else None)

    def _serving_text(self, dep: Deployment) -> str:
        current = self.store.current_activation(dep.row.environment, dep.row.service)
        if current and current.release_id:
            return f"still serving: release {current.release_id} on {dep.router.listen_address[0]}:" \
                   f"{dep.router.listen_address[1]}"
        return "nothing was serving this service before, and nothing serves it now"


async def guarded(body: Awaitable[T], guard: Awaitable[Any]) -> T:
    """`body`'s result, unless `guard` raises first: its failure ends `body` and is raised. A guard that
    ends without raising leaves `body` to finish."""
    body_task = asyncio.ensure_future(body)
    guard_task = asyncio.ensure_future(guard)
    try:
        done, _ = await asyncio.wait({body_task, guard_task}, return_when=asyncio.FIRST_COMPLETED)
        if body_task not in done:
            guard_task.result()
            return await body_task
        return body_task.result()
    finally:
        for task in (body_task, guard_task):
            task.cancel()
        await asyncio.gather(body_task, guard_task, return_exceptions=True)


async def _switch(router: Router, weights: dict[str, int], hold: float | None) -> int | None:
    """Set `weights`; with `hold` (strategy.hold), new requests wait meanwhile until the releases left without
    weight are done (at most `hold` seconds). Returns how many requests were held (None: no hold)."""
    if not hold:
        await router.set_weights(weights)
        return None
    await router.hold(hold)  # type: ignore[attr-defined]
    try:
        await router.set_weights(weights)
    finally:
        held = await router.release_hold()  # type: ignore[attr-defined]
    return int(held)


def _cut_note(release: str, cut: int | None, timeout: float) -> dict[str, Any]:
    """How many long-lived connections (WebSocket, SSE) the drain closed at its timeout, said and recorded."""
    if cut is None:
        return {}
    if not cut:
        return {"cut": 0}
    return {"cut": cut, "note": f"release {release}: {cut} long-lived connection{'s' if cut != 1 else ''} "
                                f"closed after drain_timeout {timeout:g}s"}


def _drain_warning(drained: bool, timeout: float) -> dict[str, str]:
    """A drain that ran out of time is said, not silent: its requests are cut when the instances stop."""
    if drained:
        return {}
    return {"warning": f"requests were still in flight after drain_timeout ({timeout:g} s); they are cut "
                       "when the instances stop (raise strategy.drain_timeout for long requests)"}


def release_environment(release: ReleaseRow) -> dict[str, str]:
    """The release's plain variables: its spec's env and its config snapshot's values (secrets are apart)."""
    env = {str(k): str(v) for k, v in release.spec.get("env", {}).items()}
    env.update({str(k): str(v) for k, v in release.config.get("values", {}).items()})
    return env


def _as_failure(exc: BaseException, step: Step) -> IngotError:
    """Any exception as a failure a person can read: ingot's own as they are, a full disk as such, the rest
    (a bug) with its type, its traceback going to the agent's log."""
    if isinstance(exc, IngotError):
        return exc
    if is_disk_full(exc):
        assert isinstance(exc, OSError)
        return disk_full_error(exc, f"step '{step.describe()}'")
    log.error("step '%s' failed", step.describe(), exc_info=exc)
    return OperationFailed(f"unexpected {type(exc).__name__}: {exc}",
                           details=["a bug in ingot (or in what it calls): the agent's log has the traceback"])


def _intent(request: InstanceRequest, runtime: str) -> InstanceRow:
    """The row of an instance about to be spawned: what it will be, without what only spawning tells."""
    return InstanceRow(id=request.instance_id, environment=request.environment, service=request.service,
                       release_id=request.release_id, runtime=runtime, pid=None, proc_start=None,
                       host="127.0.0.1", port=0, log_path=str(request.log_path), started_at=time.time(),
                       stopped_at=None, state=SPAWNING,
                       handle=str(request.artifact_path) if request.artifact_path else None)


def resolve_instance(store: Store, runtimes: Runtimes, state_dir: str, row: InstanceRow) -> InstanceRow:
    """A `spawning` row as what it turned out to be: filled in from the process or container carrying its
    labels, or `failed` if none does (it was never spawned). Other rows are returned as they are.

    Safe against a spawn still in progress in this process: both ends update the row only while it is
    `spawning`, so exactly one of them decides, and the spawner stops what it started if it lost.
    """
    if row.state != SPAWNING:
        return row
    found = runtimes.of(row).find(row, state_dir)
    if found is not None and store.fill_instance(found):
        return found
    if found is None and store.give_up_spawning(row.id):
        return replace(row, state="failed")
    current = store.get_instance(row.id)  # the spawner filled it in meanwhile
    return current if current is not None else replace(row, state="failed")
