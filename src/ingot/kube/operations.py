"""The service functions of a Kubernetes environment: render, deploy, rollback, plan, drift, reconcile.

They mirror `ingot.operations` (which hands an environment with `target: {kind: kubernetes}` to them),
with the cluster as the place things run instead of the agent. Deployments and their steps are recorded
in the store and the ledger like any other; the agent is not involved, and nothing is recorded as an
activation, so the agent never tries to run a cluster's service on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingot import build_release, config_ops, config_store, ledger, locks, oneoff
from ingot.actor import current_actor
from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.kube import api as kube_api
from ingot.kube import names, render
from ingot.kube.drift import ObjectDrift, compare_objects
from ingot.kube.plan import ClusterState, KubePlan, Options, Target, Track, plan_rollback, plan_rollout, plan_switch
from ingot.kube.render import Layout, Rendered, Workload
from ingot.kube.rollout import Rollout, Steering, referenced_config
from ingot.plan.model import StrategyOptions
from ingot.project import Project
from ingot.release_trust import refuse_untrusted
from ingot.rollout_control import RolloutAborted
from ingot.spec import ServiceSpec
from ingot.spec.models import KubernetesTarget
from ingot.store import DeploymentRow, ReleaseRow

OnEvent = Callable[[dict[str, Any]], None]
OnOutput = Callable[[str], None]
# How one service's rollout is run: (service, release, created, kind, the rollout itself) -> its outcome.
# ingot.operations runs it between the service's hooks and sends its notification (ingot.hooks).
Through = Callable[[str, ReleaseRow, bool, str, Callable[[], Any]], Any]
KINDS = ("ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "HTTPRoute")
# Never extra, never removed by ingot: a claim holds data that outlives its volume's place in the spec.
DATA_KINDS = ("PersistentVolumeClaim",)
# How the cluster is reached; tests put an in-memory cluster here.
connect: kube_api.ApiFactory = kube_api.connect


# ---- the environment ------------------------------------------------------------------------------


def target_of(project: Project, environment: str) -> KubernetesTarget | None:
    env = project.spec.environments.get(environment)
    return env.target if env is not None else None


def require_target(project: Project, environment: str) -> KubernetesTarget:
    target = target_of(project, environment)
    if target is None:
        raise UserInputError(f"environment {environment} runs on this machine, not on Kubernetes: give it "
                             f"target: {{kind: kubernetes, namespace: NAME}} in {project.spec.path.name}")
    return target


def open_cluster(target: KubernetesTarget) -> kube_api.KubeApi:
    return connect(target.context, target.namespace)


def layout_of(target: KubernetesTarget, service: ServiceSpec, api: kube_api.KubeApi | None) -> Layout:
    """The service's objects. With a cluster at hand, the HTTPRoute is used only if the cluster serves the
    Gateway API; else (rendering to files) the spec alone decides."""
    gateway = target.gateway
    if gateway is not None and api is not None and not api.serves("HTTPRoute"):
        gateway = None  # no Gateway API here: a canary splits traffic by replica counts instead
    return Layout(service.strategy.type, gateway, worker=service.worker)


def options_of(service: ServiceSpec, layout: Layout, target: KubernetesTarget) -> Options:
    strategy = StrategyOptions.from_mapping(service.strategy.model_dump(mode="json"))
    return Options(strategy=service.strategy.type, steps=strategy.steps,
                   # Only Prometheus can judge a canary on a cluster; without it, steps and pauses alone.
                   analysis=strategy.analysis if target.prometheus is not None else None,
                   verification=strategy.verification, traffic=layout.traffic, retention=service.retention,
                   max_surge=service.strategy.max_surge, services=not layout.worker)


def workload_of(project: Project, environment: str, release: ReleaseRow, service: ServiceSpec,
                target: KubernetesTarget) -> Workload:
    return Workload(project=project.spec.project, environment=environment, service=release.service,
                    namespace=target.namespace, release=release.id, image=release.artifact_digest,
                    spec=release.spec, config=release.config, replicas=service.replicas, health=service.health,
                    min_ready=service.strategy.min_ready, volume_size=target.volume_size,
                    storage_class=target.storage_class)


def _check_image(release: ReleaseRow) -> None:
    from ingot.kube.images import is_cluster_image

    if not is_cluster_image(release.artifact_digest):
        raise UserInputError(
            f"release {release.id} of {release.service} runs image {release.artifact_digest}, which is only in "
            "this machine's container engine: a cluster cannot pull it",
            details=["set the environment's target.registry, so that builds are pushed there, or pin "
                     "image: repo@sha256:... in the spec"])


def deployed_history(project: Project, environment: str, service: str) -> tuple[str, ...]:
    """The releases that succeeded on the cluster, oldest first: what `retention` and `rollback` count."""
    found: list[str] = []
    for dep in reversed(project.store.deployments(environment, service, limit=1000)):
        if project.store.deployment_outcome(dep.id) == "succeeded":
            found.append(dep.to_release)
    return tuple(found)


def read_state(api: kube_api.KubeApi, project: str, environment: str, service: str,
               history: tuple[str, ...]) -> ClusterState:
    """The planner's view of one service, from the cluster."""
    selector = f"{names.environment_selector(project, environment)},{names.SERVICE}={service}"
    tracks = []
    for obj in api.find("Deployment", selector):
        labels = obj["metadata"].get("labels") or {}
        tracks.append(Track(str(obj["metadata"]["name"]), str(labels.get(names.RELEASE, "")),
                            int((obj.get("spec") or {}).get("replicas", 1))))
    selectors = []
    for name in (service, names.preview_service(service), names.canary_service(service)):
        live = api.get("Service", name)
        selected = names.selected_deployment(((live or {}).get("spec") or {}).get("selector"))
        if selected is not None:
            selectors.append((name, selected))
    route: tuple[tuple[str, int], ...] = ()
    if api.serves("HTTPRoute"):
        live_route = api.get("HTTPRoute", service)
        if live_route is not None:
            rules = (live_route.get("spec") or {}).get("rules") or [{}]
            route = tuple((str(b["name"]), int(b.get("weight", 1))) for b in rules[0].get("backendRefs") or [])
    return ClusterState(tuple(sorted(tracks, key=lambda t: t.deployment)), tuple(sorted(selectors)), route, history)


def live_track(state: ClusterState, service: str) -> Track | None:
    """The Deployment the stable Service selects; with no Service at all (a worker), the one running most."""
    selected = state.selected(service)
    if selected is None:
        running = [t for t in state.tracks if t.replicas > 0]
        return min(running, key=lambda t: (-t.replicas, t.deployment)) if running else None
    return state.track(selected)


def live_release(state: ClusterState, service: str) -> str | None:
    track = live_track(state, service)
    return track.release if track else None


# ---- render -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedService:
    service: str
    release: str
    rendered: Rendered


def release_for(project: Project, environment: str, name: str, on_output: OnOutput | None = None,
                commit: str | None = None) -> tuple[ReleaseRow, bool]:
    """The release a deploy would roll out now: built (and pushed) if needed, created and signed if new."""
    artifact = build_release.build(project, environment, name, on_output)
    row, created = build_release.release(project, environment, name, artifact, commit or project.git_commit())
    _check_image(row)
    return row, created


def render_environment(project: Project, environment: str, services: list[str],
                       on_output: OnOutput | None = None) -> list[RenderedService]:
    """The manifests of each service's current release, Secrets withheld (named, without values)."""
    target = require_target(project, environment)
    for name in services:
        config_ops.release_config(project, environment, name, project.spec.service_for(environment, name))
    found = []
    for name in services:
        service = project.spec.service_for(environment, name)
        row, _created = release_for(project, environment, name, on_output)
        w = workload_of(project, environment, row, service, target)
        found.append(RenderedService(name, row.id, render.render_release(w, layout_of(target, service, None),
                                                                          with_job=True)))
    return found


def manifests(project: Project, environment: str, items: list[RenderedService]) -> dict[str, str]:
    """File name -> content, for `ingot render -o DIR`; byte for byte the same for the same input."""
    return render.files_of(project.spec.project, environment, [item.rendered for item in items])


def apply_secrets(project: Project, environment: str, services: list[str]) -> list[str]:
    """Create the Secrets the rendered manifests refer to, straight in the cluster (for GitOps)."""
    target = require_target(project, environment)
    api = open_cluster(target)
    api.ensure_namespace(_namespace_labels(project))
    made = []
    for name in services:
        service = project.spec.service_for(environment, name)
        row, _created = release_for(project, environment, name)
        w = workload_of(project, environment, row, service, target)
        secret = render.secret(w, config_store.secret_values(project.store, project.paths.keys, row, environment))
        if secret is not None:
            api.apply(secret)
            made.append(str(secret["metadata"]["name"]))
            ledger.record(project.store, actor=current_actor(), action="kube.secrets", environment=environment,
                          service=name, subject=row.id,
                          payload={"secret": secret["metadata"]["name"], "keys": sorted(w.secret_refs)})
    return made


def _namespace_labels(project: Project) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": names.MANAGER, names.PROJECT: project.spec.project}


# ---- deploy and rollback ----------------------------------------------------------------------------


def deploy(project: Project, environment: str, services: list[str], *, on_event: OnEvent | None = None,
           on_output: OnOutput | None = None, commit: str | None = None, through: Through | None = None,
           irreversible: bool = False) -> list[Any]:
    emit = on_event or (lambda _event: None)
    target = require_target(project, environment)
    for name in services:
        config_ops.release_config(project, environment, name, project.spec.service_for(environment, name))
    api = open_cluster(target)
    outcomes = []
    with locks.hold(project.store, environment, "deploy", current_actor()):
        api.ensure_namespace(_namespace_labels(project))
        for name in services:
            emit({"event": "build", "service": name})
            row, created = release_for(project, environment, name, on_output, commit)
            emit({"event": "release", "service": name, "release": row.id, "created": created})
            if irreversible:
                oneoff.mark_irreversible(project.store, current_actor(), environment, row)

            def run(name: str = name, row: ReleaseRow = row, created: bool = created) -> Any:
                return roll(project, environment, name, row, created, "deploy", api, emit)

            outcomes.append(through(name, row, created, "deploy", run) if through else run())
    return outcomes


def rollback(project: Project, environment: str, name: str, to: str | None, *,
             on_event: OnEvent | None = None, through: Through | None = None,
             rerun_release_command: bool = False, force: bool = False) -> Any:
    """Back to the previous release that succeeded on the cluster (or `to`); refused across an irreversible
    release unless `force`, as on any target (ingot.operations.check_reversible)."""
    from ingot.operations import check_reversible

    target = require_target(project, environment)
    api = open_cluster(target)
    history = deployed_history(project, environment, name)
    current = live_release(read_state(api, project.spec.project, environment, name, history), name)
    if to:
        matches = project.store.find_releases(to, service=name)
        if len(matches) != 1:
            raise UserInputError(f"{to!r} matches {len(matches) or 'no'} release(s) of {name}; see 'ingot history'")
        row = matches[0]
    else:
        earlier = [r for r in history if r != current]
        if not earlier:
            raise UserInputError(f"{name} in {environment} has no earlier release to roll back to; see 'ingot history'")
        found = project.store.get_release(earlier[-1])
        assert found is not None
        row = found
    config_store.check_secrets_for(row, environment)
    _check_image(row)
    with locks.hold(project.store, environment, "rollback", current_actor()):
        check_reversible(project, environment, name, row, force, list(history))

        def run() -> Any:
            return roll(project, environment, name, row, False, "rollback", api, on_event or (lambda _e: None),
                        rerun_release_command=rerun_release_command)

        return through(name, row, False, "rollback", run) if through else run()


def run(project: Project, environment: str, name: str, row: ReleaseRow, command: list[str], job: str, *,
        detach: bool = False, on_line: OnOutput | None = None) -> dict[str, Any]:
    """`ingot run` on a cluster: `command` in a Job `job` of `row`'s pod (its image, env, config, secrets,
    volumes, security context and limits), with no TTY and no stdin: its log is streamed to `on_line`. The
    Deployments are not touched. `detach` applies the Job and returns; it is kept for its TTL."""
    _check_image(row)
    refuse_untrusted(project.store, project.paths, environment, name, row, actor=current_actor())
    target = require_target(project, environment)
    service = project.spec.service_for(environment, name)
    api = open_cluster(target)
    w = workload_of(project, environment, row, service, target)

    def said(event: dict[str, Any]) -> None:
        if on_line is not None and event.get("event") == "release_output":
            on_line(str(event["line"]))

    rollout = Rollout(api=api, layout=layout_of(target, service, api), workload=w, record=lambda *_step: None,
                      secret_values=lambda _w: config_store.secret_values(project.store, project.paths.keys, row,
                                                                          environment),
                      emit=said, job_log=lambda job_name: project.paths.instance_log(environment, name, job_name))
    return rollout.run_one_off(render.command_job(w, command, job, None), detach=detach)


def release_command_timeout(project: Project, environment: str, row: ReleaseRow, rerun: bool) -> float | None:
    """The release_command's timeout if it is to run: not yet succeeded in this environment (a rollback or
    a repeated promotion reuses the release, and its migration is done), or asked again; else None."""
    if oneoff.release_command(row) is None or (not rerun and oneoff.ran_before(project.store, environment, row)):
        return None
    return float(row.spec.get("release_command_timeout") or 600.0)


def roll(project: Project, environment: str, name: str, row: ReleaseRow, created: bool, kind: str,
         api: kube_api.KubeApi, emit: OnEvent, *, rerun_release_command: bool = False) -> Any:
    """Plan and apply one service's rollout to `row`, recorded as a deployment; undone on failure. The
    release_command, when it is to run, is the plan's first step: a Job, before any Deployment changes."""
    from ingot.operations import DeployOutcome

    _check_image(row)  # a promotion from this machine brings a local image ID, which no node can pull
    # A row changed in the database is never rolled out to a cluster either.
    refuse_untrusted(project.store, project.paths, environment, name, row, actor=current_actor())
    target = require_target(project, environment)
    service = project.spec.service_for(environment, name)
    layout = layout_of(target, service, api)
    options = options_of(service, layout, target)
    w = workload_of(project, environment, row, service, target)
    history = deployed_history(project, environment, name)
    state = read_state(api, project.spec.project, environment, name, history)
    goal = Target(name, render.deployment(w)["metadata"]["name"], row.id, service.replicas,
                  release_command_timeout(project, environment, row, rerun_release_command))
    plan = plan_rollback(state, goal, options) if kind == "rollback" else plan_rollout(state, goal, options)
    url = f"Service {name} in namespace {target.namespace}"
    if plan.empty:
        return DeployOutcome(name, row.id, created, True, url, None)
    recorder = _start(project, environment, name, kind, live_release(state, name), row, plan, target)
    emit({"event": "plan", "service": name, "deployment": recorder.row.id, "plan": plan.as_dict()})
    rollout = Rollout(api=api, layout=layout, workload=w, record=recorder.step,
                      secret_values=lambda _w: config_store.secret_values(project.store, project.paths.keys, row,
                                                                          environment),
                      emit=lambda event: emit({**event, "service": name}),
                      steering=lambda: steering(project, environment, name, recorder.since),
                      prometheus=target.prometheus,
                      job_log=lambda job: project.paths.instance_log(environment, name, job),
                      release_ran=lambda ok, detail: recorder.release_command(ok, detail))
    try:
        rollout.apply(plan)
    except IngotError as exc:
        serving = _undo(api, project, environment, name, state, goal, options, rollout)
        outcome = "aborted" if isinstance(exc, RolloutAborted) else "failed"
        recorder.finish(outcome, {"error": exc.message, "details": exc.details, "serving": serving})
        raise OperationFailed(f"{kind} of {name} to {row.id} on the cluster {outcome}: {exc.message}",
                              details=[*exc.details, serving]) from exc
    recorder.finish("succeeded", {"steps": len(plan.steps)})
    return DeployOutcome(name, row.id, created, False, url, recorder.row.id)


def _undo(api: kube_api.KubeApi, project: Project, environment: str, name: str, before: ClusterState,
          goal: Target, options: Options, rollout: Rollout) -> str:
    """Traffic back to what served before, the new Deployment removed; says what serves now."""
    stable = live_track(before, name) if not options.services else \
        next((t for t in before.tracks if t.deployment == before.selected(name)), None)
    try:
        now = read_state(api, project.spec.project, environment, name, before.history)
        if stable is None or stable.deployment == goal.deployment:
            if before.track(goal.deployment) is None:
                api.delete("Deployment", goal.deployment)
            return "nothing served before this rollout; its Deployment is removed"
        back = Target(name, stable.deployment, stable.release, stable.replicas)
        undo = plan_switch(now, back, options, None, strategy="abort")
        rollout.steering = Steering  # an abort request must not stop the undo itself
        for step in undo.steps:
            if step.kind == "delete" and step.deployment != goal.deployment:
                continue  # undoing removes only what this rollout made
            rollout.run(step)
        if before.track(goal.deployment) is None:
            api.delete("Deployment", goal.deployment)
            rollout.delete_unused_config()
        return f"release {stable.release} (Deployment {stable.deployment}) serves, as before"
    except IngotError as exc:
        return f"putting traffic back to {stable.release if stable else 'the previous release'} failed too: " \
               f"{exc.message}; see 'ingot drift --env {environment}'"


@dataclass
class _Recorder:
    """A cluster deployment's rows and ledger entries, written before the step they describe goes on."""

    project: Project
    row: DeploymentRow
    since: int  # the ledger sequence at the start: steering requests after it are this rollout's

    def step(self, name: str, status: str, detail: dict[str, Any]) -> None:
        store, row = self.project.store, self.row
        action = f"{row.kind}.analysis" if name == "verdict" else f"{row.kind}.step"
        with store.begin() as conn:
            store.add_step(conn, row.id, name, status, detail)
            ledger.append(conn, actor=row.actor, action=action, environment=row.environment, service=row.service,
                          subject=row.id, payload={"step": name, "status": status, **detail})

    def release_command(self, ok: bool, detail: dict[str, Any]) -> None:
        """The ledger entry the process runtime writes too: a success keeps a reused release from running
        it again (`oneoff.ran_before`)."""
        row = self.row
        ledger.record(self.project.store, actor=row.actor, action=oneoff.SUCCEEDED if ok else oneoff.FAILED,
                      environment=row.environment, service=row.service, subject=row.to_release,
                      payload={"deployment": row.id, "target": "kubernetes", **detail})

    def finish(self, outcome: str, detail: dict[str, Any]) -> None:
        store, row = self.project.store, self.row
        action = {"succeeded": "finish", "failed": "fail", "aborted": "abort"}.get(outcome, outcome)
        with store.begin() as conn:
            store.add_step(conn, row.id, "finish", outcome, {"outcome": outcome, **detail})
            ledger.append(conn, actor=row.actor, action=f"{row.kind}.{action}", environment=row.environment,
                          service=row.service, subject=row.id,
                          payload={"release": row.to_release, "outcome": outcome, **detail})


def _start(project: Project, environment: str, name: str, kind: str, current: str | None, row: ReleaseRow,
           plan: KubePlan, target: KubernetesTarget) -> _Recorder:
    params = {"target": "kubernetes", "context": target.context, "namespace": target.namespace,
              "deployment": plan.target.deployment, "replicas": plan.target.replicas}
    store = project.store
    with store.begin() as conn:
        dep = store.create_deployment(conn, environment=environment, service=name, kind=kind, from_release=current,
                                      to_release=row.id, strategy=plan.strategy, params=params, actor=current_actor())
        entry = ledger.append(conn, actor=dep.actor, action=f"{kind}.start", environment=environment, service=name,
                              subject=dep.id, payload={"from": current, "to": row.id, "plan": plan.as_dict(),
                                                       "target": params})
    return _Recorder(project, dep, entry.seq)


# ---- steering from other terminals -------------------------------------------------------------------

STEERING = ("rollout.pause", "rollout.resume", "rollout.abort")


def control(project: Project, environment: str, service: str | None, action: str) -> dict[str, Any]:
    """`ingot pause | resume | abort` for a cluster rollout: a ledger entry the rollout reads."""
    if action not in ("pause", "resume", "abort"):
        raise UserInputError(f"unknown rollout action {action!r}")
    names_ = [service] if service else list(project.spec.services)
    for name in names_:
        ledger.record(project.store, actor=current_actor(), action=f"rollout.{action}", environment=environment,
                      service=name)
    return {"services": sorted(names_), "action": action}


def steering(project: Project, environment: str, service: str, since: int) -> Steering:
    """What other terminals asked of this service's rollout since it started."""
    paused_by = aborted_by = None
    resumes = 0
    for entry in ledger.entries(project.store, environment=environment, service=service, after=since,
                                actions=STEERING):
        if entry.action == "rollout.pause":
            paused_by = entry.actor
        elif entry.action == "rollout.resume":
            paused_by, resumes = None, resumes + 1
        else:
            aborted_by = entry.actor
    return Steering(paused_by, aborted_by, resumes)


# ---- plan -------------------------------------------------------------------------------------------


def plan(project: Project, environment: str, services: list[str]) -> list[dict[str, Any]]:
    """What a deploy would do on the cluster; images with a `build` are not built for this."""
    target = require_target(project, environment)
    api = open_cluster(target)
    plans = []
    for name in services:
        service = project.spec.service_for(environment, name)
        layout = layout_of(target, service, api)
        history = deployed_history(project, environment, name)
        state = read_state(api, project.spec.project, environment, name, history)
        row = _expected_release(project, environment, name, service)
        if row is None:
            goal = Target(name, f"{name}-<new build>", "<new build>", service.replicas)
        else:
            w = workload_of(project, environment, row, service, target)
            goal = Target(name, render.deployment(w)["metadata"]["name"], row.id, service.replicas,
                          release_command_timeout(project, environment, row, False))
        found = plan_rollout(state, goal, options_of(service, layout, target))
        plans.append({"service": name, "environment": environment, "needs_build": row is None,
                      "traffic": layout.traffic, **found.as_dict()})
    return plans


def _expected_release(project: Project, environment: str, name: str, service: ServiceSpec) -> ReleaseRow | None:
    """The release of a pinned image, as a deploy would make it (not stored); None for a build."""
    if service.image is None:
        return None
    from ingot.build_release import signing_key
    from ingot.releases import new_release

    config = config_ops.release_config(project, environment, name, service)
    return new_release(key=signing_key(project), project=project.spec.project, service=name,
                       artifact_digest=service.image, spec=service.release_fields(), config=config,
                       actor=current_actor())


# ---- status -----------------------------------------------------------------------------------------


def status(project: Project, environment: str) -> list[dict[str, Any]]:
    """Per service, shaped like the agent's status: the live release, and its pods as instances."""
    from ingot.kube.rollout import pod_ready

    target = require_target(project, environment)
    api = open_cluster(target)
    found = []
    for name in project.spec.services:
        state = read_state(api, project.spec.project, environment, name, deployed_history(project, environment, name))
        selector = f"{names.environment_selector(project.spec.project, environment)},{names.SERVICE}={name}"
        instances = [{"id": pod["metadata"]["name"], "release": (pod["metadata"].get("labels") or {}).get(
                          names.RELEASE), "pid": None, "port": None,
                      "state": str((pod.get("status") or {}).get("phase", "Unknown")),
                      "health": "healthy" if pod_ready(pod) else "not ready", "started_at": None}
                     for pod in api.find("Pod", selector)]
        selected = state.selected(name)
        weights = dict(state.route) if state.route else ({selected: 100} if selected else {})
        found.append({"environment": environment, "service": name, "release": live_release(state, name),
                      "url": f"Service {name} in namespace {target.namespace}", "instances": instances,
                      "router": {"listening": False, "weights": weights, "stats": {}},
                      "target": {"kind": "kubernetes", "context": target.context, "namespace": target.namespace,
                                 "deployment": selected,
                                 "deployments": {t.deployment: t.replicas for t in state.tracks}}})
    return found


# ---- drift and reconcile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What one service should have on the cluster now, and what may be there besides (kept releases)."""

    objects: tuple[dict[str, Any], ...]
    tolerated: frozenset[tuple[str, str]]
    state: ClusterState
    goal: Target | None
    options: Options


def expected_of(project: Project, environment: str, name: str, api: kube_api.KubeApi,
                target: KubernetesTarget) -> Expected:
    """The live release (the one the stable Service selects), rendered with its Secret's values."""
    service = project.spec.service_for(environment, name)
    layout = layout_of(target, service, api)
    options = options_of(service, layout, target)
    history = deployed_history(project, environment, name)
    state = read_state(api, project.spec.project, environment, name, history)
    release_id = live_release(state, name) or (history[-1] if history else None)
    row = project.store.get_release(release_id) if release_id else None
    if row is None:
        return Expected((), frozenset(), state, None, options)
    w = workload_of(project, environment, row, service, target)
    secrets = config_store.secret_values(project.store, project.paths.keys, row, environment)
    rendered = render.render_release(w, layout, secrets)
    goal = Target(name, rendered.deployment, row.id, service.replicas)
    # Kept Deployments of earlier releases (scaled to zero) and the config they refer to are expected too.
    kept = [t for t in state.tracks if t.deployment != goal.deployment]
    tolerated = {("Deployment", t.deployment) for t in kept}
    selector = f"{names.environment_selector(project.spec.project, environment)},{names.SERVICE}={name}"
    tolerated |= referenced_config(d for d in api.find("Deployment", selector)
                                   if d["metadata"]["name"] != goal.deployment)
    return Expected(rendered.objects, frozenset(tolerated), state, goal, options)


def drift(project: Project, environment: str) -> list[dict[str, Any]]:
    """Findings shaped like the agent's: environment, service, instance (None), kind, evidence, repair."""
    target = require_target(project, environment)
    api = open_cluster(target)
    return [f.as_finding(environment) for f in _findings(project, environment, api, target)]


@dataclass(frozen=True)
class Finding:
    service: str
    drift: ObjectDrift | None = None
    step: Any = None  # a KubeStep that re-planning the live release wants (scale, delete, select...)

    def as_finding(self, environment: str) -> dict[str, Any]:
        if self.drift is not None:
            return {"environment": environment, "service": self.service, "instance": None,
                    "kind": f"{self.drift.problem} {self.drift.kind}",
                    "evidence": {"object": f"{self.drift.kind} {self.drift.name}",
                                 "differences": [d.describe() for d in self.drift.differences]},
                    "repair": self.drift.repair}
        return {"environment": environment, "service": self.service, "instance": None, "kind": "rollout state",
                "evidence": {"needs": self.step.describe()}, "repair": self.step.describe()}


def _findings(project: Project, environment: str, api: kube_api.KubeApi, target: KubernetesTarget) -> list[Finding]:
    found: list[Finding] = []
    everything = {kind: api.find(kind, names.environment_selector(project.spec.project, environment))
                  for kind in KINDS if kind != "HTTPRoute" or api.serves("HTTPRoute")}
    for name in project.spec.services:
        expected = expected_of(project, environment, name, api, target)
        live = [obj for objs in everything.values() for obj in objs
                if (obj["metadata"].get("labels") or {}).get(names.SERVICE) == name]
        if expected.goal is None:
            found.extend(Finding(name, ObjectDrift(str(o["kind"]), str(o["metadata"]["name"]), "extra")) for o in live
                         if o["kind"] not in DATA_KINDS)
            continue
        kept_data = {(str(o["kind"]), str(o["metadata"]["name"])) for o in live if o["kind"] in DATA_KINDS}
        found.extend(Finding(name, d) for d in compare_objects(expected.objects, live,
                                                               expected.tolerated | kept_data))
        # Kept Deployments scaled when they should not be, releases beyond retention: what a re-plan wants.
        again = plan_switch(expected.state, expected.goal, expected.options, None)
        found.extend(Finding(name, step=s) for s in again.steps if s.kind in ("scale", "delete")
                     and s.deployment != expected.goal.deployment)
    for objs in everything.values():
        for obj in objs:
            if (obj["metadata"].get("labels") or {}).get(names.SERVICE) not in project.spec.services \
                    and obj["kind"] not in DATA_KINDS:
                service = str((obj["metadata"].get("labels") or {}).get(names.SERVICE, "?"))
                found.append(Finding(service, ObjectDrift(str(obj["kind"]), str(obj["metadata"]["name"]), "extra")))
    return found


def reconcile(project: Project, environment: str, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Repair each finding: apply what is missing or changed, replace immutable objects, remove what
    others added and what is extra."""
    emit = on_event or (lambda _event: None)
    target = require_target(project, environment)
    api = open_cluster(target)
    findings = _findings(project, environment, api, target)
    repaired, failures = [], []
    with locks.hold(project.store, environment, "reconcile", current_actor()):
        by_service: dict[str, Expected] = {}
        for finding in findings:
            try:
                if finding.service not in by_service and finding.service in project.spec.services:
                    by_service[finding.service] = expected_of(project, environment, finding.service, api, target)
                _repair(api, finding, by_service.get(finding.service))
                repaired.append(finding.as_finding(environment))
                emit({"event": "repaired", **finding.as_finding(environment)})
            except IngotError as exc:
                failures.append(f"{finding.service}: {exc.message}")
    ledger.record(project.store, actor=current_actor(), action="reconcile", environment=environment,
                  payload={"target": "kubernetes", "repaired": [f["evidence"] for f in repaired],
                           "failures": failures})
    if failures:
        raise OperationFailed("reconcile could not repair everything", details=failures)
    return {"findings": repaired, "started": [], "replaced": [f["evidence"] for f in repaired],
            "stopped_strays": [f["evidence"] for f in repaired if f["kind"].startswith("extra")]}


def _pointer_order(operation: dict[str, Any]) -> list[str]:
    return [part.zfill(8) if part.isdigit() else part for part in str(operation["path"]).split("/")]


def _repair(api: kube_api.KubeApi, finding: Finding, expected: Expected | None) -> None:
    if finding.step is not None:
        step = finding.step
        if step.kind == "scale":
            api.scale(step.deployment, step.replicas or 0)
        elif step.kind == "delete":
            api.delete("Deployment", step.deployment)
        return
    drift = finding.drift
    assert drift is not None
    if drift.problem == "extra":
        api.delete(drift.kind, drift.name)
        return
    assert expected is not None
    wanted = next(o for o in expected.objects if (o["kind"], o["metadata"]["name"]) == (drift.kind, drift.name))
    if drift.problem == "changed" and drift.kind in ("ConfigMap", "Secret"):
        api.delete(drift.kind, drift.name)  # immutable: replaced, never edited
    elif drift.problem == "changed":
        removals = [{"op": "remove", "path": d.pointer} for d in drift.differences
                    if d.manager and d.pointer and not d.pointer.endswith("/-")]
        if removals:
            # Apply never removes another manager's fields; a JSON patch does. Deepest first, so indices hold.
            api.patch_json(drift.kind, drift.name, sorted(removals, key=_pointer_order, reverse=True))
    api.apply(wanted)

