"""`ClusterApi` through the official client against a stub API server: the requests it sends (server-side
apply with field manager ingot, scale by merge patch, removals by JSON patch), and the errors it gives.

The stub answers discovery and records every request; it proves the wiring, not Kubernetes' behaviour
(that is what tests/kube/test_cluster.py does against a real cluster).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ingot.errors import OperationFailed, UserInputError
from ingot.kube.api import ClusterApi

CORE = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": ["get", "list", "patch", "delete"]}
    for n, k, ns in (("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
                     ("pods", "Pod", True), ("pods/log", "Pod", True), ("events", "Event", True),
                     ("persistentvolumeclaims", "PersistentVolumeClaim", True), ("namespaces", "Namespace", False))]}
BATCH = {"kind": "APIResourceList", "groupVersion": "batch/v1", "resources": [
    {"name": "jobs", "singularName": "", "namespaced": True, "kind": "Job",
     "verbs": ["get", "list", "patch", "delete"]}]}
APPS = {"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
    {"name": "deployments", "singularName": "", "namespaced": True, "kind": "Deployment",
     "verbs": ["get", "list", "patch", "delete"]},
    {"name": "deployments/scale", "singularName": "", "namespaced": True, "kind": "Scale", "group": "autoscaling",
     "version": "v1", "verbs": ["get", "patch"]}]}
GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
    {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
     "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
    {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
     "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}]}
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
             "message": "deployments.apps \"x\" not found"}


class Stub(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    objects: dict[str, dict[str, Any]] = {}

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        entry = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                 "content_type": self.headers.get("Content-Type"), "body": json.loads(raw) if raw else None}
        self.requests.append(entry)
        return entry

    def do_GET(self) -> None:
        entry = self._record()
        path = entry["path"]
        fixed = {"/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
                 "/api": {"kind": "APIVersions", "versions": ["v1"]}, "/apis": GROUPS, "/api/v1": CORE,
                 "/apis/apps/v1": APPS, "/apis/batch/v1": BATCH}
        if path in fixed:
            self._send(200, fixed[path])
        elif path.endswith("/starting-pod/log"):
            self._send(400, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest",
                             "code": 400, "message": "container \"web\" in pod \"starting-pod\" is waiting to "
                                                     "start: ContainerCreating"})
        elif path.endswith("/log"):
            self._send(200, "line one\nline two\nline three\n", "text/plain")
        elif path in self.objects:
            self._send(200, self.objects[path])
        elif path.endswith("/deployments"):
            self._send(200, {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {},
                             "items": list(self.objects.values())})
        else:
            self._send(404, NOT_FOUND)

    def do_PATCH(self) -> None:
        entry = self._record()
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        self._send(200, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, **body})

    def do_DELETE(self) -> None:
        self._record()
        self._send(404, NOT_FOUND)


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Stub]]:
    Stub.requests = []
    Stub.objects = {"/apis/apps/v1/namespaces/hello-prod/deployments/web-1": {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-1", "namespace": "hello-prod"}}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        "users": [{"name": "stub", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("HOME", str(tmp_path))  # the client's discovery cache goes under it, not a shared /tmp
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    yield Stub
    server.shutdown()


def last(stub: type[Stub], method: str) -> dict[str, Any]:
    return [r for r in stub.requests if r["method"] == method][-1]


def test_apply_is_server_side_with_field_manager_ingot_and_force(stub: type[Stub]) -> None:
    api = ClusterApi(None, "hello-prod")
    api.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-1"}, "spec": {"replicas": 2}})
    sent = last(stub, "PATCH")
    assert sent["path"] == "/apis/apps/v1/namespaces/hello-prod/deployments/web-1"
    assert sent["content_type"] == "application/apply-patch+yaml"
    assert sent["query"]["fieldManager"] == ["ingot"] and sent["query"]["force"] == ["true"]
    assert sent["body"]["spec"] == {"replicas": 2}


def test_scale_and_field_removal_use_their_own_patch_types(stub: type[Stub]) -> None:
    api = ClusterApi(None, "hello-prod")
    api.scale("web-1", 3)
    sent = last(stub, "PATCH")
    assert sent["content_type"] == "application/merge-patch+json" and sent["body"] == {"spec": {"replicas": 3}}
    api.patch_json("Deployment", "web-1", [{"op": "remove", "path": "/spec/template/spec/containers/0/env/3"}])
    sent = last(stub, "PATCH")
    assert sent["content_type"] == "application/json-patch+json"
    assert sent["body"] == [{"op": "remove", "path": "/spec/template/spec/containers/0/env/3"}]


def test_reads_discovery_missing_objects_deletes_and_logs(stub: type[Stub]) -> None:
    api = ClusterApi(None, "hello-prod")
    assert api.serves("Deployment") and not api.serves("HTTPRoute")
    assert api.get("Deployment", "web-1") == stub.objects["/apis/apps/v1/namespaces/hello-prod/deployments/web-1"]
    assert api.get("Deployment", "nope") is None
    assert [d["metadata"]["name"] for d in api.find("Deployment", "ingot.dev/project=hello")] == ["web-1"]
    assert last(stub, "GET")["query"]["labelSelector"] == ["ingot.dev/project=hello"]
    api.delete("Deployment", "gone-already")  # 404 is fine
    assert api.log_tail("web-1-abc", "web", 2) == ["line two", "line three"]
    log = [r for r in stub.requests if r["path"].endswith("/log")][-1]
    assert log["query"]["container"] == ["web"] and log["query"]["tailLines"] == ["2"]


def test_an_unreachable_cluster_and_a_missing_kubeconfig_are_said_plainly(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(OperationFailed) as failed:
        ClusterApi(None, "hello-prod")
    assert "cannot reach the cluster's API server at http://127.0.0.1:9" in failed.value.message
    assert "Connection refused" in failed.value.message
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserInputError, match="cannot use the kubeconfig"):
        ClusterApi("prod", "hello-prod")


def test_jobs_and_claims_go_to_their_apis_and_a_job_is_deleted_with_its_pods(stub: type[Stub]) -> None:
    api = ClusterApi(None, "hello-prod")
    api.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "web-release-abc"}, "spec": {}})
    assert last(stub, "PATCH")["path"] == "/apis/batch/v1/namespaces/hello-prod/jobs/web-release-abc"
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "web-data"}, "spec": {}})
    assert last(stub, "PATCH")["path"] == "/api/v1/namespaces/hello-prod/persistentvolumeclaims/web-data"
    api.delete("Job", "web-release-abc")
    sent = last(stub, "DELETE")
    # The API's default for a Job orphans its pods: a stopped release_command would go on running.
    assert sent["path"].endswith("/jobs/web-release-abc") and sent["query"]["propagationPolicy"] == ["Background"]
    assert api.pod_log("web-release-abc-x1", "web") == ["line one", "line two", "line three"]
    assert api.pod_log("starting-pod", "web") is None  # not started yet: nothing to read, not an error
