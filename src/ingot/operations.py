"""The service functions behind every command. The CLI and the HTTP API are thin layers over these."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingot import build_release, checkpoint, checks, config_ops, config_store, hooks, ledger, locks, oneoff
from ingot.actor import current_actor
from ingot.agent.client import (
    AgentClient,
    AgentUnavailable,
    agent_pid,
    ensure_agent,
    running_agent_pid,
    wait_for_exit,
)
from ingot.artifacts import ArtifactCorrupt
from ingot.deploy_params import NO_LISTENER, DeployParams, HealthPolicy
from ingot.edge.front import Route
from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.executor import Executor, resolve_instance
from ingot.machine import refuse_if_elsewhere, service_machine
from ingot.paths import StatePaths
from ingot.plan import StrategyOptions, Target, plan_for
from ingot.project import Project
from ingot.releases import verify_release
from ingot.retention import ReleaseInfo, decide
from ingot.routers.base import ClientPolicy
from ingot.runtimes import fence
from ingot.runtimes.process import labelled_processes, terminate_group
from ingot.runtimes.registry import Runtimes
from ingot.signing import trusted_key
from ingot.spec import SecuritySpec, ServiceSpec
from ingot.spec.models import RouteFiles, RouteSpec
from ingot.state import service_state
from ingot.store import ReleaseRow, Store
from ingot.store.db import StoreDamaged
from ingot.supervision import stop_supervisor

OnEvent = Callable[[dict[str, Any]], None]
OnOutput = Callable[[str], None]
log = logging.getLogger("ingot")
# Services one `ingot deploy` hands to the agent at once: each spends most of its deploy waiting (health
# gates, drains), so a fleet goes in about the time of its slowest few, not of all of them in a row.
DEPLOY_CONCURRENCY = 16
DEPLOY_CONCURRENCY_ENV = "INGOT_DEPLOY_CONCURRENCY"


def deploy_params(service: ServiceSpec, *, self_heal: bool = True, root: Path | None = None) -> DeployParams:
    """`root`: the spec's directory, which route certificate files are relative to."""
    health = service.health
    return DeployParams(
        replicas=service.replicas,
        health=HealthPolicy(path=health.path, interval=health.interval, timeout=health.timeout,
                            healthy_threshold=health.healthy_threshold, deadline=health.deadline,
                            unhealthy_threshold=health.unhealthy_threshold,
                            command=tuple(health.command) if health.command is not None else None,
                            http=not service.worker),
        listen=service.dedicated_listen or NO_LISTENER,
        worker=service.worker,
        routes=tuple(_route(r, root) for r in service.routes),
        router_kind=service.router.kind,
        strategy=service.strategy.type,
        drain_timeout=service.strategy.drain_timeout,
        stop_timeout=service.stop_timeout,
        runtime=service.runtime,
        strategy_options=service.strategy.model_dump(mode="json"),
        self_heal=self_heal,
        clients=ClientPolicy(head_timeout=service.router.head_timeout, min_body_rate=service.router.min_body_rate,
                             max_connections=service.router.max_connections,
                             trusted_proxies=tuple(service.router.trusted_proxies),
                             release_header=service.router.release_header),
        checks=tuple(c.model_dump(mode="json", exclude_defaults=True) for c in service.checks),
    )


def _route(spec: RouteSpec, root: Path | None) -> Route:
    if isinstance(spec.tls, RouteFiles):
        base = root or Path.cwd()
        return Route(host=spec.host, path=spec.path, tls="files", cert=str((base / spec.tls.cert).resolve()),
                     key=str((base / spec.tls.key).resolve()), redirect=spec.redirects, hsts=spec.hsts)
    return Route(host=spec.host, path=spec.path, tls=spec.tls, redirect=spec.redirects, hsts=spec.hsts)


def on_cluster(project: Project, environment: str | None) -> bool:
    """Whether the environment runs on Kubernetes (`target: {kind: kubernetes}`): `ingot.kube` serves it."""
    env_spec = project.spec.environments.get(environment) if environment else None
    return env_spec is not None and env_spec.target is not None


def _clusters(project: Project, environment: str | None) -> list[str]:
    """The Kubernetes environments a command for `environment` (None: all) covers."""
    return [e for e in ([environment] if environment else project.spec.environment_names) if on_cluster(project, e)]


def check_supported(project: Project, environment: str, name: str, service: ServiceSpec) -> None:
    where = f"{project.spec.path.name}: environments.{environment} / services.{name}"
    if service.runtime == "kubernetes":
        raise UserInputError(f"{where}: runtime 'kubernetes' is not available yet; use 'process' or 'docker'")


# ---- deploy and rollback ----------------------------------------------------------------
@dataclass(frozen=True)
class DeployOutcome:
    service: str
    release: str
    release_created: bool
    nothing_changed: bool
    url: str
    deployment: str | None
    verifying: dict[str, Any] | None = None  # the verification window left open in the background

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class HandedOver(KeyboardInterrupt):
    """Interrupted (Ctrl-C, SIGINT) while the agent runs an operation this command handed to it.

    The operation goes on in the agent, which holds the environment's lock until it ends; the caller
    decides whether to leave it (detach) or to abort it (`abort_handed_over`).
    """

    def __init__(self, kind: str, environment: str, service: str, release: str, previous: str | None,
                 lock: locks.LockInfo, deployment: str | None) -> None:
        super().__init__(f"interrupted during the {kind} of {service} in {environment}")
        self.kind, self.environment, self.service, self.release = kind, environment, service, release
        self.previous, self.lock, self.deployment = previous, lock, deployment
        self.not_started: list[str] = []  # services of the same command that were not handed over
        self.others: list[HandedOver] = []  # the other services the same command had handed over (in parallel)

    def describe(self) -> str:
        also = "".join(f", and of {o.service} to release {o.release}" for o in self.others)
        return f"the {self.kind} of {self.service} to release {self.release}{also} in {self.environment}"


def deploy(project: Project, environment: str, names: list[str], *, on_event: OnEvent | None = None,
           on_output: OnOutput | None = None, commit: str | None = None,
           irreversible: bool = False) -> list[DeployOutcome]:
    """Build, release and deploy; `commit` goes into new releases (default: the spec's work tree's HEAD).
    `irreversible` marks the releases deployed as not safe to roll back past (recorded in the ledger)."""
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        emit_cluster = on_event or (lambda _e: None)
        return list(kube.deploy(project, environment, names, on_event=on_event, on_output=on_output, commit=commit,
                                through=_cluster_hooks(project, environment, emit_cluster),
                                irreversible=irreversible))
    emit = on_event or (lambda _e: None)
    refuse_if_elsewhere(project.store, environment, "deploy")  # before anything is built or started
    for name in names:
        service = project.spec.service_for(environment, name)
        check_supported(project, environment, name, service)
        config_ops.release_config(project, environment, name, service)  # a missing key: refused before building
    _announce_pin(project, emit)
    commit = commit or project.git_commit()
    outcomes = []
    ensure_agent(project.paths)  # an agent starting clears the lock of one that died (see ingot.locks)
    with locks.hold(project.store, environment, "deploy", current_actor()) as lock:
        # Again under the lock: another machine may have deployed the environment since the first check.
        refuse_if_elsewhere(project.store, environment, "deploy")
        # Every service is built and released first: one that cannot be is refused before anything changes.
        built: list[tuple[str, ReleaseRow, bool]] = []
        for name in names:
            emit({"event": "build", "service": name})
            artifact = build_release.build(project, environment, name, on_output)
            emit({"event": "built", "service": name, "digest": artifact.digest, "reused": artifact.reused,
                  "replaced_corrupt": list(artifact.replaced_corrupt)})
            row, created = build_release.release(project, environment, name, artifact, commit)
            emit({"event": "release", "service": name, "release": row.id, "created": created})
            if irreversible:
                oneoff.mark_irreversible(project.store, current_actor(), environment, row)
            built.append((name, row, created))
        if len(built) == 1:
            name, row, created = built[0]
            outcomes.append(_hooked(project, environment, name, row, created, "deploy", emit, lock))
        else:
            outcomes = _in_parallel(project, environment, built, emit, lock)
    return outcomes


def _cluster_hooks(project: Project, environment: str, emit: OnEvent) -> Any:
    """How a Kubernetes environment's rollouts run between the service's hooks, then notify (`_hooked`)."""
    _agent_for_webhooks(project, environment)

    def through(name: str, row: ReleaseRow, created: bool, kind: str, run: Callable[[], DeployOutcome]
                ) -> DeployOutcome:
        held = locks.current(project.store, environment)
        assert held is not None  # the cluster operation holds the environment's lock while it runs this
        return _hooked(project, environment, name, row, created, kind, emit, held, run=run)

    return through


def _agent_for_webhooks(project: Project, environment: str) -> None:
    """A cluster environment needs no agent, except to deliver its webhooks in the background, as for any
    target; one that cannot start never stops the deploy (hooks.notify records the notification missed)."""
    if not project.spec.notify_for(environment):
        return
    try:
        ensure_agent(project.paths)
    except OperationFailed as exc:
        log.warning("no agent to deliver the webhooks of %s: %s", environment, exc.message)


def _live_release_id(project: Project, environment: str, name: str) -> str | None:
    """The release that serves now, as the store knows it: a cluster's is its last successful rollout."""
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        history = kube.deployed_history(project, environment, name)
        return history[-1] if history else None
    current = project.store.current_activation(environment, name)
    return current.release_id if current else None


def deploy_concurrency() -> int:
    """How many services one deploy hands to the agent at once ($INGOT_DEPLOY_CONCURRENCY, default
    DEPLOY_CONCURRENCY); at least 1."""
    given = os.environ.get(DEPLOY_CONCURRENCY_ENV, "")
    return max(1, int(given)) if given.isdigit() else DEPLOY_CONCURRENCY


def _in_parallel(project: Project, environment: str, built: list[tuple[str, ReleaseRow, bool]], emit: OnEvent,
                 lock: locks.LockInfo) -> list[DeployOutcome]:
    """Deploy several services at once, at most `deploy_concurrency()` in the agent at a time (each one its
    own deployment there, with its own ledger entries, under the one environment lock this command holds).

    A failure is the failing service's alone: the others go on, and the command then fails naming every
    service that failed (with why) and those that are live. Ctrl-C hands the services in flight over to
    the agent (`HandedOver`, naming them all) and starts no more."""
    printing, books = threading.Lock(), threading.Lock()
    queue = list(built)
    flying: dict[str, ReleaseRow] = {}
    results: dict[str, DeployOutcome | IngotError] = {}
    stopping = threading.Event()
    previous = {name: current.release_id if (current := project.store.current_activation(environment, name))
                else None for name, _row, _created in built}

    def said(event: dict[str, Any]) -> None:
        with printing:  # one event at a time, whole, whichever service it is from
            emit(event)

    def work() -> None:
        while not stopping.is_set():
            with books:
                if not queue:
                    return
                name, row, created = queue.pop(0)
                flying[name] = row
            try:
                result: DeployOutcome | IngotError = _hooked(project, environment, name, row, created, "deploy",
                                                             said, lock)
            except IngotError as exc:
                result = exc
            except Exception as exc:  # a bug: this service's failure, not the others'
                log.exception("deploying %s failed", name)
                result = OperationFailed(f"unexpected {type(exc).__name__}: {exc}")
            with books:
                results[name] = result
                del flying[name]

    workers = [threading.Thread(target=work, name=f"deploy-{i}", daemon=True)
               for i in range(min(deploy_concurrency(), len(built)))]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        stopping.set()
        with books:
            handed = [HandedOver("deploy", environment, name, row.id, previous[name], lock, None)
                      for name, row in flying.items()]
            rest = [name for name, _row, _created in queue]
        if not handed:
            raise
        handed[0].others, handed[0].not_started = handed[1:], rest
        raise handed[0] from None
    failed = [(name, r) for name, r in results.items() if isinstance(r, IngotError)]
    if failed:
        live = [name for name, _row, _created in built if isinstance(results.get(name), DeployOutcome)]
        error = UserInputError if all(isinstance(r, UserInputError) for _n, r in failed) else OperationFailed
        details = [line for name, r in failed for line in (f"{name}: {r.message}", *(f"  {d}" for d in r.details))]
        raise error(f"deploy of {len(failed)} of {len(built)} services failed: {', '.join(n for n, _r in failed)}",
                    details=[*details, f"deployed: {', '.join(live)}" if live else "no service was deployed"])
    return [result for name, _row, _created in built if isinstance(result := results[name], DeployOutcome)]


def _announce_pin(project: Project, emit: OnEvent) -> None:
    """A signing key that does not match the pin is refused before anything is built; a missing pin is
    written, and said (it belongs in git, beside the spec)."""
    written = build_release.check_pin(project)
    if written is not None:
        emit({"event": "pinned", "path": str(written)})


@contextmanager
def _rest_not_started(rest: list[str]) -> Iterator[None]:
    try:
        yield
    except HandedOver as handed:
        handed.not_started = rest
        raise


def _hooked(project: Project, environment: str, name: str, row: ReleaseRow, created: bool, kind: str,
            emit: OnEvent, lock: locks.LockInfo, rerun_release_command: bool = False,
            run: Callable[[], DeployOutcome] | None = None) -> DeployOutcome:
    """`_apply` (or `run`: a Kubernetes target's rollout) between the service's hooks (ingot.hooks), then
    its notification (spec `notify`).

    A failing pre_deploy (deploy and promote; not a rollback, the way back) stops the operation before
    anything starts."""
    spec = project.spec.service_for(environment, name).hooks
    actor = current_actor()
    previous = _live_release_id(project, environment, name)
    apply = run or (lambda: _apply(project, environment, name, row, created, kind, emit, lock, rerun_release_command))

    def after(which: str, outcome: str, deployment: str | None, error: str | None, url: str | None) -> None:
        try:
            hooks.run_hook(project, environment, name, spec, which, release=row, actor=actor, outcome=outcome)
        except Exception:  # recorded where it could be; a later hook never changes the outcome
            log.exception("hook %s of %s failed to run", which, name)
        hooks.notify(project, environment, name, kind=kind, outcome=outcome, release=row, actor=actor,
                     previous=previous, deployment=deployment, error=error, url=url)

    if kind != "rollback":
        done = hooks.run_hook(project, environment, name, spec, "pre_deploy", release=row, actor=actor,
                              outcome="pending")
        if done is not None and not done.ok:
            message = (f"{kind} of {name} to {row.id} stopped before it started: its pre_deploy hook "
                       f"{done.describe(spec.timeout)}")
            hooks.notify(project, environment, name, kind=kind, outcome="failed", release=row, actor=actor,
                         previous=previous, error=message)
            serving = f"still serving: release {previous}" if previous else "nothing was serving it, nor is now"
            raise OperationFailed(message, details=[*[f"  | {line}" for line in done.output.splitlines()[-15:]],
                                                    "nothing was started", serving])
    try:
        outcome = apply()
    except IngotError as exc:
        deployment = next((d.id for d in project.store.deployments(environment, name, limit=1)
                           if d.to_release == row.id), None)
        after("on_failure", "failed", deployment, exc.message, None)
        if kind == "rollback":
            with contextlib.suppress(Exception):
                hooks.run_hook(project, environment, name, spec, "on_rollback", release=row, actor=actor,
                               outcome="failed")
        raise
    if not outcome.nothing_changed:
        after("on_rollback" if kind == "rollback" else "post_deploy", "succeeded", outcome.deployment, None,
              outcome.url)
    return outcome


def _apply(project: Project, environment: str, name: str, row: ReleaseRow, created: bool, kind: str,
           emit: OnEvent, lock: locks.LockInfo, rerun_release_command: bool = False) -> DeployOutcome:
    if on_cluster(project, environment):  # a promotion to a cluster
        from ingot.kube import operations as kube

        cluster = kube.require_target(project, environment)
        api = kube.open_cluster(cluster)
        api.ensure_namespace({})
        outcome: DeployOutcome = kube.roll(project, environment, name, row, created, kind, api, emit,
                                           rerun_release_command=rerun_release_command)
        return outcome
    env_spec = project.spec.environments.get(environment)
    params = deploy_params(project.spec.service_for(environment, name), self_heal=not env_spec or env_spec.self_heal,
                           root=project.spec.root_dir)
    return _in_agent(project, environment, name, row.id, kind, params, emit, lock, created,
                     rerun_release_command=rerun_release_command)


def listen_ports(project: Project) -> list[int]:
    """Every port a service of the spec has a listener of its own on, in any environment."""
    spec = project.spec
    found = {listen[1] for env in spec.environment_names for name in spec.services
             if (listen := spec.service_for(env, name).dedicated_listen) is not None}
    return sorted(found)


def _in_agent(project: Project, environment: str, name: str, release: str, kind: str, params: DeployParams,
              emit: OnEvent, lock: locks.LockInfo, created: bool = False, **request: Any) -> DeployOutcome:
    """Hand the operation to the agent (with the environment's lock) and follow it to its end."""
    client = ensure_agent(project.paths)
    current = project.store.current_activation(environment, name)
    deployment: list[str] = []

    def forward(event: dict[str, Any]) -> None:
        if event.get("event") == "plan":
            deployment.append(str(event.get("deployment")))
        emit({**event, "service": name})

    try:
        result = client.call("deploy", on_event=forward, environment=environment, service=name, release=release,
                             kind=kind, params=params.as_dict(), actor=current_actor(), lock=lock.handoff(),
                             reserve_ports=listen_ports(project), **request)
    except KeyboardInterrupt:
        # The request is sent: the agent goes on with it, whatever becomes of this process.
        raise HandedOver(kind, environment, name, release, current.release_id if current else None, lock,
                         deployment[0] if deployment else None) from None
    return DeployOutcome(service=name, release=release, release_created=created,
                         nothing_changed=bool(result.get("nothing_to_do")), url=params.url,
                         deployment=result.get("deployment"), verifying=result.get("verifying"))


# ---- scale and restart: the live release, without a new one ----------------------------------------
def scale(project: Project, environment: str, name: str, replicas: int, *, batch: int | None = None,
          on_event: OnEvent | None = None) -> DeployOutcome:
    """`ingot scale`: the live release to `replicas` instances (fresh ones through the health gate, or the
    excess drained and stopped), recorded as a deployment of kind scale. The count is an override of the
    spec's replicas that later deploys keep while the spec still says what it said (DeployParams.scaled)."""
    if replicas < 1:
        raise UserInputError(f"ingot scale {name} {replicas}: expected 1 or more replicas ('ingot down' stops "
                             "a service)")
    return _same_release(project, environment, name, "scale", on_event, batch,
                         lambda live: live.scaled(replicas))


def restart(project: Project, environment: str, name: str, *, batch: int | None = None,
            on_event: OnEvent | None = None) -> DeployOutcome:
    """`ingot restart`: every instance of the live release replaced by a fresh one, rolling (each batch
    through the health gate before as many old ones drain); its live parameters, not the spec's."""
    return _same_release(project, environment, name, "restart", on_event, batch, lambda live: live)


def _same_release(project: Project, environment: str, name: str, kind: str, on_event: OnEvent | None,
                  batch: int | None, params_of: Callable[[DeployParams], DeployParams]) -> DeployOutcome:
    if on_cluster(project, environment):
        raise UserInputError(f"ingot {kind} does not reach Kubernetes targets yet ({environment}): change "
                             "replicas in the spec and deploy, or use kubectl")
    if batch is not None and batch < 1:
        raise UserInputError(f"--batch {batch}: expected 1 or more instances at a time")
    project.spec.service_for(environment, name)  # an unknown service is refused by name
    refuse_if_elsewhere(project.store, environment, kind)
    _live_params(project, environment, name, kind)  # refused before the agent starts or the lock is taken
    ensure_agent(project.paths)  # an agent starting clears the lock of one that died (see ingot.locks)
    with locks.hold(project.store, environment, kind, current_actor()) as lock:
        refuse_if_elsewhere(project.store, environment, kind)  # again, under the lock (see deploy)
        release, live = _live_params(project, environment, name, kind)  # again: what ran before may have moved
        return _in_agent(project, environment, name, release, kind, params_of(live),
                         on_event or (lambda _e: None), lock, batch=batch)


def _live_params(project: Project, environment: str, name: str, kind: str) -> tuple[str, DeployParams]:
    current = project.store.current_activation(environment, name)
    if current is None or current.release_id is None:
        raise UserInputError(f"{name} has no live release in {environment}: nothing to {kind}; deploy it first "
                             "('ingot deploy')")
    return current.release_id, DeployParams.from_dict(current.params)


def run_command(project: Project, environment: str, name: str, release: str | None, command: list[str], *,
                detach: bool = False, on_line: OnOutput | None = None) -> dict[str, Any]:
    """`ingot run`: `command` in a fresh one-off instance of the live release (or `release`, an id or prefix),
    attached to this process's stdin/stdout/stderr on the process runtime, its output streamed to `on_line`
    on containers; or started and left running (`detach`). Running instances are not touched. Recorded in
    the ledger with its argv and exit code (never its environment)."""
    if not command:
        raise UserInputError("ingot run needs a command after --, e.g. ingot run web -- python manage.py shell")
    project.spec.service_for(environment, name)  # an unknown service is refused by name
    if release:
        row = _one_release(project, name, release)
    else:
        live = _live_release_id(project, environment, name)
        if live is None:
            raise UserInputError(f"{name} is not deployed in {environment}: give --release, or deploy it first")
        found = project.store.get_release(live)
        assert found is not None
        row = found
    config_store.check_secrets_for(row, environment)
    if on_cluster(project, environment):
        return _run_on_cluster(project, environment, name, row, command, detach, on_line)
    runtime = str(row.spec.get("runtime") or "process")
    executor = Executor(project.store, Runtimes(), project.artifacts, project.paths)
    one = asyncio.run(oneoff.prepare(executor, environment, name, row, runtime, command, purpose="run",
                                     attach=not detach))
    actor = current_actor()
    base = {"instance": one.request.instance_id, "release": row.id, "command": command}
    ledger.record(project.store, actor=actor, action=oneoff.STARTED, environment=environment, service=name,
                  subject=row.id, payload={**base, "detach": detach})
    if detach:
        started = oneoff.start_detached(executor, one)
        ledger.record(project.store, actor=actor, action=oneoff.DETACHED, environment=environment, service=name,
                      subject=row.id, payload={**base, "row": asdict(started)})
        return {**base, "detached": True, "log": started.log_path, "exit_code": None}
    try:
        result = oneoff.run(executor, one, timeout=None, on_line=on_line)
    except BaseException as exc:
        ledger.record(project.store, actor=actor, action=oneoff.FINISHED, environment=environment, service=name,
                      subject=row.id, payload={**base, "exit_code": None, "error": f"{type(exc).__name__}: {exc}"})
        raise
    ledger.record(project.store, actor=actor, action=oneoff.FINISHED, environment=environment, service=name,
                  subject=row.id, payload={**base, "exit_code": result.exit_code, "seconds": result.seconds})
    return {**base, "detached": False, "exit_code": result.exit_code, "seconds": result.seconds,
            "log": None if one.request.attach or one.request.terminal else result.log_path}


def _run_on_cluster(project: Project, environment: str, name: str, row: ReleaseRow, command: list[str],
                    detach: bool, on_line: OnOutput | None) -> dict[str, Any]:
    """`ingot run` on a Kubernetes target: a Job of the release's pod (see ingot.kube.operations.run),
    recorded as on this machine; the outcome's `log` says where its output is."""
    from ingot.kube import names as kube_names
    from ingot.kube import operations as kube

    job = kube_names.run_job_name(name, uuid.uuid4().hex[:8])
    actor = current_actor()
    base = {"instance": job, "release": row.id, "command": command, "target": "kubernetes"}
    ledger.record(project.store, actor=actor, action=oneoff.STARTED, environment=environment, service=name,
                  subject=row.id, payload={**base, "detach": detach})
    try:
        ran = kube.run(project, environment, name, row, command, job, detach=detach, on_line=on_line)
    except BaseException as exc:
        ledger.record(project.store, actor=actor, action=oneoff.FINISHED, environment=environment, service=name,
                      subject=row.id, payload={**base, "exit_code": None, "error": f"{type(exc).__name__}: {exc}"})
        raise
    if detach:
        return {**base, "detached": True, "log": f"kubectl logs job/{job}", "exit_code": None}
    ledger.record(project.store, actor=actor, action=oneoff.FINISHED, environment=environment, service=name,
                  subject=row.id, payload={**base, "exit_code": ran["exit_code"], "seconds": ran["seconds"]})
    if ran["exit_code"] is None:  # it never ran: an image that cannot be pulled, a pod that cannot be placed
        raise OperationFailed(f"ingot run of {name} on the cluster failed: Job {job}: {ran['why']}",
                              details=[f"`kubectl describe job {job}` says more; it is kept for its TTL"])
    return {**base, "detached": False, "exit_code": ran["exit_code"], "seconds": ran["seconds"],
            "log": ran["log_path"]}


def _one_release(project: Project, name: str, prefix: str) -> ReleaseRow:
    matches = project.store.find_releases(prefix, service=name)
    if not matches:
        raise UserInputError(f"no release of {name} starts with {prefix!r}; see 'ingot history'")
    if len(matches) > 1:
        raise UserInputError(f"{prefix!r} matches several releases of {name}: "
                             f"{', '.join(r.id for r in matches)}; give more characters")
    return matches[0]


def rollback_target(project: Project, environment: str, name: str, to: str | None) -> ReleaseRow:
    history = [a.release_id for a in project.store.activation_history(environment, name) if a.release_id]
    current = project.store.current_activation(environment, name)
    current_id = current.release_id if current else None
    if to:
        return _one_release(project, name, to)
    earlier = [r for r in history if r != current_id]
    if not earlier:
        raise UserInputError(f"{name} in {environment} has no earlier release to roll back to; see 'ingot history'")
    target = project.store.get_release(earlier[-1])
    assert target is not None
    return target


def rollback(project: Project, environment: str, name: str, to: str | None, *,
             on_event: OnEvent | None = None, force: bool = False,
             rerun_release_command: bool = False) -> DeployOutcome:
    """Back to the previous release (or `to`). Refused across an irreversible release unless `force`; the
    target's release_command is not run again unless `rerun_release_command`."""
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        emit_cluster = on_event or (lambda _e: None)
        outcome: DeployOutcome = kube.rollback(project, environment, name, to, on_event=on_event,
                                               through=_cluster_hooks(project, environment, emit_cluster),
                                               rerun_release_command=rerun_release_command, force=force)
        return outcome
    refuse_if_elsewhere(project.store, environment, "rollback")  # before anything is written
    _announce_pin(project, on_event or (lambda _e: None))
    held = locks.current(project.store, environment)
    if held is None or not held.alive:  # (a running operation is what to report, not what it is changing)
        rollback_target(project, environment, name, to)  # bad input is refused before anything starts
    ensure_agent(project.paths)  # an agent starting clears the lock of one that died (see ingot.locks)
    with locks.hold(project.store, environment, "rollback", current_actor()) as lock:
        refuse_if_elsewhere(project.store, environment, "rollback")  # again, under the lock (see deploy)
        # Chosen under the lock: an operation that was running may have changed what is live.
        target = rollback_target(project, environment, name, to)
        check_reversible(project, environment, name, target, force)
        config_store.check_secrets_for(target, environment)
        if not build_release.artifact_available(project.artifacts, target):
            raise OperationFailed(f"release {target.id} cannot be restored: its artifact "
                                  f"{target.artifact_digest} is no longer in the store")
        return _hooked(project, environment, name, target, False, "rollback", on_event or (lambda _e: None), lock,
                       rerun_release_command)


def check_reversible(project: Project, environment: str, name: str, target: ReleaseRow, force: bool,
                     history: list[str] | None = None) -> None:
    """A rollback to `target` across a release marked irreversible is refused, unless forced (recorded).
    `history`: what went live, where the store's activations do not say it (see oneoff.irreversible_between)."""
    blockers = oneoff.irreversible_between(project.store, environment, target, history)
    if not blockers:
        return
    said = ", ".join(r.id for r in blockers)
    why = [f"release {r.id} is marked irreversible "
           f"({'irreversible: true in its spec' if r.spec.get('irreversible') else 'deployed with --irreversible'})"
           + (f"; its release_command `{' '.join(r.spec['release_command'])}` may have changed what "
              f"{target.id} expects" if r.spec.get("release_command") else "") for r in blockers]
    if not force:
        raise UserInputError(f"rollback of {name} in {environment} to {target.id} refused: it would go back past "
                             f"irreversible release{'s' if len(blockers) > 1 else ''} {said}",
                             details=[*why, "--force rolls back anyway (recorded in the ledger)"])
    ledger.record(project.store, actor=current_actor(), action="rollback.forced", environment=environment,
                  service=name, subject=target.id, payload={"past_irreversible": [r.id for r in blockers]})


def promote(project: Project, source: str, target: str, names: list[str], *, force: bool = False,
            on_event: OnEvent | None = None, rerun_release_command: bool = False) -> list[DeployOutcome]:
    """Deploy to `target` exactly the artifact live in `source`, with `target`'s own spec and config."""
    if source == target:
        raise UserInputError(f"--from and --to are both {source}: promotion goes from one environment to another")
    emit = on_event or (lambda _e: None)
    if not on_cluster(project, target):
        refuse_if_elsewhere(project.store, target, "promote")  # before anything is written
    _announce_pin(project, emit)
    actor = current_actor()
    outcomes = []
    if on_cluster(project, target):
        _agent_for_webhooks(project, target)
    else:
        ensure_agent(project.paths)  # an agent starting clears the lock of one that died (see ingot.locks)
    with locks.hold(project.store, target, "promote", actor) as lock:
        if not on_cluster(project, target):
            refuse_if_elsewhere(project.store, target, "promote")  # again, under the lock (see deploy)
        for index, name in enumerate(names):
            live = _promotable(project, source, name, force)
            built = build_release.Built(live.artifact_digest, True, f"promoted:{live.id}",
                                        f"the artifact of {source}'s release {live.id}")
            row, created = build_release.release(project, target, name, built, live.commit)
            ledger.record(project.store, actor=actor, action="promote", environment=target, service=name,
                          subject=row.id, payload={"from": source, "source_release": live.id,
                                                   "artifact": live.artifact_digest, "forced": force})
            emit({"event": "release", "service": name, "release": row.id, "created": created})
            with _rest_not_started(names[index + 1:]):
                outcomes.append(_hooked(project, target, name, row, created, "promote", emit, lock,
                                        rerun_release_command))
    return outcomes


def _promotable(project: Project, source: str, name: str, force: bool) -> ReleaseRow:
    """The release live in `source`, if its deployment succeeded and every instance is healthy now."""
    current = project.store.current_activation(source, name)
    if current is None or current.release_id is None:
        raise UserInputError(f"{name} is not deployed in {source}: nothing to promote")
    live = project.store.get_release(current.release_id)
    assert live is not None
    problems = []
    outcome = project.store.deployment_outcome(current.deployment_id) if current.deployment_id else "unknown"
    services = status(project, source)["services"]
    service = next((s for s in services if s["service"] == name), None)
    window = (service or {}).get("verifying")
    if window:
        problems.append(f"it is still in its verification window in {source}, until {window['until']}")
    elif outcome != "succeeded":
        problems.append(f"its deployment {current.deployment_id} in {source} is {outcome}")
    unhealthy = [i["id"] for i in (service or {}).get("instances", []) if i["health"] != "healthy"]
    if service is None or not service["instances"]:
        problems.append(f"no instance of it runs in {source}")
    elif unhealthy:
        problems.append(f"instances not healthy in {source}: {', '.join(unhealthy)}")
    if problems and not force:
        raise OperationFailed(f"release {live.id} of {name} is not healthy and verified in {source}; not promoting",
                              details=[*problems, "--force promotes anyway (recorded in the ledger)"])
    return live


def control(project: Project, environment: str, service: str | None, action: str) -> dict[str, Any]:
    if action not in ("pause", "resume", "abort"):
        raise UserInputError(f"unknown rollout action {action!r}")
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        return kube.control(project, environment, service, action)
    client = AgentClient(project.paths)
    try:
        return client.call("control", environment=environment, service=service, action=action,
                           actor=current_actor())
    except AgentUnavailable:
        raise UserInputError(f"no rollout is in progress for {environment}: the agent is not running") from None


def maintenance(project: Project, environment: str, names: list[str], on: bool, *, retry_after: int = 120,
                page: str | None = None) -> dict[str, Any]:
    """Turn maintenance mode on or off for services' routers in the edge: every request is answered 503 with
    `Retry-After` (and `page`) while the instances keep running. Persisted by the edge; recorded here."""
    from datetime import UTC, datetime

    from ingot.edge.client import call_sync, edge_alive
    from ingot.edge.home import EdgeHome

    if on_cluster(project, environment):
        raise UserInputError(f"maintenance mode needs ingot's own router; {environment} runs on Kubernetes")
    home = EdgeHome.default()
    routes = call_sync(home, "list")["routes"] if edge_alive(home) else []
    owner = str(project.paths.root)
    since = datetime.now(UTC).isoformat(timespec="seconds")
    changed = []
    for name in names:
        route = next((r for r in routes if r["owner"] == owner and f"#{environment}/{name}@" in r["id"]), None)
        if route is None:
            raise UserInputError(f"{name} is not deployed in {environment}: it has no router to put in maintenance")
        answer = call_sync(home, "maintenance", id=route["id"], on=on, retry_after=retry_after, page=page,
                           since=since)
        with project.store.begin() as conn:
            ledger.append(conn, actor=current_actor(), action=f"maintenance.{'on' if on else 'off'}",
                          environment=environment, service=name,
                          payload={"retry_after": retry_after, "custom_page": page is not None} if on else {})
        changed.append({"service": name, "maintenance": answer["maintenance"], "was": answer["was"]})
    return {"environment": environment, "on": on, "services": changed}


def maintenance_of(project: Project) -> dict[tuple[str, str], dict[str, Any]]:
    """(environment, service) -> the maintenance mode its router in the edge is in, for those that are."""
    from ingot.edge.client import call_sync, edge_alive
    from ingot.edge.home import EdgeHome

    home = EdgeHome.default()
    if not edge_alive(home):
        return {}
    found = {}
    for route in call_sync(home, "list")["routes"]:
        if route["owner"] == str(project.paths.root) and route.get("maintenance") and "#" in route["id"]:
            environment, rest = route["id"].rsplit("#", 1)[1].split("/", 1)
            found[(environment, rest.split("@", 1)[0])] = dict(route["maintenance"])
    return found


def abort_handed_over(project: Project, handed: HandedOver, timeout: float = 600.0) -> dict[str, Any]:
    """Abort an operation the caller handed to the agent and then left (Ctrl-C, then "abort"), as
    `ingot abort` does, and wait until the agent's operation has ended. Returns the deployment, its
    outcome and the release that serves now.

    The abort is sent once the deployment is under way in the agent (not before: until then the
    service's steering may still belong to the previous deployment's verification window). If the
    operation ends first, nothing is aborted and the outcome says how it ended.
    """
    store = project.store
    deadline = time.monotonic() + timeout
    # The agent may not have read the request yet when the caller was interrupted; give it a moment.
    seen_start = time.monotonic() + 2.0
    deployment, sent = handed.deployment, False
    while time.monotonic() < deadline:
        deployment = deployment or _started_since(store, handed)
        running = deployment is not None and store.deployment_outcome(deployment) == "running"
        if running and not sent:
            try:
                control(project, handed.environment, handed.service, "abort")
                sent = True
            except UserInputError:
                pass  # not steerable yet (it is planning); the next round tries again
        if not running and (deployment is not None or time.monotonic() > seen_start) \
                and not locks.carried(store, handed.environment, handed.lock.token):
            break
        time.sleep(0.05)
    else:
        raise OperationFailed(f"{handed.describe()} did not end within {timeout:g}s of the abort",
                              details=["see 'ingot status' and 'ingot history'"])
    current = store.current_activation(handed.environment, handed.service)
    return {"deployment": deployment, "outcome": store.deployment_outcome(deployment) if deployment else None,
            "abort_sent": sent, "serving": current.release_id if current else None}


def _started_since(store: Store, handed: HandedOver) -> str | None:
    """The deployment the agent made for the handed-over request: the service's first since the lock."""
    for dep in store.deployments(handed.environment, handed.service, limit=5):
        if dep.kind == handed.kind and dep.to_release == handed.release and dep.started_at >= handed.lock.since:
            return dep.id
    return None


# ---- reading ------------------------------------------------------------------------------
def plan(project: Project, environment: str, names: list[str]) -> list[dict[str, Any]]:
    """What a deploy would do, computed from the spec and the store; nothing is built or changed."""
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        return kube.plan(project, environment, names)
    plans = []
    for name in names:
        service = project.spec.service_for(environment, name)
        current = project.store.current_activation(environment, name)
        params = deploy_params(service, root=project.spec.root_dir).keeping_scale(
            DeployParams.from_dict(current.params) if current else None)
        release_id = build_release.expected_release_id(project, environment, name, service)
        state = service_state(project.store, environment, name)
        target = release_id or "<new build>"
        steps = plan_for(params.strategy, state, Target(target, params.replicas),
                         StrategyOptions.from_mapping(params.strategy_options), worker=params.worker)
        known = project.store.get_release(release_id) if release_id else None
        if known is not None:
            steps = oneoff.with_release_command(steps, project.store, environment, known)
        elif service.release_command:
            steps = oneoff.with_release_step(steps, target, service.release_command_timeout)
        # The smoke checks run inside the route steps that give the new release traffic (before each).
        smoke = [check.label for check in checks.parse(params.checks)]
        plans.append({"service": name, "environment": environment, "needs_build": release_id is None,
                      **steps.as_dict(), "checks": smoke})
    return plans


def history(project: Project, environment: str, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    # A few queries for the whole page, not a few per row (see Store.deployment_history).
    return [{"deployment": dep.id, "environment": dep.environment, "service": dep.service, "kind": dep.kind,
             "release": dep.to_release, "from": dep.from_release, "commit": row.commit, "artifact": row.artifact,
             "actor": dep.actor, "at": dep.started_at, "outcome": row.outcome, "live": row.live}
            for row in project.store.deployment_history(environment, name, limit)
            for dep in (row.deployment,)]


def status(project: Project, environment: str | None) -> dict[str, Any]:
    if on_cluster(project, environment):
        from ingot.kube import operations as kube

        services = kube.status(project, str(environment))
        for item in services:
            item["hardening"] = _hardening_of(project, item.get("release"))
        return {"project": project.spec.project, "state": str(project.paths.root),
                "agent": {"running": False, "note": f"not used: {environment} runs on Kubernetes"},
                "services": services}
    client = AgentClient(project.paths)
    try:
        live = client.call("status", timeout=10)
        agent: dict[str, Any] = {"running": True, **live["agent"]}
        services = live["services"]
    except AgentUnavailable:
        agent = {"running": False, "isolation": fence.isolation()}
        services = _offline_services(project)
    if environment:
        services = [s for s in services if s["environment"] == environment]
    paused = maintenance_of(project)
    for item in services:
        item["hardening"] = _hardening_of(project, item.get("release"))
        item["maintenance"] = paused.get((item["environment"], item["service"]))
    return {"project": project.spec.project, "state": str(project.paths.root), "agent": agent, "services": services,
            "machine": project.store.machine,  # this machine: a service's `machine` names where it runs
            "one_offs": oneoff.running_detached(project.paths, Runtimes(), environment)}


def _hardening_of(project: Project, release_id: str | None) -> dict[str, Any] | None:
    """For container services: what the live release relaxes of the hardened defaults, and why."""
    release = project.store.get_release(release_id or "")
    if release is None or "security" not in release.spec:
        return None
    security = SecuritySpec.model_validate(release.spec["security"])
    return {"relaxed": security.relaxations(), "reason": security.reason}


def _offline_services(project: Project) -> list[dict[str, Any]]:
    runtimes = Runtimes()
    services = []
    for activation in project.store.active_services():
        instances = []
        rows = project.store.live_instances(activation.environment, activation.service)
        for row in rows:
            here = project.store.on_this_machine(row.machine)  # another machine's pid is not seen from here
            alive = here and runtimes.of(row).observe(row).alive
            instances.append({"id": row.id, "release": row.release_id, "pid": row.pid, "port": row.port,
                              "state": row.state if alive or not here else "exited",
                              "health": "unknown (agent not running)" if here else
                              f"not observed (on machine {row.machine})",
                              "started_at": row.started_at, "runtime": row.runtime, "machine": row.machine,
                              "user": fence.user_of(row.pid) if row.runtime == "process" and alive else None})
        params = DeployParams.from_dict(activation.params)
        services.append({"environment": activation.environment, "service": activation.service,
                         "release": activation.release_id, "machine": service_machine(activation, rows),
                         "url": params.url, "worker": params.worker,
                         "instances": instances, "router": {"listening": False, "weights": {}, "stats": {}}})
    return services


def logs(project: Project, environment: str, name: str, lines: int = 50) -> list[tuple[str, list[str]]]:
    instances = project.store.live_instances(environment, name, mine=True)  # another machine's are not here
    if not instances:
        elsewhere = project.store.elsewhere(environment)
        if elsewhere:
            raise UserInputError(f"{name} in {environment} runs on machine {sorted(elsewhere)[0]}, whose logs are "
                                 f"there, not on this one ({project.store.machine})",
                                 details=["run 'ingot logs' on that machine"])
        raise UserInputError(f"{name} has no running instances in {environment}")
    runtimes = Runtimes()
    return [(row.id, runtimes.of(row).log_tail(row, lines)) for row in instances]


def down(project: Project, environment: str | None) -> dict[str, Any]:
    """Stop every instance and router (of one environment, or all), and the agent once nothing is left;
    and the detached one-offs (`ingot run --detach`) of the environment, which are no service's instances.

    On a damaged database it still stops everything it can find, and says what it could not do.
    """
    result = _down_services(project, environment)
    try:
        executor = Executor(project.store, Runtimes(), project.artifacts, project.paths)
        one_offs = oneoff.stop_detached(executor, environment, current_actor())
    except (OperationFailed, StoreDamaged) as exc:
        result["problems"] = [*result["problems"], f"detached one-offs could not be stopped: {exc.message}"]
    else:
        result["stopped"] = [*result["stopped"], *one_offs]
    return result


def _down_services(project: Project, environment: str | None) -> dict[str, Any]:
    damage = _store_damage(project)
    if damage:
        return _down_damaged(project, environment, damage)
    if environment:
        refuse_if_elsewhere(project.store, environment, "down")
    client = AgentClient(project.paths)
    if not client.alive():
        if agent_pid(project.paths) is None and not project.store.live_instances(mine=True):
            return {"stopped": [], "agent_was_running": False, "problems": []}
        try:
            client = ensure_agent(project.paths)
        except OperationFailed:
            return _down_without_agent(project, environment)
    result = client.call("down", environment=environment, actor=current_actor())
    if result.get("agent_stopping"):
        wait_for_exit(project.paths)
    return {"stopped": result.get("stopped", []), "agent_was_running": True, "problems": []}


def _store_damage(project: Project) -> list[str]:
    """What SQLite's quick check finds wrong with the state database (nothing, in the usual case)."""
    try:
        return project.store.integrity_problems(quick=True)
    except StoreDamaged as exc:
        return [exc.message]


def _down_without_agent(project: Project, environment: str | None) -> dict[str, Any]:
    """When the agent cannot start, `down` still leaves nothing running: it stops the instances itself."""
    # A supervisor restarting an agent that cannot start would bring it back behind this down's back.
    stop_supervisor(project.paths.supervisor_pid)
    from ingot.edge.client import release_owned
    from ingot.edge.home import EdgeHome

    released = release_owned(EdgeHome.default(), str(project.paths.root), environment)
    runtimes = Runtimes()
    stopped = []
    for row in project.store.live_instances(environment, mine=True):
        row = resolve_instance(project.store, runtimes, str(project.paths.root), row)
        runtimes.of(row).stop(row, timeout=10.0)
        project.store.set_instance_state(row.id, "stopped", stopped=True)
        stopped.append(row.id)
    problems: list[str] = []
    stopped.extend(_stop_by_labels(project, environment, runtimes, problems))
    with project.store.begin() as conn:
        for activation in project.store.active_services(mine=True):
            if environment and activation.environment != environment:
                continue
            project.store.activate(conn, environment=activation.environment, service=activation.service,
                                   release_id=None, deployment_id=None, params=activation.params)
        ledger.append(conn, actor=current_actor(), action="down", environment=environment,
                      payload={"stopped": stopped, "routers_released": released,
                               "note": "the agent could not start; instances stopped directly"})
    return {"stopped": stopped, "agent_was_running": False, "problems": problems}


def _down_damaged(project: Project, environment: str | None, damage: list[str]) -> dict[str, Any]:
    """`down` with a damaged state database: the agent is stopped (its routers with it), then every instance
    is stopped that the instance records (if still readable) or the labels on processes and containers
    name. What could not be done is said."""
    problems = [f"the state database is damaged: {'; '.join(damage[:3])}"]
    agent_was_running = _stop_agent(project.paths, problems)
    runtimes = Runtimes()
    stopped: list[str] = []
    try:
        rows = project.store.live_instances(environment)
    except (StoreDamaged, OperationFailed) as exc:
        rows = []
        problems.append(f"the instance records could not be read ({exc.message}): instances were looked for "
                        "by their labels instead")
    for row in rows:
        try:
            runtimes.of(row).stop(row, timeout=10.0)
            stopped.append(row.id)
        except OperationFailed as exc:
            problems.append(f"instance {row.id} could not be stopped: {exc.message}")
    stopped.extend(_stop_by_labels(project, environment, runtimes, problems))
    _release_routers(project, environment, problems)
    try:
        for row_id in stopped:
            project.store.set_instance_state(row_id, "stopped", stopped=True)
        ledger.record(project.store, actor=current_actor(), action="down", environment=environment,
                      payload={"stopped": stopped, "note": "the state database is damaged: stopped directly"})
    except (StoreDamaged, OperationFailed) as exc:
        problems.append(f"this down could not be recorded in the store or the ledger: {exc.message}")
    return {"stopped": stopped, "agent_was_running": agent_was_running, "problems": problems}


def _stop_agent(paths: StatePaths, problems: list[str]) -> bool:
    """SIGTERM the agent (it stops its routers as it goes), SIGKILL if it does not go; True if one ran."""
    stop_supervisor(paths.supervisor_pid)  # it would start the agent again (it passes SIGTERM on, too)
    pid = running_agent_pid(paths)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(paths, timeout=15.0, pid=pid):
        os.kill(pid, signal.SIGKILL)
        if not wait_for_exit(paths, timeout=5.0, pid=pid):
            problems.append(f"the agent (pid {pid}) could not be stopped")
    return True


def _stop_by_labels(project: Project, environment: str | None, runtimes: Runtimes,
                    problems: list[str]) -> list[str]:
    """Stop what carries this state directory's labels, whatever the records say: instance processes
    (INGOT_STATE and INGOT_INSTANCE in their environment) and containers (their ingot.* labels)."""
    state = str(project.paths.root)
    stopped = []
    for pid, env in labelled_processes(state):
        if environment and env.get("INGOT_ENVIRONMENT") != environment:
            continue
        terminate_group(pid, 10.0)
        stopped.append(env.get("INGOT_INSTANCE") or f"process {pid}")
    container_envs = {e for e in project.spec.environment_names
                      for name in project.spec.services
                      if project.spec.service_for(e, name).runtime == "docker"}
    if not (container_envs if environment is None else container_envs & {environment}):
        return stopped  # no container services here: no engine to ask
    try:
        engine: Any = runtimes.get("docker")
        for facts in engine.labelled(project.spec.project):
            labels = facts.labels
            if labels.get("ingot.state") != state or (environment and labels.get("ingot.environment") != environment):
                continue
            engine.remove_container(facts.container_id, 10.0)
            stopped.append(labels.get("ingot.instance") or facts.name)
    except OperationFailed as exc:
        problems.append(f"containers could not be looked for: {exc.message}")
    return stopped


def _release_routers(project: Project, environment: str | None, problems: list[str]) -> None:
    """The project's routers in the machine's edge go too (the agent that would release them is gone)."""
    from ingot.edge.client import release_owned
    from ingot.edge.home import EdgeHome

    try:
        release_owned(EdgeHome.default(), str(project.paths.root), environment)
    except OperationFailed as exc:
        problems.append(f"the edge's routers could not be released: {exc.message}")


# ---- retention --------------------------------------------------------------------------------
def prune(project: Project, dry_run: bool) -> dict[str, Any]:
    """Remove artifacts and images no environment needs; never one that is live or a rollback target."""
    store = project.store
    releases = store.all_releases()
    # A cluster's image (repo@sha256:...) lives in its registry, not in this machine's engine.
    docker_artifacts = {r.artifact_digest for r in releases
                        if r.spec.get("runtime") == "docker" and "@" not in r.artifact_digest}
    runtimes = Runtimes()
    stored = set(project.artifacts.list_digests())
    if docker_artifacts:
        engine: Any = runtimes.get("docker")
        stored |= {a for a in docker_artifacts if engine.image_exists(a)}
    history: dict[tuple[str, str], list[str]] = {}
    retention: dict[tuple[str, str], int] = {}
    for environment in project.spec.environment_names:
        for name in project.spec.services:
            retention[(environment, name)] = project.spec.service_for(environment, name).retention
    for environment, name in {(d.environment, d.service) for d in store.deployments(limit=100000)}:
        history[(environment, name)] = [a.release_id for a in store.activation_history(environment, name)
                                        if a.release_id]
    infos = [ReleaseInfo(r.id, r.service, r.artifact_digest, r.created_at) for r in releases]
    decision = decide(infos, history, retention, 5, stored)
    # Counted before anything goes: files an artifact shares with a kept one free nothing.
    freed = project.artifacts.space_freed_by([a for a in sorted(decision.remove) if a not in docker_artifacts])
    removed: list[str] = []
    outcomes: dict[str, str] = {}
    if not dry_run:
        by_id = {r.id: r for r in releases}
        for artifact in sorted(decision.remove):
            if artifact in docker_artifacts:
                tags = [f"{build_release.IMAGE_REPOSITORY.format(project=r.project, service=r.service)}:{r.id}"
                        for r in (by_id[i] for i in decision.remove[artifact])]
                outcomes[artifact] = runtimes.get("docker").release_image(artifact, tags)  # type: ignore[attr-defined]
            else:
                project.artifacts.remove(artifact)
                outcomes[artifact] = "removed"
            removed.append(artifact)
        ledger.record(store, actor=current_actor(), action="prune",
                      payload={"removed": {a: decision.remove[a] for a in removed}, "outcomes": outcomes,
                               "kept": len(decision.keep), "freed_bytes": freed})
    return {"dry_run": dry_run, "remove": decision.remove, "keep": decision.keep, "removed": removed,
            "outcomes": outcomes, "freed_bytes": freed}


# ---- drift ----------------------------------------------------------------------------------
def drift(project: Project, environment: str | None) -> list[dict[str, Any]]:
    clusters = _clusters(project, environment)
    found: list[dict[str, Any]] = []
    if environment is None or not clusters:
        client = ensure_agent(project.paths)
        found.extend(client.call("drift", environment=environment)["findings"])
    if clusters:
        from ingot.kube import operations as kube

        found.extend(f for env in clusters for f in kube.drift(project, env))
    return found


def reconcile(project: Project, environment: str | None, on_event: OnEvent | None = None) -> dict[str, Any]:
    clusters = _clusters(project, environment)
    result: dict[str, Any] = {"findings": [], "started": [], "replaced": [], "stopped_strays": []}
    if environment is None or not clusters:
        client = ensure_agent(project.paths)
        result = client.call("reconcile", on_event=on_event, environment=environment, actor=current_actor())
        if result.get("failures"):
            raise OperationFailed("reconcile could not repair everything", details=list(result["failures"]))
    if clusters:
        from ingot.kube import operations as kube

        for env in clusters:
            repaired = kube.reconcile(project, env, on_event)
            for key in ("findings", "started", "replaced", "stopped_strays"):
                result[key] = [*result.get(key, []), *repaired[key]]
    return result


# ---- audit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditReport:
    entries_checked: int  # by this verify: those after `verified_from`
    releases_checked: int
    problems: list[str]
    artifacts_checked: int = 0
    database_checked: bool = False
    trusted: str = ""  # what signatures were checked against
    checkpoint: str | None = None  # the checkpoint the ledger was measured against
    ledger_head: int = 0  # the newest entry the chain was verified up to
    verified_from: int = 0  # the entry verified before this verify started after (0: from the first)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_verify(project: Project, *, deep: bool = False, checkpoint_file: Path | None = None,
                 full: bool = False, every_signature: bool = False) -> AuditReport:
    """The ledger's hash chain and signatures, every release signature (both against the pinned key) and
    the insert-only triggers; with `checkpoint_file`, that the ledger still reaches that checkpoint;
    `deep` also checks the database's integrity and recomputes the digest of every stored artifact. The
    database check is SQLite's `quick_check` (every page readable and well formed), or with `full` its
    `integrity_check`, which also checks every index against its table (at a million entries, several
    times slower: tens of seconds). Never makes a key.

    The chain is checked from the last verified point (see ingot.checkpoint), unless `full`: the entries
    after it, and that the entry at it is unchanged. If that entry is gone or differs, the chain is
    checked in full to name where it breaks. `every_signature`: each checked entry's own signature is
    verified too (~100 times the cost of its hash), not only the newest one's."""
    problems: list[str] = []
    database = project.store.where
    if deep:
        try:
            problems.extend(f"database {database}: {p}" for p in project.store.integrity_problems(quick=not full))
        except StoreDamaged as exc:
            problems.append(f"database {database}: {exc.message}")
    trusted, source = trusted_key(project.paths.pin, project.paths.keys)
    pinned = project.paths.pin is not None and project.paths.pin.exists()
    point = checkpoint.verified_path(project.paths.root)
    chain: ledger.ChainReport | None = None
    start, refused, missing = None, None, []
    try:
        missing = project.store.missing_triggers()
        problems.extend(f"trigger {name} is missing: its table is no longer protected in the database "
                        "(dropped: someone went around the insert-only rule)" for name in missing)
        # With a trigger gone, entries before the verified point may have been edited in place since: the
        # point vouches for nothing then, and the whole chain is checked.
        start, refused = (None, None) if full or missing or trusted is None else \
            checkpoint.last_verified(point, trusted, project.spec.project)
        if refused:
            problems.append(refused)
        chain = ledger.check_chain(project.store, trusted, require_signed=pinned, start=start,
                                   every_signature=every_signature)
        if chain.problem and start is not None and chain.head is None:
            # The verified entry itself is gone or changed: say so, and find where the chain breaks.
            problems.append(f"ledger entry {chain.problem.seq} (the last verified, in {point}): "
                            f"{chain.problem.reason}")
            chain = ledger.check_chain(project.store, trusted, require_signed=pinned)
        if chain.problem:
            problems.append(f"ledger entry {chain.problem.seq}: {chain.problem.reason}")
        releases = project.store.all_releases()
        if checkpoint_file is not None:
            problems.extend(checkpoint.problems(project.store, checkpoint_file, trusted, project.spec.project))
    except StoreDamaged as exc:
        problems.append(f"the ledger and releases could not be read: {exc.message}")
        releases = []
    checked = chain.checked if chain else 0
    head = chain.head[0] if chain and chain.head else 0
    if trusted is None and (head or releases):
        problems.append(f"signatures cannot be checked: {source} (restore the pin beside the spec from git, "
                        "or the signing key)")
    elif (chain is not None and chain.problem is None and not refused and not missing and chain.head
          and chain.head != start):
        checkpoint.keep_verified(point, project.paths.keys, project.spec.project, chain.head)
    for rel in releases:
        problem = verify_release(rel, trusted) if trusted else "there is no key to check its signature against"
        if problem:
            problems.append(f"release {rel.id}: {problem}")
    digests = project.artifacts.list_digests() if deep else []
    for digest in digests:
        try:
            project.artifacts.verify(digest)
        except ArtifactCorrupt as exc:
            problems.append("; ".join([f"artifact {digest}: {exc.message}", *exc.details]))
    return AuditReport(checked, len(releases), problems, len(digests), deep, source,
                       str(checkpoint_file) if checkpoint_file else None, head, chain.start if chain else 0)


def audit_checkpoint(project: Project, out: Path | None) -> dict[str, Any]:
    """A signed checkpoint of the ledger's head, written to `out` (kept outside the store by the caller)."""
    made = checkpoint.make(project.store, project.paths.keys, project.spec.project)
    if out is not None:
        checkpoint.write(out, made)
    return made
