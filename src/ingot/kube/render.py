"""A release as Kubernetes objects: pure functions from data to plain dicts, deterministic byte for byte.

What runs comes from the release's own snapshot (its spec fields, config and secret versions, image), so
rendering an earlier release for a rollback gives what that release ran. How it runs (replicas, probe
timing) comes from the environment's current spec, and is part of the Deployment's name through its
template digest (see `names.deployment_name`).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ingot.kube import names
from ingot.spec import HealthSpec, SecuritySpec
from ingot.spec.models import DEFAULT_VOLUME_SIZE, GatewayRef, ResourcesSpec, expand_own, volume_variable

Traffic = Literal["gateway", "replicas"]


@dataclass(frozen=True)
class Workload:
    """Everything the objects of one release in one environment are made from."""

    project: str
    environment: str
    service: str
    namespace: str
    release: str
    image: str  # repo@sha256:...
    spec: Mapping[str, Any]  # the release's spec snapshot (ServiceSpec.release_fields())
    config: Mapping[str, Any]  # the release's config snapshot: {"values": {...}, "secrets": {NAME: ref}}
    replicas: int
    health: HealthSpec  # probe timing: the environment's current choice, not the release's
    min_ready: float = 0.0  # a worker without a health command: minReadySeconds (strategy.min_ready)
    volume_size: str = DEFAULT_VOLUME_SIZE  # each volume's claim (target.volume_size)
    storage_class: str | None = None  # target.storage_class; None: the cluster's default

    @property
    def worker(self) -> bool:
        """`port: null`: no Service, no HTTP probe (the snapshot has `port` whenever the release has one)."""
        return "port" in self.spec and self.spec["port"] is None

    @property
    def port(self) -> int:
        return int(self.spec.get("port") or 8000)

    @property
    def health_command(self) -> list[str] | None:
        command = self.spec.get("health_command")
        return [str(part) for part in command] if command else None

    @property
    def volumes(self) -> dict[str, str]:
        """Volume name -> where the container sees it, from the release's snapshot."""
        return {str(k): str(v) for k, v in sorted(dict(self.spec.get("volumes") or {}).items())}

    @property
    def min_ready_seconds(self) -> int:
        """minReadySeconds: for a worker without a health command only (nothing else says it is ready)."""
        return math.ceil(self.min_ready) if self.worker and self.health_command is None else 0

    @property
    def ready_deadline(self) -> float:
        """The health deadline, past minReadySeconds (the API server refuses a progress deadline within it)."""
        return max(self.health.deadline, self.min_ready_seconds + 1.0) if self.min_ready_seconds else \
            self.health.deadline

    @property
    def release_command(self) -> list[str] | None:
        command = self.spec.get("release_command")
        return [str(part) for part in command] if command else None

    @property
    def values(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.config.get("values") or {}).items()}

    @property
    def secret_refs(self) -> dict[str, Any]:
        return dict(self.config.get("secrets") or {})

    @property
    def security(self) -> SecuritySpec:
        return SecuritySpec.model_validate(self.spec.get("security") or {})

    @property
    def resources(self) -> ResourcesSpec | None:
        raw = self.spec.get("resources")
        return ResourcesSpec.model_validate(raw) if raw else None


@dataclass(frozen=True)
class Layout:
    """Which objects a service has besides its Deployments, from its strategy and its target."""

    strategy: str = "blue-green"
    gateway: GatewayRef | None = None  # an HTTPRoute on this Gateway, when the cluster serves the API
    worker: bool = False  # `port: null`: no Service and no HTTPRoute at all

    @property
    def services(self) -> tuple[str, ...]:
        """The Service roles: the stable one always, a preview for blue-green, a canary for canaries;
        none for a worker, which takes no traffic."""
        if self.worker:
            return ()
        if self.strategy == "blue-green":
            return ("stable", "preview")
        if self.strategy == "canary":
            return ("stable", "canary")
        return ("stable",)

    @property
    def traffic(self) -> Traffic:
        return "gateway" if self.gateway is not None and not self.worker else "replicas"


@dataclass(frozen=True)
class WithheldSecret:
    """A Secret left out of manifests written to disk or stdout: its name and key names, never a value."""

    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Rendered:
    objects: tuple[dict[str, Any], ...]
    withheld: tuple[WithheldSecret, ...] = field(default_factory=tuple)
    deployment: str = ""


# ---- the pieces ---------------------------------------------------------------------------------


def _metadata(w: Workload, name: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = names.common_labels(w.project, w.environment, w.service)
    labels.update(extra or {})
    return {"name": name, "namespace": w.namespace, "labels": labels}


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def _volume_name(path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "root"
    name = f"tmpfs-{slug}"
    return name if len(name) <= 63 else f"tmpfs-{names.short_digest(path, 12)}"


def _env(w: Workload, config_map: str | None, secret: str | None) -> list[dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {}
    for key, value in dict(w.spec.get("env") or {}).items():
        env[key] = {"name": key, "value": str(value)}
    for key in sorted(w.values):
        env[key] = {"name": key, "valueFrom": {"configMapKeyRef": {"name": config_map, "key": key}}}
    for key in sorted(w.secret_refs):
        env[key] = {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    # ingot's own variables win over the release's same-named ones, as on the container runtime.
    for key, value in _own_values(w).items():
        env[key] = {"name": key, "value": value}
    env["INGOT_INSTANCE"] = {"name": "INGOT_INSTANCE",
                             "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
    return [env[key] for key in sorted(env)]


def _own_values(w: Workload) -> dict[str, str]:
    """ingot's variables with one value for every pod: no PORT for a worker, a volume's place by its name."""
    values = {"INGOT_RELEASE": w.release, "INGOT_SERVICE": w.service, "INGOT_ENVIRONMENT": w.environment}
    if not w.worker:
        values["PORT"] = str(w.port)
    values.update({volume_variable(name): path for name, path in w.volumes.items()})
    return values


def _volume_mount_name(volume: str) -> str:
    return f"volume-{volume}"  # a spec name is at most 40 characters: within a DNS label


def _security_context(security: SecuritySpec) -> dict[str, Any]:
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": not security.no_new_privileges,
        "readOnlyRootFilesystem": security.read_only,
        "runAsNonRoot": security.run_as_non_root,
    }
    capabilities: dict[str, Any] = {}
    if security.drop_all_capabilities:
        capabilities["drop"] = ["ALL"]
    if security.add_capabilities:
        capabilities["add"] = sorted(security.add_capabilities)
    if capabilities:
        context["capabilities"] = capabilities
    if security.run_as_user is not None:
        context["runAsUser"] = security.run_as_user
    return context


def _probes(w: Workload) -> dict[str, Any]:
    """Readiness by GET health.path, or by health.command run in the container (an exec probe, which also
    keeps the container alive: liveness, after a startup probe allowed the health deadline); a worker
    without a command has none (its Deployment waits minReadySeconds instead)."""
    timing = {"periodSeconds": _seconds(w.health.interval), "timeoutSeconds": _seconds(w.health.timeout)}
    command = w.health_command
    if command is not None:
        argv = expand_own(command, _own_values(w))

        def probe(success: int, failure: int) -> dict[str, Any]:
            # A fresh mapping each: a shared one would be written as a YAML alias.
            return {"exec": {"command": list(argv)}, **timing, "successThreshold": success,
                    "failureThreshold": failure}

        return {"readinessProbe": probe(w.health.healthy_threshold, 3),
                "startupProbe": probe(1, max(1, math.ceil(w.health.deadline / w.health.interval))),
                "livenessProbe": probe(1, w.health.unhealthy_threshold)}
    if w.worker:
        return {}
    return {"readinessProbe": {
        "httpGet": {"path": str((w.spec.get("health") or {}).get("path", w.health.path)), "port": "http"},
        **timing, "successThreshold": w.health.healthy_threshold, "failureThreshold": 3}}


def pod_template(w: Workload) -> dict[str, Any]:
    """The pod template, without the label naming its Deployment (whose name derives from this)."""
    security = w.security
    config_map = names.config_map_name(w.service, w.values) if w.values else None
    secret = names.secret_name(w.service, w.environment, w.secret_refs) if w.secret_refs else None
    container: dict[str, Any] = {
        "name": w.service,
        "image": w.image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env(w, config_map, secret),
        **({} if w.worker else {"ports": [{"containerPort": w.port, "name": "http", "protocol": "TCP"}]}),
        **_probes(w),
        "securityContext": _security_context(security),
    }
    if w.spec.get("command"):
        # The spec's command replaces the image's CMD (as on the container runtime), which is `args` here.
        container["args"] = [str(part) for part in w.spec["command"]]
    resources = w.resources
    if resources is not None:
        container["resources"] = {k: dict(v) for k, v in (("limits", resources.limits),
                                                           ("requests", resources.requests)) if v}
    volumes: list[dict[str, Any]] = [{"name": _volume_name(path), "emptyDir": {"medium": "Memory"}}
                                     for path in security.tmpfs]
    mounts = [{"name": _volume_name(path), "mountPath": path} for path in security.tmpfs]
    for name, path in w.volumes.items():
        volumes.append({"name": _volume_mount_name(name),
                        "persistentVolumeClaim": {"claimName": names.volume_claim_name(w.service, name)}})
        mounts.append({"name": _volume_mount_name(name), "mountPath": path})
    if mounts:
        container["volumeMounts"] = mounts
    labels = names.common_labels(w.project, w.environment, w.service)
    labels.update({names.RELEASE: w.release, "app.kubernetes.io/version": w.release})
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if w.volumes and security.run_as_user is not None:
        # A fresh volume belongs to root; the kubelet hands it to this group so that the app can write it.
        pod_security["fsGroup"] = security.run_as_user
    spec: dict[str, Any] = {
        # The app does not talk to the API server; a token in every pod would only be something to steal.
        "automountServiceAccountToken": False,
        # Service links inject variables for every Service in the namespace: an environment that depends
        # on what else runs there would make the same release run differently.
        "enableServiceLinks": False,
        "containers": [container],
        "securityContext": pod_security,
        "terminationGracePeriodSeconds": _seconds(float(w.spec.get("stop_timeout", 10.0))),
    }
    if volumes:
        spec["volumes"] = volumes
    return {"metadata": {"labels": labels}, "spec": spec}


def deployment(w: Workload, replicas: int | None = None) -> dict[str, Any]:
    template = pod_template(w)
    name = names.deployment_name(w.service, w.release, template)
    template["metadata"]["labels"].update({names.DEPLOYMENT: name, "app.kubernetes.io/instance": name})
    extra = {names.RELEASE: w.release, names.DEPLOYMENT: name, "app.kubernetes.io/version": w.release,
             "app.kubernetes.io/instance": name}
    metadata = _metadata(w, name, extra)
    metadata["annotations"] = {names.TEMPLATE_DIGEST: name.rsplit("-", 1)[1]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": w.replicas if replicas is None else replicas,
            # The health deadline: a rollout that is not Available by then has failed.
            "progressDeadlineSeconds": _seconds(w.ready_deadline),
            # Releases are kept as Deployments; the template never changes, so no ReplicaSet history.
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": {names.SERVICE: w.service, names.DEPLOYMENT: name}},
            "template": template,
            # A worker without a health command has nothing to probe: a pod counts once it has run this long.
            **({"minReadySeconds": w.min_ready_seconds} if w.min_ready_seconds else {}),
        },
    }


JOB_KEPT_SECONDS = 7 * 24 * 3600  # a finished release_command Job (and its pod's log) stays this long


def release_job(w: Workload) -> dict[str, Any] | None:
    """The release_command as a Job: the release's pod (image, env, config, secrets, volumes, security
    context, resources) running the command once, never retried (a migration half-run twice is worse
    than one failure), stopped at release_command_timeout. None: the release has no release_command."""
    command = w.release_command
    if command is None:
        return None
    return command_job(w, command, names.release_job_name(w.service, w.release),
                       float(w.spec.get("release_command_timeout") or 600.0))


def command_job(w: Workload, command: list[str], name: str, deadline: float | None) -> dict[str, Any]:
    """`command` once in a pod of the release `w` (a release_command, an `ingot run`), never retried and
    never sent traffic; stopped after `deadline` seconds (None: runs until it ends)."""
    template = pod_template(w)
    container = template["spec"]["containers"][0]
    for key in ("ports", "readinessProbe", "livenessProbe", "startupProbe"):
        container.pop(key, None)
    container["args"] = command  # it replaces the image's CMD, as on the container runtime
    # The pods carry no SERVICE label: no Service of the service may ever send them traffic.
    pod_labels = {k: v for k, v in template["metadata"]["labels"].items() if k != names.SERVICE}
    pod_labels[names.JOB] = name
    template["metadata"]["labels"] = pod_labels
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(w, name, {names.RELEASE: w.release, "app.kubernetes.io/version": w.release}),
        "spec": {
            **({"activeDeadlineSeconds": _seconds(deadline)} if deadline is not None else {}),
            "backoffLimit": 0,
            "template": template,
            "ttlSecondsAfterFinished": JOB_KEPT_SECONDS,
        },
    }


def volume_claims(w: Workload) -> list[dict[str, Any]]:
    """One PersistentVolumeClaim per named volume: ReadWriteOnce (one node at a time), kept across releases."""
    claims = []
    for name in w.volumes:
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": w.volume_size}}}
        if w.storage_class is not None:
            spec["storageClassName"] = w.storage_class
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": _metadata(w, names.volume_claim_name(w.service, name), {names.VOLUME: name}),
                       "spec": spec})
    return claims


def config_map(w: Workload) -> dict[str, Any] | None:
    if not w.values:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(w, names.config_map_name(w.service, w.values)),
            "immutable": True, "data": dict(sorted(w.values.items()))}


def secret(w: Workload, values: Mapping[str, str]) -> dict[str, Any] | None:
    """The Secret with its values: only ever sent to the API server, never written or printed."""
    if not w.secret_refs:
        return None
    data = {key: base64.b64encode(values[key].encode()).decode() for key in sorted(w.secret_refs)}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _metadata(w, names.secret_name(w.service, w.environment, w.secret_refs)),
            "immutable": True, "data": data}


def service(w: Workload, name: str, selects: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(w, name),
        "spec": {
            "type": "ClusterIP",
            "selector": names.service_selector(w.project, w.environment, w.service, selects),
            "ports": [{"name": "http", "port": names.HTTP_PORT, "protocol": "TCP", "targetPort": "http"}],
        },
    }


def http_route(w: Workload, gateway: GatewayRef, weights: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The Gateway API route of the service: its backends are Services, weighted."""
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace is not None:
        parent["namespace"] = gateway.namespace
    if gateway.section is not None:
        parent["sectionName"] = gateway.section
    backends = [{"group": "", "kind": "Service", "name": name, "port": names.HTTP_PORT, "weight": weight}
                for name, weight in weights]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(w, w.service),
        "spec": {"parentRefs": [parent],
                 "rules": [{"backendRefs": backends,
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]},
    }


def service_name(w: Workload, role: str) -> str:
    return {"stable": w.service, "preview": names.preview_service(w.service),
            "canary": names.canary_service(w.service)}[role]


AT_REST_WEIGHTS = 100  # the stable Service's weight on the route when no canary is under way


def render_release(w: Workload, layout: Layout, secret_values: Mapping[str, str] | None = None, *,
                   with_job: bool = False) -> Rendered:
    """The objects of `w` at rest, every Service pointing at its Deployment, and its volumes' claims.

    Without `secret_values`, the Secret is withheld (named, with its keys) instead of rendered: this is
    what goes to disk or to a terminal. With them, it is what is sent to the API server. `with_job` adds
    the release_command's Job (for `ingot render`: a deploy runs it as its own step, before the rest).
    """
    objects: list[dict[str, Any]] = []
    withheld: list[WithheldSecret] = []
    dep = deployment(w)
    objects.append(dep)
    objects.extend(volume_claims(w))
    job = release_job(w) if with_job else None
    if job is not None:
        objects.append(job)
    name = dep["metadata"]["name"]
    cm = config_map(w)
    if cm is not None:
        objects.append(cm)
    if w.secret_refs:
        if secret_values is None:
            withheld.append(WithheldSecret(names.secret_name(w.service, w.environment, w.secret_refs),
                                           tuple(sorted(w.secret_refs))))
        else:
            sec = secret(w, secret_values)
            assert sec is not None
            objects.append(sec)
    for role in layout.services:
        objects.append(service(w, service_name(w, role), name))
    if layout.gateway is not None and not layout.worker:
        objects.append(http_route(w, layout.gateway, [(w.service, AT_REST_WEIGHTS)]))
    return Rendered(tuple(sorted(objects, key=object_key)), tuple(withheld), name)


# ---- output -------------------------------------------------------------------------------------

KIND_ORDER = {"ConfigMap": 0, "Secret": 1, "PersistentVolumeClaim": 2, "Job": 3, "Deployment": 4, "Service": 5,
              "HTTPRoute": 6}


def object_key(obj: Mapping[str, Any]) -> tuple[int, str]:
    """Apply order: what pods need (config, secrets, volumes, the release_command) before the pods,
    traffic objects after them."""
    return KIND_ORDER.get(str(obj["kind"]), 9), str(obj["metadata"]["name"])


def file_name(obj: Mapping[str, Any]) -> str:
    return f"{str(obj['kind']).lower()}-{obj['metadata']['name']}.yaml"


def to_yaml(obj: Mapping[str, Any]) -> str:
    """One object as YAML: sorted keys, block style, no line folding, so equal objects are equal bytes."""
    return yaml.safe_dump(dict(obj), sort_keys=True, default_flow_style=False, width=10_000, allow_unicode=True)


HEADER_START = "# Rendered by ingot "  # how `ingot render -o` recognises the files it wrote before


def header(project: str, environment: str) -> str:
    return (f"{HEADER_START}for project {project}, environment {environment}. Do not edit: change "
            f"ingot.yaml and run `ingot render --env {environment}` again.\n")


def secrets_note(withheld: Sequence[WithheldSecret], environment: str) -> str:
    """How the withheld Secrets come to exist: from ingot straight to the API server."""
    lines = [
        "# Secrets not written here",
        "",
        "These Secrets hold secret values, so `ingot render` names them without writing them. The",
        "Deployments refer to them by name. Create them in the cluster (values go from ingot's encrypted",
        "store straight to the API server, never to a file or a terminal) before the Deployments start:",
        "",
        f"    ingot kube secrets --env {environment}",
        "",
    ]
    for item in withheld:
        lines.append(f"- Secret `{item.name}`: keys {', '.join(item.keys)}")
    return "\n".join(lines) + "\n"


def files_of(project: str, environment: str, rendered: Sequence[Rendered]) -> dict[str, str]:
    """File name -> content for `ingot render -o DIR`: one object per file, and a note on withheld Secrets."""
    files: dict[str, str] = {}
    withheld: list[WithheldSecret] = []
    for item in rendered:
        for obj in item.objects:
            files[file_name(obj)] = header(project, environment) + to_yaml(obj)
        withheld.extend(item.withheld)
    if withheld:
        files["SECRETS.md"] = secrets_note(withheld, environment)
    return dict(sorted(files.items()))
