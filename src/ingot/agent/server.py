"""The long-running agent: owns instances and routers, applies deployments, survives its own restart.

It listens on a local socket. Instances run in their own process groups, so when the agent dies they
keep serving; when it starts again it adopts the ones that still run, replaces the missing, and
brings each router back on the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingot import __version__, ledger, locks, oneoff, pidfile
from ingot.actor import current_actor
from ingot.agent.cli_answers import CliAnswers
from ingot.agent.healer import Healer
from ingot.agent.protocol import decode, encode
from ingot.agent.selfheal import SelfHealer, heal_interval
from ingot.agent.verification import VerificationWindows
from ingot.artifacts import ArtifactStore
from ingot.config_store import current_secret_value
from ingot.deploy_params import NO_LISTENER, DeployParams, HealthPolicy
from ingot.edge.client import EdgeClient, EdgeRouter
from ingot.edge.home import EdgeHome
from ingot.errors import IngotError, UserInputError
from ingot.executor import Deployment, Executor
from ingot.health import probe
from ingot.httpclients import instance_client
from ingot.machine import service_machine
from ingot.notify import Pending, Spool, deliver, webhook_key
from ingot.paths import StatePaths, private_umask
from ingot.plan import SCALE_BATCH, Plan, StrategyOptions, Target, plan_for, plan_restart, plan_scale, without_traffic
from ingot.rollout_control import RolloutControl
from ingot.routers.base import Router
from ingot.routers.none import NoRouter
from ingot.runtimes import fence, ports
from ingot.runtimes.registry import Runtimes
from ingot.spec.models import NotifySpec
from ingot.state import service_state
from ingot.store import ActivationRow, InstanceRow, ReleaseRow, Store
from ingot.store.db import shown

Key = tuple[str, str]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Something that runs beside the agent for its whole life (the HTTP API of `ingot serve`).
Companion = Callable[["Agent"], Coroutine[Any, Any, None]]
SUPERVISE_INTERVAL = 1.0
# A status report's health verdicts are at most this old: every caller within it (ten open dashboards,
# a watch loop, `ingot status`) shares one probe per instance, started by the first and awaited by all.
STATUS_PROBE_MAX_AGE = 0.5
# A file the agent keeps a signed checkpoint of the ledger in (`ingot serve --checkpoint`; see ingot.checkpoint).
CHECKPOINT_ENV = "INGOT_CHECKPOINT"
CHECKPOINT_INTERVAL = 2.0
# What the edge's certificate manager reports (edge/tls/manager.py kinds) → the ledger's actions.
CERTIFICATE_ACTIONS = {"tls_issued": "certificate.issued", "tls_renewed": "certificate.renewed",
                       "tls_failed": "certificate.failed", "tls_refused": "certificate.refused",
                       "tls_damaged": "certificate.damaged", "acme_account": "certificate.account"}
log = logging.getLogger("ingot.agent")
SAME_RELEASE = ("scale", "restart")  # operations on the live release itself, with its live parameters


class Agent:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.store = Store(paths.root)
        self.runtimes = Runtimes()
        self.artifacts = ArtifactStore(paths.artifacts)
        self.executor = Executor(self.store, self.runtimes, self.artifacts, paths)
        self.routers: dict[Key, Router] = {}
        self.edge = EdgeClient(EdgeHome.default())
        self.locks: dict[Key, asyncio.Lock] = {}
        self.controls: dict[Key, RolloutControl] = {}
        self.windows = VerificationWindows()
        self.actor = current_actor()
        self.healer = Healer(self.store, self.runtimes, self.artifacts, self.executor, self.routers, self.lock,
                             self.windows.is_open)
        # Drift found and repaired on an interval, unasked ($INGOT_HEAL_INTERVAL, `ingot agent --heal-interval`).
        self.self_healer = SelfHealer(self.store, self.healer, self.lock, self.windows.is_open, heal_interval(),
                                      deploy=self.deploy)
        self._stopping = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._certificates_recorded: dict[Key, int] = {}  # the newest edge certificate event in the ledger
        self._deliveries: set[asyncio.Task[bool]] = set()  # webhooks being delivered (ingot.notify)
        self.spool = Spool(paths.root)  # and those not yet final, kept across a stop of the agent
        # Per instance: when its last status probe started, and its verdict (see STATUS_PROBE_MAX_AGE).
        self._probes: dict[str, tuple[float, asyncio.Future[bool | str]]] = {}
        self.status_probes = 0  # probes made for status reports, in `ping`'s answer (for tests and benchmarks)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cli = CliAnswers(paths.root, self.store, trees=self.healer.trees,
                              deploy_unchanged=self._unchanged_from_thread)

    # ---- lifecycle ---------------------------------------------------------------------
    async def run(self, companions: Sequence[Companion] = ()) -> None:
        await self.recover()
        sock = self.paths.agent_socket
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(sock), limit=2**20)
        os.chmod(sock, 0o600)
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        for pending in self.spool.pending():
            log.info("resuming a webhook delivery to %s from attempt %d", pending.facts.get("event"),
                     pending.next_attempt)
            self._start_delivery(pending)
        supervisor = asyncio.create_task(self._supervise())
        healing = asyncio.create_task(self.self_healer.run())
        keeping = asyncio.create_task(self._keep_checkpoint())
        beside = [asyncio.create_task(companion(self)) for companion in companions]
        for task in beside:
            task.add_done_callback(self._companion_ended)
        ledger.record(self.store, actor=self.actor, action="agent.start",
                      payload={"pid": os.getpid(), "version": __version__})
        log.info("agent %s ready on %s (pid %d)", __version__, sock, os.getpid())
        await self._stopping.wait()
        supervisor.cancel()
        healing.cancel()
        keeping.cancel()
        for task in beside:
            task.cancel()
        await asyncio.gather(*beside, return_exceptions=True)
        for key in self.windows.open_keys():
            await self.windows.end(key, "the agent stopped")
        for delivery in list(self._deliveries):
            delivery.cancel()
        self._server.close()
        # The routers live in the edge: they go on serving this agent's instances while it is gone.
        for router in self.routers.values():
            await _detach(router)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()

    def _companion_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping: a companion of the agent failed: %s", task.exception())
        self._stopping.set()

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    async def router_at(self, key: Key, params: DeployParams) -> Router:
        """The service's router if it listens where `params` say, else a new one, started but not adopted.

        A new one is primed with the release that serves now, so that the new address answers at once
        and a failed deploy can drop it while the old router goes on serving.
        """
        router = self.routers.get(key)
        if params.worker:
            # No listener at all: a worker's router only keeps the plan's bookkeeping (see NoRouter).
            return router if isinstance(router, NoRouter) else NoRouter()
        if router is not None and router.listen_address == params.listen and not isinstance(router, NoRouter):
            await router.set_health(params.health.for_router())
            if isinstance(router, EdgeRouter):
                await router.set_clients(params.clients)
                await router.set_routes(params.routes)
            kind = getattr(router, "kind", params.router_kind)
            if kind != params.router_kind:
                host, port = params.listen
                raise UserInputError(
                    f"{key[1]} in {key[0]}: router.kind cannot change from {kind} to {params.router_kind} on the "
                    f"address it serves ({host}:{port}): the two cannot listen on one address at once",
                    details=["change `router.listen` in the same deploy: the new kind starts on the new address, "
                             "traffic moves with the switch, and the old router stops after it (zero downtime);",
                             "or run `ingot down` for the environment first (a gap in service)"])
            return router
        fresh = self._new_router(key, params)
        await fresh.start()
        await fresh.set_health(params.health.for_router())
        current = self.store.current_activation(*key)
        if current is not None and current.release_id:
            await self._refresh_pool(key, current.release_id, fresh)
            await fresh.set_weights({current.release_id: 100})
        return fresh

    def _new_router(self, key: Key, params: DeployParams) -> EdgeRouter:
        host, port = params.listen
        where = "routes" if params.listen == NO_LISTENER else f"{host}:{port}"
        return EdgeRouter(self.edge, router_id=f"{self.paths.root}#{key[0]}/{key[1]}@{where}",
                          owner=str(self.paths.root), name=f"{self.healer.project() or '?'} {key[0]}/{key[1]}",
                          kind=params.router_kind, listen=params.listen, clients=params.clients,
                          routes=params.routes)

    async def adopt_router(self, key: Key, router: Router) -> None:
        """Make `router` the service's router, retiring the one it replaces."""
        previous = self.routers.get(key)
        self.routers[key] = router
        if previous is not None and previous is not router:
            await previous.stop()

    # ---- recovery after a restart -------------------------------------------------------
    async def recover(self) -> None:
        self._close_interrupted_deployments()
        # Instances an interrupted operation was starting (some not even known to run yet): retired.
        await self.executor.clear_leftovers()
        # The operations of an agent that died died with it: their locks go too, so no 'ingot unlock'.
        locks.clear_abandoned(self.store, self.actor)
        # Only this machine's services: another machine's instances are its agent's, alive or not as seen
        # from there (a shared store, README: Running ingot for a team).
        for activation in self.store.active_services(mine=True):
            key = (activation.environment, activation.service)
            try:
                await self._recover_service(key, activation.release_id or "", activation.params)
            except IngotError as exc:
                # One service that cannot come back (its address taken, say) must not keep the others down.
                log.error("could not recover %s/%s: %s", key[0], key[1], exc.message)
                ledger.record(self.store, actor=self.actor, action="agent.recover.fail", environment=key[0],
                              service=key[1], subject=activation.release_id,
                              payload={"error": exc.message, "details": exc.details})

    async def _recover_service(self, key: Key, release_id: str, raw_params: dict[str, Any]) -> None:
        params = DeployParams.from_dict(raw_params)
        router = await self.router_at(key, params)
        await self.adopt_router(key, router)
        # Traffic first goes (or stays) on the live release's instances that still run; only then are the
        # others (a rollout the agent's death interrupted) taken out and stopped.
        serving = [r for r in self.store.live_instances(*key, mine=True)
                   if r.release_id == release_id and r.state == "running"
                   and self.runtimes.of(r).observe(r).alive]
        await router.set_backends(release_id, [(r.host, r.port) for r in serving])
        await router.set_weights({release_id: 100})
        for other in router.weights():
            if other != release_id:
                await router.drain(other, params.drain_timeout)
                await router.remove_release(other)
        adopted, stopped = await self._adopt(key, release_id, params)
        replaced = await self._replace_missing(key, release_id, params, len(adopted))
        log.info("recovered %s/%s: adopted %d, stopped %d, replaced %d", key[0], key[1], len(adopted),
                 len(stopped), replaced)
        ledger.record(
            self.store, actor=self.actor, action="agent.recover", environment=key[0], service=key[1],
            subject=release_id,
            payload={"adopted": [r.id for r in adopted], "stopped": stopped, "replaced": replaced},
        )

    def _close_interrupted_deployments(self) -> None:
        # This machine's only: a deployment another machine's agent runs is running there, not interrupted.
        for dep in self.store.deployments(limit=50, mine=True):
            if self.store.deployment_outcome(dep.id) != "running":
                continue
            if dep.params.get("target") == "kubernetes":
                continue  # applied by the CLI to a cluster, not by the agent: it may well be running now
            with self.store.begin() as conn:
                self.store.add_step(conn, dep.id, "finish", "interrupted", {"outcome": "interrupted"})
                ledger.append(conn, actor=self.actor, action=f"{dep.kind}.interrupted",
                              environment=dep.environment, service=dep.service, subject=dep.id,
                              payload={"release": dep.to_release,
                                       "note": "the agent stopped during this deployment"})

    async def _adopt(self, key: Key, release_id: str, params: DeployParams) -> tuple[list[InstanceRow], list[str]]:
        adopted: list[InstanceRow] = []
        stopped: list[str] = []
        for row in self.store.live_instances(*key, mine=True):
            alive = self.runtimes.of(row).observe(row).alive
            if alive and row.release_id == release_id and row.state == "running":
                adopted.append(row)
                continue
            # Dead ones are stopped too: that removes what a container leaves behind.
            await self.executor.stop_instance(row, params.stop_timeout, state="stopped" if alive else "failed")
            stopped.append(row.id)
        # Rows from before the store knew machines that run here are this machine's: said so in the store, so
        # that another machine's agent starting later does not take their service for its own.
        self.store.claim_instances([r.id for r in adopted if r.machine is None])
        return adopted, stopped

    async def _replace_missing(self, key: Key, release_id: str, params: DeployParams, have: int) -> int:
        missing = params.replicas - have
        if missing <= 0:
            return 0
        release = self.store.get_release(release_id)
        if release is None:
            return 0
        with contextlib.suppress(IngotError):
            await self.deploy(key, release_id, params, kind="recover", send=_discard)
        return missing

    # ---- supervision -------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL)
            self._record_certificate_events()
            for row in self.store.live_instances(mine=True):  # (another machine's are not seen from here)
                if row.state != "running" or self.runtimes.of(row).observe(row).alive:
                    continue
                # Out of the pool at once; replacing it is drift repair's job, which reports it as exited.
                self.store.set_instance_state(row.id, "exited", stopped=True)
                ledger.record(
                    self.store, actor=self.actor, action="instance.exited", environment=row.environment,
                    service=row.service, subject=row.id,
                    payload={"release": row.release_id, "last_log_lines": self.runtimes.of(row).log_tail(row, 10)},
                )
                await self._refresh_pool((row.environment, row.service), row.release_id)

    def _record_certificate_events(self) -> None:
        """Put in the ledger what the edge did for the certificates of this project's hosts (issued, renewed,
        failed...), once each: an event is recorded when it is newer than the newest one recorded already."""
        for key, router in list(self.routers.items()):
            if not isinstance(router, EdgeRouter) or not router.certificate_events:
                continue
            if key not in self._certificates_recorded:
                last = ledger.last_entry(self.store, actions=CERTIFICATE_ACTIONS.values(), environment=key[0],
                                         service=key[1])
                self._certificates_recorded[key] = int(last.payload.get("edge_event", 0)) if last else 0
            for event in router.certificate_events:
                if int(event["id"]) <= self._certificates_recorded[key]:
                    continue
                ledger.record(self.store, actor="edge", environment=key[0], service=key[1], subject=event["host"],
                              action=CERTIFICATE_ACTIONS.get(event["kind"], f"certificate.{event['kind']}"),
                              payload={"host": event["host"], "detail": event["detail"], "edge_event": event["id"]})
                self._certificates_recorded[key] = int(event["id"])

    async def _keep_checkpoint(self) -> None:
        """Keep $INGOT_CHECKPOINT up to date with the ledger: looked at every CHECKPOINT_INTERVAL, rewritten
        when the ledger moved. What cannot be written is logged, and tried again."""
        where = os.environ.get(CHECKPOINT_ENV)
        if not where:
            return
        from ingot import checkpoint

        path = Path(where)
        project = self.healer.project() or self.paths.root.name
        while True:
            try:
                await asyncio.to_thread(checkpoint.keep, self.store, self.paths.keys, project, path)
            except (IngotError, OSError) as exc:
                log.warning("the ledger checkpoint %s could not be written: %s", path, exc)
            await asyncio.sleep(CHECKPOINT_INTERVAL)

    async def _refresh_pool(self, key: Key, release_id: str, router: Router | None = None) -> None:
        router = router or self.routers.get(key)
        if router is None:
            return
        await router.set_backends(release_id, self.executor.pool(*key, release_id))

    # ---- operations --------------------------------------------------------------------
    async def deploy(self, key: Key, release_id: str, params: DeployParams, *, kind: str, send: Send,
                     actor: str | None = None, dry_run: bool = False,
                     rerun_release_command: bool = False, batch: int | None = None) -> dict[str, Any]:
        """Apply the plan that takes `key` to `release_id`.

        `kind` scale and restart act on the live release with its live parameters (`ingot scale`, `ingot
        restart`; see ingot.plan.scale), `batch` instances at a time.

        Returns when the plan is done, or when its verification window opens: the rest (the window,
        then retiring the previous release) goes on in the background, and ends early if another
        operation on the service comes first.
        """
        release = self.store.get_release(release_id)
        if release is None:
            raise UserInputError(f"release {release_id} is not in the store")
        lock = self.lock(key)
        if lock.locked():
            await send({"event": "waiting", "message": f"another operation on {key[1]} in {key[0]} is running"})
        async with lock:
            current = self.store.current_activation(*key)
            params = _effective_params(current, params, kind)
            same_params = current is not None and current.params == params.as_dict()
            window = self.windows.get(key)
            if window is not None and window.release == release_id and same_params and kind != "restart":
                return {"nothing_to_do": True, "verifying": window.as_dict(), "plan": {"steps": []}}
            if not dry_run:
                await self.windows.end(key, f"{kind} of {release_id}")
                await self.executor.clear_leftovers(key)  # what a failed operation could not record or retire
            if kind in SAME_RELEASE:
                plan = self._same_release_plan(key, release_id, params, kind, batch)
            else:
                plan = self._release_plan(key, release, params, kind, rerun_release_command)
            if plan.empty and same_params:
                return {"nothing_to_do": True, "plan": plan.as_dict()}
            if dry_run:
                return {"plan": plan.as_dict()}
            router = await self.router_at(key, params)
            with self.store.begin() as conn:
                row = self.store.create_deployment(
                    conn, environment=key[0], service=key[1], kind=kind,
                    from_release=current.release_id if current else None, to_release=release_id,
                    strategy=plan.strategy, params=params.as_dict(), actor=actor or self.actor,
                )
                scaled = ({"replicas": {"from": DeployParams.from_dict(current.params).replicas,
                                        "to": params.replicas}} if kind == "scale" and current else {})
                ledger.append(conn, actor=row.actor, action=f"{kind}.start", environment=key[0],
                              service=key[1], subject=row.id,
                              payload={"from": row.from_release, "to": release_id, **scaled, "plan": plan.as_dict()})
            await send({"event": "plan", "deployment": row.id, "plan": plan.as_dict()})
            dep = Deployment(row=row, release=release, params=params, router=router)
            if kind in SAME_RELEASE:
                # Its checks passed when it went live: only instances it starts are checked (a scale-down none).
                dep.checked_weight, dep.keep_pooled = 100, kind == "restart"
            log.info("%s %s: %s/%s -> %s (%d steps)", kind, row.id, key[0], key[1], release_id, len(plan.steps))
            answer: dict[str, Any] = {"deployment": row.id, "release": release_id,
                                      "url": params.url}
            try:
                verifying = await self._run_until_verifying(key, dep, plan, send)
            except IngotError:
                if kind == "scale" and current is not None:
                    self._restore_params(key, current)
                raise
            if verifying is not None:
                rest, seconds = verifying
                answer["verifying"] = self.windows.open(key, rest, dep, seconds, self._window_ended).as_dict()
            return answer

    async def deploy_unchanged(self, key: Key, release_id: str, params: DeployParams) -> bool:
        """Whether a deploy of `release_id` with `params` would do nothing now, and nothing would happen on
        the way either (the thin client's no-change deploy, see ingot.deploy_check): the release is live with
        the same parameters, every instance of the service is running and of it, the plan is empty, and no
        operation, verification window or leftover of a failed one is there for `deploy` to end or clear."""
        if self.lock(key).locked() or self.windows.get(key) is not None:
            return False
        if self.store.elsewhere(key[0]):
            return False  # another machine's environment: the full CLI refuses the deploy, naming it
        current = self.store.current_activation(*key)
        if current is None or current.release_id != release_id:
            return False
        params = _effective_params(current, params, "deploy")
        if current.params != params.as_dict():
            return False
        instances = self.store.live_instances(*key)
        if len(instances) != params.replicas or any(r.release_id != release_id or r.state != "running"
                                                    for r in instances):
            return False
        if any(self.store.deployment_outcome(d.id) == "running" for d in self.store.deployments(*key, limit=5)):
            return False
        release = self.store.get_release(release_id)
        return release is not None and self._release_plan(key, release, params, "deploy", False).empty

    def _unchanged_from_thread(self, key: Key, release_id: str, params: DeployParams) -> bool:
        """`deploy_unchanged`, asked from the thread a `cli` request is answered in."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self.deploy_unchanged(key, release_id, params), self._loop).result(30)

    def _release_plan(self, key: Key, release: ReleaseRow, params: DeployParams, kind: str,
                      rerun_release_command: bool) -> Plan:
        """The plan of a deploy, rollback or promote to `release`, with its release_command if it has one to run."""
        return oneoff.with_release_command(self._plan(key, release.id, params, kind), self.store, key[0], release,
                                           rerun=rerun_release_command)

    def _same_release_plan(self, key: Key, release_id: str, params: DeployParams, kind: str,
                           batch: int | None) -> Plan:
        """The plan of a scale or a restart of the live release `release_id` (see ingot.plan.scale)."""
        state = service_state(self.store, *key)
        if state.weight(release_id) < 100:
            raise UserInputError(f"release {release_id} is not the live release of {key[1]} in {key[0]}")
        target = Target(release_id, params.replicas)
        if kind == "scale":
            plan = plan_scale(state, target, batch or SCALE_BATCH)
        else:  # a restart replaces as many at a time as a rolling update of the service would
            plan = plan_restart(state, target, batch or max(1, StrategyOptions.from_mapping(
                params.strategy_options).max_surge))
        return without_traffic(plan) if params.worker else plan

    def _restore_params(self, key: Key, before: ActivationRow) -> None:
        """After a failed scale: the parameters of record back to what they were (its routes recorded the
        new count as it went), so that drift repair does not start what the scale could not."""
        now = self.store.current_activation(*key)
        if now is None or now.params == before.params:
            return
        with self.store.begin() as conn:
            self.store.activate(conn, environment=key[0], service=key[1], release_id=before.release_id,
                                deployment_id=before.deployment_id, params=before.params)

    def _plan(self, key: Key, release_id: str, params: DeployParams, kind: str) -> Plan:
        options = StrategyOptions.from_mapping(params.strategy_options)
        strategy = params.strategy
        if kind == "rollback":
            # Going back is always one switch to a release that served before, not a new canary; and
            # the release left behind is retired at once, not kept warm (no window, no min_ready).
            strategy, options = "blue-green", replace(options, verification=None, min_ready=None)
        return plan_for(strategy, service_state(self.store, *key), Target(release_id, params.replicas), options,
                        worker=params.worker)

    async def _run_until_verifying(self, key: Key, dep: Deployment, plan: Plan,
                                   send: Send) -> tuple[asyncio.Task[None], float] | None:
        """Apply `plan`; return None once done, or once its verification window opens the task running
        the rest of it and the window's seconds."""
        opened: list[float] = []
        window_open = asyncio.Event()

        def open_window(seconds: float) -> None:
            opened.append(seconds)
            window_open.set()

        async def emit(message: dict[str, Any]) -> None:
            if not window_open.is_set():  # the caller has its answer, and may be gone
                await send(message)

        dep.on_verify = open_window
        self.controls[key] = dep.control
        run = asyncio.create_task(self._apply(dep, plan, emit))
        waiting = asyncio.create_task(window_open.wait())
        try:
            await asyncio.wait({run, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not run.done():
            await self.adopt_router(key, dep.router)
            return run, opened[0]
        self.controls.pop(key, None)
        try:
            run.result()
        except BaseException:
            if dep.router is not self.routers.get(key):
                await dep.router.stop()
            raise
        await self.adopt_router(key, dep.router)
        return None

    async def _apply(self, dep: Deployment, plan: Plan, emit: Send) -> None:
        if plan.empty:
            self._activate_params(dep)
            return
        await self.executor.apply(dep, plan, emit)
        # A plan with no route (fewer replicas: only drains and stops) records its parameters here, or drift
        # repair would start again what it stopped.
        current = self.store.current_activation(dep.row.environment, dep.row.service)
        if current is not None and current.release_id == dep.release.id and current.params != dep.params.as_dict():
            with self.store.begin() as conn:
                self.store.activate(conn, environment=dep.row.environment, service=dep.row.service,
                                    release_id=dep.release.id, deployment_id=dep.row.id, params=dep.params.as_dict())

    def _window_ended(self, key: Key, dep: Deployment) -> None:
        if self.controls.get(key) is dep.control:
            del self.controls[key]

    def _activate_params(self, dep: Deployment) -> None:
        with self.store.begin() as conn:
            self.store.activate(conn, environment=dep.row.environment, service=dep.row.service,
                                release_id=dep.release.id, deployment_id=dep.row.id,
                                params=dep.params.as_dict())
        self.executor.finish(dep, "succeeded", {"steps": 0, "note": "deployment parameters recorded"})

    def notify(self, environment: str, service: str, facts: dict[str, Any],
               entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Deliver a finished operation's notification to `entries` (spec `notify`) in the background:
        answered at once (once spooled, so a stop of the agent does not drop it), each attempt recorded."""
        specs = [NotifySpec.model_validate(e) for e in entries]
        actor = str(facts.get("actor") or self.actor)
        for spec in specs:
            self._start_delivery(self.spool.add(environment, service, actor, spec, facts))
        return {"queued": len(specs)}

    def _start_delivery(self, pending: Pending) -> None:
        task = asyncio.create_task(self._deliver(pending))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, pending: Pending) -> bool:
        environment, facts = pending.environment, pending.facts

        def secret_value(name: str) -> str:
            return current_secret_value(self.store, self.paths.keys, environment, name)

        def record(payload: dict[str, Any]) -> None:
            try:
                ledger.record(self.store, actor=pending.actor, action="notify.delivery", environment=environment,
                              service=pending.service, subject=facts.get("deployment") or facts.get("release"),
                              payload=payload)
            except Exception:
                log.exception("a webhook delivery could not be recorded")

        delivered = await deliver(pending.entry, facts, webhook_key(self.paths.keys), secret_value, record,
                                  first_attempt=pending.next_attempt,
                                  attempted=lambda attempt: self.spool.advance(pending, attempt + 1))
        # Cancelled (the agent stopping) never gets here: the spooled delivery resumes at the next start.
        self.spool.done(pending)
        return delivered

    def control(self, environment: str, service: str | None, action: str, actor: str) -> dict[str, Any]:
        """Pause, resume (or promote a manual step) or abort the rollouts in progress in an environment."""
        targets = {k: c for k, c in self.controls.items() if k[0] == environment and service in (None, k[1])}
        if not targets:
            where = f"{service} in {environment}" if service else environment
            raise UserInputError(f"no rollout is in progress for {where}")
        for (env, svc), control in targets.items():
            getattr(control, action)(actor)
            ledger.record(self.store, actor=actor, action=f"rollout.{action}", environment=env, service=svc)
        return {"services": sorted(k[1] for k in targets), "action": action}

    async def down(self, environment: str | None, actor: str) -> dict[str, Any]:
        stopped: list[str] = []
        for activation in self.store.active_services(mine=True):
            key = (activation.environment, activation.service)
            if environment and key[0] != environment:
                continue
            async with self.lock(key):
                await self.windows.end(key, "down")
                router = self.routers.pop(key, None)
                if router is not None:
                    await router.stop()
                rows = self.store.live_instances(*key)
                # At once: nothing orders them, and a fleet's hundreds one after the other took minutes.
                await asyncio.gather(*(self.executor.stop_instance(
                    row, DeployParams.from_dict(activation.params).stop_timeout) for row in rows))
                stopped.extend(row.id for row in rows)
                with self.store.begin() as conn:
                    self.store.activate(conn, environment=key[0], service=key[1], release_id=None,
                                        deployment_id=None, params=activation.params)
                    ledger.append(conn, actor=actor, action="down", environment=key[0], service=key[1],
                                  subject=activation.release_id, payload={"stopped": stopped})
        # Instances that no environment claims (left by a crash) are stopped too: nothing is left running.
        for row in self.store.live_instances(mine=True):
            if environment and row.environment != environment:
                continue
            await self.executor.stop_instance(row, 5.0)
            stopped.append(row.id)
        remaining = self.store.active_services(mine=True)  # other machines' services are not this agent's to keep
        if not remaining:
            self._stopping.set()
        return {"stopped": stopped, "agent_stopping": not remaining}

    async def status(self) -> dict[str, Any]:
        self._record_certificate_events()  # what `ingot status` says of a certificate, the ledger has too
        services = []
        activations = self.store.active_services()
        every = [(DeployParams.from_dict(a.params), self.store.live_instances(a.environment, a.service))
                 for a in activations]
        # Every instance of every service probed at once: a fleet's 50 services one after the other took 10 s.
        verdicts = iter(await asyncio.gather(*(self._health_of(row, params.health)
                                               for params, rows in every for row in rows)))
        for activation, (params, rows) in zip(activations, every, strict=True):
            key = (activation.environment, activation.service)
            router = self.routers.get(key)
            health = [next(verdicts) for _row in rows]
            instances = [
                {"id": row.id, "release": row.release_id, "pid": row.pid, "port": row.port, "state": state,
                 "health": verdict, "started_at": row.started_at, "runtime": row.runtime, "machine": row.machine,
                 "user": fence.user_of(row.pid)
                 if row.runtime == "process" and self.store.on_this_machine(row.machine) else None}
                for row, (state, verdict) in zip(rows, health, strict=True)
            ]
            window = self.windows.get(key)
            services.append({
                "environment": key[0], "service": key[1], "release": activation.release_id,
                "machine": service_machine(activation, rows),
                "verifying": window.as_dict() if window else None,
                "self_heal": self.self_healer.describe(activation),
                "url": params.url, "worker": params.worker, "instances": instances,
                "routes": await self._routes_of(key, params),
                "router": {"listening": router is not None and not params.worker,
                           "weights": router.weights() if router else {},
                           "backends": router.backend_health() if router else {},
                           "stats": {k: v.as_dict() for k, v in router.stats().items()} if router else {}},
            })
        return {"agent": {"pid": os.getpid(), "version": __version__, "isolation": fence.isolation()},
                "services": services}

    async def _routes_of(self, key: Key, params: DeployParams) -> list[dict[str, Any]]:
        """The service's routes with their certificate's state as the edge knows it."""
        if not params.routes:
            return []
        states: dict[tuple[str, str], dict[str, Any]] = {}
        with contextlib.suppress(IngotError, OSError, ValueError):
            router = self.routers.get(key)
            for listed in (await self.edge.call("list"))["routes"]:
                if isinstance(router, EdgeRouter) and listed["id"] == router.id:
                    states = {(r["host"], r["path"]): r for r in listed.get("routes", [])}
        # `acme`: a `tls: auto` host's state at the edge (state, not_after, last_error, next_attempt).
        return [{"url": f"{'http' if r.tls == 'off' else 'https'}://{r.host}{r.path}", "tls": r.tls,
                 "certificate": states.get((r.host, r.path), {}).get("certificate", "unknown"),
                 "acme": states.get((r.host, r.path), {}).get("acme")} for r in params.routes]

    async def _health_of(self, row: InstanceRow, policy: HealthPolicy) -> tuple[str, str]:
        """The instance's state (observed now) and a live probe of its health path at most
        STATUS_PROBE_MAX_AGE old, as evidence for `ingot status`. Another machine's instance is not observed
        from here (its pid is that machine's): its recorded state is what is known."""
        if not self.store.on_this_machine(row.machine):
            return row.state, f"not observed (on machine {row.machine})"
        if not self.runtimes.of(row).observe(row).alive:
            return "exited", "not running"
        now = asyncio.get_running_loop().time()
        known = self._probes.get(row.id)
        if known is None or now - known[0] > STATUS_PROBE_MAX_AGE:
            for other, (started, _verdict) in list(self._probes.items()):  # retired instances' go too
                if now - started > STATUS_PROBE_MAX_AGE:
                    del self._probes[other]
            known = (now, asyncio.ensure_future(self._probe_health(row, policy)))
            self._probes[row.id] = known
        # Shielded: one caller going away must not cancel the probe the others wait for.
        return row.state, ("healthy" if (verdict := await asyncio.shield(known[1])) is True else str(verdict))

    async def _probe_health(self, row: InstanceRow, policy: HealthPolicy) -> bool | str:
        self.status_probes += 1
        # Plain HTTP to the instance: no TLS, so no CA bundle to load (that costs 3-400 ms a client here).
        async with instance_client() as client:
            result = await probe(client, row.host, row.port, replace(policy, timeout=min(policy.timeout, 2.0)),
                                 self.executor.check_context(row))
        return True if result.ok else f"unhealthy: {result.detail}"

    # ---- protocol ----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(message: dict[str, Any]) -> None:
            # A caller that went away (Ctrl-C and detach) must not stop its operation: uvloop raises
            # RuntimeError on a closed transport where asyncio's own loop raises ConnectionError.
            if writer.is_closing():
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(encode(message))
                await writer.drain()

        try:
            line = await reader.readline()
            if not line:
                return
            request = decode(line)
            result = await self._dispatch(request, send)
            await send({"done": True, "ok": True, **result})
        except IngotError as exc:
            log.warning("%s", exc.message)
            await send({"done": True, "ok": False, "error": exc.message, "details": exc.details,
                        "exit_code": exc.exit_code})
        except Exception as exc:  # the agent must outlive any one bad request
            log.exception("request failed")
            await send({"done": True, "ok": False, "error": f"agent error: {type(exc).__name__}: {exc}",
                        "details": [], "exit_code": 1})
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.close()

    async def _dispatch(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "version": __version__, "state": str(self.paths.root),
                    "database": shown(self.store.url) if self.store.url else None,  # (None: SQLite)
                    "heal_interval": self.self_healer.interval, "status_probes": self.status_probes,
                    "cli_answers": self.cli.served, "deploy_answers": self.cli.deploys_served,
                    "deploy_context_hashes": self.cli.deploys.contexts.full_hashes}
        if op == "status":
            return await self.status()
        if op == "cli":
            # `ingot status`, `history`, `logs` and a no-change `deploy` for the thin client (ingot.cli.fast); in a
            # thread, as the operations are synchronous (and `status` asks this agent over its socket, as the CLI does).
            return await asyncio.to_thread(self.cli.answer, request)
        if op == "deploy":
            key = (str(request["environment"]), str(request["service"]))
            params = DeployParams.from_dict(request["params"])
            # Before any instance of this or another service of the spec starts: their routers' ports stay theirs.
            ports.reserve([params.listen[1], *(int(p) for p in request.get("reserve_ports") or [])])
            # The environment's lock is the agent's from here until the operation ends, caller or not.
            with locks.carry(self.store, key[0], request.get("lock"), str(request.get("actor") or self.actor)):
                return await self.deploy(key, str(request["release"]), params,
                                         kind=str(request.get("kind", "deploy")), send=send,
                                         actor=request.get("actor"), dry_run=bool(request.get("dry_run")),
                                         rerun_release_command=bool(request.get("rerun_release_command")),
                                         batch=int(request["batch"]) if request.get("batch") else None)
        if op == "notify":
            return self.notify(str(request["environment"]), str(request["service"]), dict(request["facts"]),
                               list(request.get("entries") or []))
        if op == "control":
            return self.control(str(request["environment"]), request.get("service"), str(request["action"]),
                                str(request.get("actor") or self.actor))
        if op == "drift":
            findings = await self.healer.detect(request.get("environment"))
            return {"findings": [f.as_dict() for f in findings]}
        if op == "reconcile":
            actor = str(request.get("actor") or self.actor)
            report = await self.healer.reconcile(request.get("environment"), actor, send)
            return report.as_dict()
        if op == "down":
            return await self.down(request.get("environment"), str(request.get("actor") or self.actor))
        if op == "shutdown":
            self._stopping.set()
            return {"stopping": True}
        raise UserInputError(f"unknown agent operation {op!r}")


async def _detach(router: Router) -> None:
    detach = getattr(router, "detach", None)
    if detach is not None:
        await detach()


async def _discard(_message: dict[str, Any]) -> None:
    return None


def run_agent(paths: StatePaths, companions: Sequence[Companion] = ()) -> None:
    private_umask()  # started by systemd too, not only by the CLI (whose umask it would inherit)
    paths.secure()
    with pidfile.holding(paths.agent_pid, f"an agent for {paths.root}"):
        from ingot.routers.builtin import install_fast_loop

        install_fast_loop()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Every health probe would be a line; the gate's verdicts are in the ledger instead.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        asyncio.run(Agent(paths).run(companions))


def supervised_main(args: list[str]) -> int:
    """The agent as `ingot.supervision` runs it: `--state DIR [--pin FILE]`; the exit code tells the supervisor
    what to do."""
    import sys

    pin = Path(args[args.index("--pin") + 1]) if "--pin" in args else None
    paths = StatePaths(Path(args[args.index("--state") + 1]).resolve(), pin=pin)
    try:
        run_agent(paths)
    except IngotError as exc:
        print(f"error: {exc.message}", *exc.details, sep="\n  ", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def _effective_params(current: ActivationRow | None, params: DeployParams, kind: str) -> DeployParams:
    """The parameters an operation applies: a scale outlives deploys while the spec's replicas are unchanged."""
    if kind in SAME_RELEASE:
        return params
    return params.keeping_scale(DeployParams.from_dict(current.params) if current else None)
