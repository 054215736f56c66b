"""Drift against realistic server answers: server defaults are never drift; real changes always are."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from ingot.kube import render
from ingot.kube.drift import compare, compare_objects, foreign_fields
from ingot.kube.render import Layout
from tests.kube.cases import CASES, GATEWAY, SECRET_VALUES, workload
from tests.kube.server import fields_v1, managed, server_view

W, LAYOUT = CASES["blue-green-config-secrets"]


def rendered(kind: str, case: str = "blue-green-config-secrets") -> dict[str, Any]:
    w, layout = CASES[case]
    objects = render.render_release(w, layout, SECRET_VALUES).objects
    return copy.deepcopy(next(o for o in objects if o["kind"] == kind))


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_object_as_the_server_returns_it_shows_no_drift(case: str) -> None:
    w, layout = CASES[case]
    objects = render.render_release(w, layout, SECRET_VALUES).objects
    for obj in objects:
        live = server_view(obj)
        assert compare(obj, live) == [], obj["kind"]
        if obj["kind"] != "PersistentVolumeClaim":  # its binding is the volume controller's: see below
            assert foreign_fields(obj, live) == [], obj["kind"]
    assert compare_objects(objects, [server_view(obj) for obj in objects]) == []


def test_a_claims_binding_is_not_drift_but_its_size_is() -> None:
    claim = rendered("PersistentVolumeClaim", "volumes-release-command")
    live = server_view(claim)
    assert foreign_fields(claim, live)  # the binder's fields are there, set by another manager...
    assert compare_objects([claim], [live]) == []  # ...and are not drift
    live["spec"]["resources"]["requests"]["storage"] = "1Gi"
    (changed,) = compare_objects([claim], [live])
    assert changed.problem == "changed" and "spec.resources.requests.storage" in changed.differences[0].path


def test_the_server_defaults_are_really_there() -> None:
    """The fixture is only worth something if it carries what a naive diff would trip over."""
    live = server_view(rendered("Deployment"))
    assert live["spec"]["strategy"]["type"] == "RollingUpdate"
    assert container(live)["terminationMessagePath"] == "/dev/termination-log"
    assert container(live)["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert live["spec"]["template"]["metadata"]["creationTimestamp"] is None
    assert live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert [e["manager"] for e in live["metadata"]["managedFields"]] == ["ingot", "kube-controller-manager",
                                                                          "kube-controller-manager"]
    assert live != rendered("Deployment")


def test_cpu_quantities_rewritten_by_the_server_are_the_same_value() -> None:
    obj = rendered("Deployment")
    container(obj)["resources"]["requests"]["cpu"] = "0.5"
    container(obj)["resources"]["limits"]["cpu"] = "1000m"
    live = server_view(obj)
    assert container(live)["resources"]["requests"]["cpu"] == "500m"
    assert container(live)["resources"]["limits"]["cpu"] == "1"
    assert compare(obj, live) == []
    container(live)["resources"]["limits"]["memory"] = "512Mi"
    assert [d.path for d in compare(obj, live)] == [
        "spec.template.spec.containers[name=web].resources.limits.memory"]


SERVICE_FROM_A_SERVER = """
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2026-11-22T10:00:00Z"
  labels:
    app.kubernetes.io/managed-by: ingot
    app.kubernetes.io/name: web
    app.kubernetes.io/part-of: hello
    ingot.dev/environment: prod
    ingot.dev/project: hello
    ingot.dev/service: web
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:labels:
          f:app.kubernetes.io/managed-by: {}
          f:app.kubernetes.io/name: {}
          f:app.kubernetes.io/part-of: {}
          f:ingot.dev/environment: {}
          f:ingot.dev/project: {}
          f:ingot.dev/service: {}
      f:spec:
        f:ports:
          k:{"port":80,"protocol":"TCP"}:
            .: {}
            f:name: {}
            f:port: {}
            f:protocol: {}
            f:targetPort: {}
        f:selector: {}
        f:type: {}
    manager: ingot
    operation: Apply
    time: "2026-11-22T10:00:00Z"
  name: web
  namespace: hello-prod
  resourceVersion: "812"
  uid: 6f1c2e0a-2b7d-4f57-9a51-0d6f4c5e9b10
spec:
  clusterIP: 10.43.97.12
  clusterIPs:
  - 10.43.97.12
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
  selector:
    ingot.dev/deployment: DEPLOYMENT
    ingot.dev/environment: prod
    ingot.dev/project: hello
    ingot.dev/service: web
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"""


def test_a_service_as_kubectl_get_shows_it_has_no_drift_and_a_moved_selector_is_drift() -> None:
    want = render.service(W, "web", "web-5e0c1d2a3b4f-abcdef")
    live = yaml.safe_load(SERVICE_FROM_A_SERVER.replace("DEPLOYMENT", "web-5e0c1d2a3b4f-abcdef"))
    assert compare(want, live) == []
    assert foreign_fields(want, live) == []
    moved = yaml.safe_load(SERVICE_FROM_A_SERVER.replace("DEPLOYMENT", "web-000000000000-abcdef"))
    (difference,) = compare(want, moved)
    assert difference.path == "spec.selector.ingot.dev/deployment"
    assert difference.actual == "web-000000000000-abcdef"


def test_an_http_route_with_a_controllers_status_has_no_drift() -> None:
    w, _layout = CASES["canary-gateway"]
    want = render.http_route(w, GATEWAY, [("web", 90), ("web-canary", 10)])
    live = server_view(want)
    assert live["status"]["parents"][0]["conditions"][0]["type"] == "Accepted"
    assert compare(want, live) == [] and foreign_fields(want, live) == []
    live["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    assert [d.describe() for d in compare(want, live)] == [
        "spec.rules[0].backendRefs[name=web-canary].weight: 50 (ingot sets 10)"]


def test_kubectl_edit_of_the_image_is_drift_reported_once() -> None:
    want = rendered("Deployment")
    live = server_view(want)
    container(live)["image"] = "registry.example.com/team/hello-web:hotfix"
    live["metadata"]["managedFields"].append(managed("kubectl-edit", "Update", {"f:spec": {"f:template": {"f:spec": {
        "f:containers": {'k:{"name":"web"}': {"f:image": {}}}}}}}))
    differences = compare(want, live)
    assert [d.path for d in differences] == ["spec.template.spec.containers[name=web].image"]
    assert foreign_fields(want, live) == []  # a field ingot sets too: compare reports it, with ingot's value


def test_an_env_var_added_by_kubectl_set_env_is_foreign_with_its_manager_and_pointer() -> None:
    want = rendered("Deployment")
    live = server_view(want)
    container(live)["env"].append({"name": "DEBUG", "value": "1"})
    live["metadata"]["managedFields"].append(managed("kubectl-set", "Update", {"f:spec": {"f:template": {"f:spec": {
        "f:containers": {'k:{"name":"web"}': {"f:env": {'k:{"name":"DEBUG"}': {".": {}, "f:name": {},
                                                                                "f:value": {}}}}}}}}}))
    (found,) = foreign_fields(want, live)
    assert found.path == "spec.template.spec.containers[name=web].env[name=DEBUG]"
    assert found.manager == "kubectl-set"
    assert found.actual == {"name": "DEBUG", "value": "1"}
    index = len(container(live)["env"]) - 1
    assert found.pointer == f"/spec/template/spec/containers/0/env/{index}"
    (drift,) = compare_objects([want], [live])
    assert drift.problem == "changed"
    assert [d.manager for d in drift.differences] == ["kubectl-set"]  # not reported twice
    assert "remove the fields others set" in drift.repair


def test_a_privileged_flag_slipped_in_is_foreign() -> None:
    want = rendered("Deployment")
    live = server_view(want)
    container(live)["securityContext"]["privileged"] = True
    live["metadata"]["managedFields"].append(managed("kubectl-patch", "Update", {"f:spec": {"f:template": {
        "f:spec": {"f:containers": {'k:{"name":"web"}': {"f:securityContext": {"f:privileged": {}}}}}}}}))
    (found,) = foreign_fields(want, live)
    assert found.describe() == ("spec.template.spec.containers[name=web].securityContext.privileged: set by "
                                "kubectl-patch to true (ingot sets nothing there)")
    assert found.pointer == "/spec/template/spec/containers/0/securityContext/privileged"


def test_a_hardening_field_removed_is_missing() -> None:
    want = rendered("Deployment")
    live = server_view(want)
    del container(live)["securityContext"]["readOnlyRootFilesystem"]
    (difference,) = compare(want, live)
    assert difference.describe() == ("spec.template.spec.containers[name=web].securityContext."
                                     "readOnlyRootFilesystem: missing (ingot sets true)")


def test_replicas_scaled_by_hand_are_drift() -> None:
    want = rendered("Deployment")
    live = server_view(want)
    live["spec"]["replicas"] = 1
    assert [d.describe() for d in compare(want, live)] == ["spec.replicas: 1 (ingot sets 3)"]


def test_secret_drift_never_shows_a_value() -> None:
    want = rendered("Secret")
    live = server_view(want)
    live["data"]["API_KEY"] = "Y2hhbmdlZA=="
    live["data"]["EXTRA"] = "ZXh0cmE="
    live["metadata"]["managedFields"].append(managed("kubectl-edit", "Update", {"f:data": {"f:EXTRA": {}}}))
    (drift,) = compare_objects([want], [live])
    text = json.dumps(drift.as_dict()) + json.dumps([d.as_dict() for d in drift.differences])
    for value in [*SECRET_VALUES.values(), "Y2hhbmdlZA==", "ZXh0cmE=", *want["data"].values()]:
        assert value not in text
    assert 'data.API_KEY: "(secret: differs)" (ingot sets "(secret)")' in drift.as_dict()["differences"]
    assert drift.repair.startswith("replace it")


def test_missing_and_extra_objects_and_kept_deployments() -> None:
    objects = list(render.render_release(W, LAYOUT, SECRET_VALUES).objects)
    live = [server_view(o) for o in objects if o["kind"] != "Service"]
    kept = workload({}, release="0123456789ab")
    old = server_view(render.deployment(kept, 0))
    stray = server_view(render.service(W, "web-debug", "web-x"))
    found = compare_objects(objects, [*live, old, stray], tolerated=[("Deployment", old["metadata"]["name"])])
    assert sorted((d.problem, d.kind, d.name) for d in found) == [
        ("extra", "Service", "web-debug"), ("missing", "Service", "web"), ("missing", "Service", "web-preview")]


def test_fields_v1_encodes_keyed_lists_as_the_server_does() -> None:
    fields = fields_v1(render.service(W, "web", "x"), "Service")
    assert 'k:{"port":80,"protocol":"TCP"}' in fields["f:spec"]["f:ports"]
    deployment = fields_v1(rendered("Deployment"), "Deployment")
    containers = deployment["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert 'k:{"containerPort":8080,"protocol":"TCP"}' in containers['k:{"name":"web"}']["f:ports"]
    assert Layout("canary", GATEWAY).traffic == "gateway"
