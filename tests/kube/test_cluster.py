"""The whole flow against a real cluster: deploy, no false drift, new release, rollback, a failing
release reported with its pods, drift by another client repaired, a canary by replica counts.

Runs when KUBECONFIG points at a cluster, and skips (saying why) otherwise. The cluster needs an image it
can pull, given one of two ways:

- INGOT_KUBE_TEST_IMAGE=repo@sha256:...: an image of tests/containers/app, already in a registry the
  cluster pulls from;
- INGOT_KUBE_TEST_REGISTRY=host:port/path: ingot builds tests/containers/app with the local engine
  (DOCKER_HOST; its base image from scripts/provision-containers) and pushes it there, as `ingot deploy`
  does for `target.registry`.

On kind, with a local registry (kind's documented "local registry" setup, registry:2 on localhost:5001
connected to the kind network):

    kind create cluster --name ingot --config kind-with-registry.yaml
    KUBECONFIG=~/.kube/config INGOT_KUBE_TEST_REGISTRY=localhost:5001/ingot \\
        python -m pytest tests/kube/test_cluster.py -v

On k3s (k3s server --write-kubeconfig-mode 644; a registry it may pull from over plain HTTP is listed in
/etc/rancher/k3s/registries.yaml):

    KUBECONFIG=/etc/rancher/k3s/k3s.yaml INGOT_KUBE_TEST_REGISTRY=registry.local:5000/ingot \\
        python -m pytest tests/kube/test_cluster.py -v

Each run works in its own namespace (ingot-it-<random>) and deletes it at the end.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot import operations
from ingot.errors import OperationFailed
from ingot.kube import names
from ingot.kube.api import ClusterApi
from ingot.project import Project, open_project

APP = Path(__file__).resolve().parents[1] / "containers" / "app"

if not os.environ.get("KUBECONFIG"):
    pytest.skip("KUBECONFIG is not set: no Kubernetes cluster to run against (see this file's docstring for "
                "kind and k3s)", allow_module_level=True)
IMAGE = os.environ.get("INGOT_KUBE_TEST_IMAGE")
REGISTRY = os.environ.get("INGOT_KUBE_TEST_REGISTRY")
if not IMAGE and not REGISTRY:
    pytest.skip("neither INGOT_KUBE_TEST_IMAGE nor INGOT_KUBE_TEST_REGISTRY is set: the cluster needs an image it "
                "can pull", allow_module_level=True)

pytestmark = pytest.mark.timeout(900)


def spec_text(namespace: str, *, greeting: str = "hello", command: str = "", strategy: str = "{type: blue-green}"
              ) -> str:
    source = f"image: {IMAGE}" if IMAGE else "build: app"  # a copy of APP beside the spec (project_with)
    registry = f"\n      registry: {REGISTRY}" if REGISTRY and not IMAGE else ""
    return f"""project: ingotit
services:
  web:
    runtime: docker
    {source}
    port: 8000
    replicas: 2
    env: {{GREETING: "{greeting}"}}
    {command}
    health: {{path: /healthz, interval: 1s, timeout: 2s, healthy_threshold: 1, deadline: 120s}}
    security: {{run_as_user: 10001}}
    strategy: {strategy}
environments:
  it:
    target:
      kind: kubernetes
      namespace: {namespace}{registry}
"""


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    name = f"ingot-it-{uuid.uuid4().hex[:8]}"
    yield name
    from kubernetes import client, config

    config.load_kube_config()
    client.CoreV1Api().delete_namespace(name)


def project_with(tmp_path: Path, namespace: str, **changes: str) -> Project:
    path = tmp_path / "ingot.yaml"
    # A build context must be inside the spec's directory (or its git repository).
    shutil.copytree(APP, tmp_path / "app", dirs_exist_ok=True)
    path.write_text(spec_text(namespace, **changes))
    return open_project(path, tmp_path / "state")


def selected(namespace: str, service: str = "web") -> str:
    live = ClusterApi(None, namespace).get("Service", service)
    assert live is not None
    return str(live["spec"]["selector"][names.DEPLOYMENT])


def replicas(namespace: str) -> dict[str, int]:
    found = ClusterApi(None, namespace).find("Deployment", f"{names.PROJECT}=ingotit")
    return {d["metadata"]["name"]: int(d["spec"]["replicas"]) for d in found}


def ready_endpoints(namespace: str) -> set[str]:
    """The pods the stable Service sends traffic to, as the cluster's EndpointSlices say."""
    from kubernetes import client, config

    config.load_kube_config()
    slices = client.DiscoveryV1Api().list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=web")
    return {e.target_ref.name for s in slices.items for e in (s.endpoints or [])
            if e.conditions and e.conditions.ready and e.target_ref}


def wait_for(check: Any, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(1)


def test_the_whole_flow_on_a_real_cluster(tmp_path: Path, namespace: str) -> None:
    project = project_with(tmp_path, namespace)
    (first,) = operations.deploy(project, "it", ["web"])
    live = selected(namespace)
    assert first.release in live and replicas(namespace) == {live: 2}
    wait_for(lambda: len(ready_endpoints(namespace)) == 2 and all(p.startswith(live) for p in
                                                                  ready_endpoints(namespace)))
    # The real server filled in its defaults: none of them is drift.
    assert operations.drift(project, "it") == []

    project = project_with(tmp_path, namespace, greeting="bonjour")
    (second,) = operations.deploy(project, "it", ["web"])
    new = selected(namespace)
    assert second.release in new and replicas(namespace) == {live: 0, new: 2}
    assert operations.drift(project, "it") == []

    back = operations.rollback(project, "it", "web", None)
    assert back.release == first.release and selected(namespace) == live

    broken = project_with(tmp_path, namespace, greeting="broken",
                          command='command: [python3, -c, "import sys; print(\'no database\'); sys.exit(3)"]')
    with pytest.raises(OperationFailed) as failed:
        operations.deploy(broken, "it", ["web"])
    text = str(failed.value)
    assert "did not become Available" in text and "pod web-" in text
    assert selected(namespace) == live  # the previous release kept serving throughout

    from kubernetes import client, config

    config.load_kube_config()
    client.AppsV1Api().patch_namespaced_deployment(
        live, namespace, {"spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [{"name": "DEBUG", "value": "1"}]}]}}}}, field_manager="kubectl-set")
    (finding,) = operations.drift(project, "it")
    assert "env[name=DEBUG]: set by kubectl-set" in finding["evidence"]["differences"][0]
    operations.reconcile(project, "it")
    assert operations.drift(project, "it") == []


def test_a_canary_by_replica_counts_on_a_real_cluster(tmp_path: Path, namespace: str) -> None:
    strategy = "{type: canary, steps: [{weight: 50, pause: 2s}]}"
    project = project_with(tmp_path, namespace, greeting="canary-1", strategy=strategy)
    operations.deploy(project, "it", ["web"])
    project = project_with(tmp_path, namespace, greeting="canary-2", strategy=strategy)
    (outcome,) = operations.deploy(project, "it", ["web"])
    steps = [(s.name, s.detail.get("selects")) for s in project.store.steps(outcome.deployment or "")
             if s.status == "done" and s.name == "select"]
    assert ("select", names.ALL_TRACKS) in steps
    assert outcome.release in selected(namespace)
    assert operations.drift(project, "it") == []
