"""Rendering: golden files, byte-for-byte determinism, offline validation against the official schemas.

Golden files live in tests/kube/golden/<case>/, one file per object as `ingot render -o DIR` writes them.
After an intended change to rendering, regenerate them and review the diff:

    INGOT_UPDATE_GOLDEN=1 python -m pytest tests/kube/test_render.py
    git diff tests/kube/golden/

Core objects are validated with kubernetes-validate (the official OpenAPI schemas, strict: unknown fields
are errors) for the oldest and newest Kubernetes it knows; HTTPRoute, a CRD, with the pydantic model in
tests/kube/gateway_api.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ingot.kube import names, render
from ingot.kube.plan import ClusterState, Options, Target, Track, plan_rollout
from ingot.plan.model import CanaryStep
from tests.kube.cases import CASES, GATEWAY, SECRET_VALUES, workload
from tests.kube.gateway_api import HTTPRoute

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = ("1.29", kubernetes_validate.latest_version())


def files(case: str) -> dict[str, str]:
    w, layout = CASES[case]
    return render.files_of(w.project, w.environment, [render.render_release(w, layout, with_job=True)])


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "HTTPRoute":
        HTTPRoute.model_validate(obj)
        return
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} invalid for {version}: {path}: "
                                 f"{exc.message}") from None


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_the_golden_files(case: str) -> None:
    rendered = files(case)
    folder = GOLDEN / case
    if os.environ.get("INGOT_UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        for name, text in rendered.items():
            (folder / name).write_text(text)
    on_disk = {path.name: path.read_text() for path in sorted(folder.iterdir())} if folder.is_dir() else {}
    assert on_disk == rendered, f"regenerate with INGOT_UPDATE_GOLDEN=1 and review `git diff {folder}`"


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_is_deterministic_byte_for_byte(case: str) -> None:
    w, layout = CASES[case]
    first = render.files_of(w.project, w.environment, [render.render_release(w, layout, with_job=True)])
    # The same data with its mappings in another order renders the same bytes.
    shuffled = render.Workload(**{**w.__dict__, "spec": dict(reversed(list(w.spec.items()))),
                                  "config": dict(reversed(list(w.config.items())))})
    assert render.files_of(w.project, w.environment, [render.render_release(shuffled, layout, with_job=True)]) == first
    assert "creationTimestamp" not in "".join(first.values())
    assert "&id" not in "".join(first.values())  # no YAML aliases: every object is plain to read and to diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_object_is_valid(case: str) -> None:
    w, layout = CASES[case]
    for obj in render.render_release(w, layout, SECRET_VALUES, with_job=True).objects:
        validate(obj)


def test_every_object_a_rollout_applies_is_valid() -> None:
    """Beyond the objects at rest: split routes, Services selecting every track, scaled Deployments."""
    w, _layout = CASES["canary-gateway"]
    validate(render.http_route(w, GATEWAY, [("web", 90), ("web-canary", 10)]))
    validate(render.http_route(w, GATEWAY, [("web", 0), ("web-canary", 100)]))
    validate(render.service(w, "web", names.ALL_TRACKS))
    validate(render.deployment(w, 0))
    for case in CASES.values():
        secret = render.secret(case[0], SECRET_VALUES)
        if secret is not None:
            validate(secret)


@pytest.mark.parametrize("strategy", ["blue-green", "canary", "rolling"])
@pytest.mark.parametrize("gateway", [True, False])
def test_every_step_of_every_strategy_renders_valid_objects(strategy: str, gateway: bool) -> None:
    w = workload({}, replicas=4)
    layout = render.Layout(strategy, GATEWAY if gateway else None)
    options = Options(strategy=strategy, steps=(CanaryStep(10, 1.0), CanaryStep(50, None)), traffic=layout.traffic)
    old = workload({}, release="0123456789ab", replicas=4)
    old_name = render.deployment(old)["metadata"]["name"]
    state = ClusterState(tracks=(Track(old_name, old.release, 4),),
                         selectors=tuple((render.service_name(w, role), old_name) for role in layout.services),
                         route=(("web", 100),) if gateway else (), history=(old.release,))
    target = Target("web", render.deployment(w)["metadata"]["name"], w.release, 4)
    plan = plan_rollout(state, target, options)
    assert not plan.empty
    for step in plan.steps:
        if step.kind == "create":
            validate(render.deployment(w, step.replicas))
        elif step.kind == "select":
            assert step.service is not None and step.deployment is not None
            validate(render.service(w, step.service, step.deployment))
        elif step.kind == "route":
            validate(render.http_route(w, GATEWAY, step.weights))


def test_secret_values_are_never_in_what_render_writes() -> None:
    w, layout = CASES["blue-green-config-secrets"]
    written = render.files_of(w.project, w.environment, [render.render_release(w, layout)])
    text = "".join(written.values())
    for value in SECRET_VALUES.values():
        assert value not in text
    assert not any(name.startswith("secret-") for name in written)
    note = written["SECRETS.md"]
    secret = names.secret_name("web", "prod", w.secret_refs)
    assert f"Secret `{secret}`: keys API_KEY, DB_PASSWORD" in note
    assert "ingot kube secrets --env prod" in note
    deployment = yaml.safe_load(next(t for n, t in written.items() if n.startswith("deployment-")))
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "API_KEY"}


def test_the_secret_name_follows_versions_not_values() -> None:
    refs = {"API_KEY": {"environment": "prod", "version": 3}}
    assert names.secret_name("web", "prod", refs) == names.secret_name("web", "prod", dict(refs))
    assert names.secret_name("web", "prod", refs) != names.secret_name(
        "web", "prod", {"API_KEY": {"environment": "prod", "version": 4}})


def test_hardening_defaults_and_relaxations() -> None:
    hardened = render.deployment(CASES["blue-green-minimal"][0])
    pod = hardened["spec"]["template"]["spec"]
    context = pod["containers"][0]["securityContext"]
    assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                       "capabilities": {"drop": ["ALL"]}}
    assert pod["volumes"] == [{"name": "tmpfs-tmp", "emptyDir": {"medium": "Memory"}}]
    assert pod["automountServiceAccountToken"] is False
    relaxed = render.deployment(CASES["canary-replicas-relaxed"][0])["spec"]["template"]["spec"]
    assert relaxed["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False, "runAsNonRoot": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"]}}
    assert "volumes" not in relaxed


def test_the_deployment_name_changes_with_its_pod_template_only() -> None:
    base = workload({})
    name = render.deployment(base)["metadata"]["name"]
    assert name.startswith(f"web-{base.release}-") and len(name) <= 63
    assert render.deployment(workload({}, replicas=7))["metadata"]["name"] == name  # scaling is not a new one
    assert render.deployment(workload({}, health={"interval": "3s"}))["metadata"]["name"] != name
    longest = workload({}, name="s" * 40)
    dep = render.deployment(longest)
    assert len(dep["metadata"]["name"]) <= 63
    validate(dep)


def test_a_worker_has_no_service_no_port_and_no_http_probe() -> None:
    w, layout = CASES["worker-min-ready"]
    objects = render.render_release(w, layout, with_job=True).objects
    assert [o["kind"] for o in objects] == ["Deployment"]  # no Service, no HTTPRoute though a gateway is set
    (dep,) = objects
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in container and "readinessProbe" not in container and "livenessProbe" not in container
    assert "PORT" not in {e["name"] for e in container["env"]}
    assert dep["spec"]["minReadySeconds"] == 15
    slow = workload({"port": None, "command": ["python", "consume.py"], "strategy": {"min_ready": "90s"}})
    assert render.deployment(slow)["spec"]["progressDeadlineSeconds"] == 91  # the server wants it past minReady
    assert layout.services == () and layout.traffic == "replicas"


def test_a_health_command_is_an_exec_probe_in_the_container() -> None:
    w, _layout = CASES["worker-health-command"]
    dep = render.deployment(w)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    # ingot's own variables with one value for all pods are filled in: an exec probe expands nothing.
    exec_ = {"command": ["python", "check.py", w.release]}
    assert container["readinessProbe"] == {"exec": exec_, "periodSeconds": 5, "timeoutSeconds": 2,
                                           "successThreshold": 2, "failureThreshold": 3}
    assert container["startupProbe"]["failureThreshold"] == 12  # the health deadline, 60s at 5s
    assert container["livenessProbe"]["failureThreshold"] == 3 and container["livenessProbe"]["exec"] == exec_
    assert "minReadySeconds" not in dep["spec"]  # the probe says when it is ready
    web, _ = CASES["volumes-release-command"]
    probe = render.deployment(web)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"] == ["curl", "-fsS", "http://127.0.0.1:8000/healthz"] and "httpGet" not in probe


def test_volumes_are_claims_mounted_at_their_paths_and_kept_across_releases() -> None:
    w, layout = CASES["volumes-release-command"]
    objects = render.render_release(w, layout).objects
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["web-cache", "web-uploads"]
    assert claims[0]["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                                 "storageClassName": "fast-ssd"}
    pod = render.deployment(w)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/srv/uploads"] == "volume-uploads" and mounts["/var/cache/app"] == "volume-cache"
    assert {"name": "volume-uploads", "persistentVolumeClaim": {"claimName": "web-uploads"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["INGOT_VOLUME_UPLOADS"] == "/srv/uploads"
    assert pod["securityContext"]["fsGroup"] == 10001  # the app's user can write a fresh (root-owned) volume
    # The claim's name is the service's and the volume's, never the release's: a new release mounts the same data.
    later = workload({**{"volumes": {"uploads": "/srv/uploads"}}}, release="99aa88bb77cc")
    assert [o["metadata"]["name"] for o in render.volume_claims(later)] == ["web-uploads"]
    assert len(names.volume_claim_name("s" * 40, "v" * 40)) <= 63
    # The default size, when the target says none.
    plain = workload({"volumes": {"data": "/data"}})
    assert render.volume_claims(plain)[0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in render.volume_claims(plain)[0]["spec"]


def test_the_release_command_job_runs_the_release_pod_once_with_the_command_swapped() -> None:
    w, _layout = CASES["volumes-release-command"]
    job = render.release_job(w)
    assert job is not None and job["metadata"]["name"] == f"web-release-{w.release}"
    dep_pod = render.deployment(w)["spec"]["template"]["spec"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["python", "manage.py", "migrate"]
    assert container["image"] == w.image and container["env"] == dep_pod["containers"][0]["env"]
    assert container["securityContext"] == dep_pod["containers"][0]["securityContext"]
    assert container["volumeMounts"] == dep_pod["containers"][0]["volumeMounts"]
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & set(container)
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 300
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert names.SERVICE not in labels and labels[names.JOB] == job["metadata"]["name"]  # no Service selects it
    assert render.release_job(CASES["blue-green-minimal"][0]) is None
    # Without with_job (what a deploy applies at rest and drift expects), the Job is not among the objects.
    assert "Job" not in {o["kind"] for o in render.render_release(w, _layout).objects}
    validate(job)
