"""Whole cluster flows against the in-memory cluster: deploy, failure report, rollback, canary, analysis,
steering, drift and repair, all recorded in the store and the ledger like the agent's deployments."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot import config_ops, ledger, operations
from ingot.errors import OperationFailed
from ingot.kube import operations as kube
from ingot.kube import rollout
from ingot.project import Project, open_project
from tests.kube.fake_cluster import FakeCluster

IMAGE = "registry.example.com/team/hello-web@sha256:" + "ab" * 32
BROKEN = "registry.example.com/team/hello-web@sha256:" + "cd" * 32
SPEC = """project: hello
services:
  web:
    runtime: docker
    image: {image}
    port: 8000
    replicas: 2
    env: {{GREETING: "{greeting}"}}
    health: {{path: /healthz, interval: 1s, deadline: 20s}}
    strategy: {strategy}
environments:
  prod:
    target:
      kind: kubernetes
      namespace: hello-prod
{extra}"""


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster()
    monkeypatch.setattr(kube, "connect", lambda context, namespace: fake)
    monkeypatch.setenv("INGOT_ACTOR", "tester@test")
    return fake


def project_at(tmp_path: Path, *, image: str = IMAGE, greeting: str = "hello",
               strategy: str = "{type: blue-green}", extra: str = "") -> Project:
    path = tmp_path / "ingot.yaml"
    path.write_text(SPEC.format(image=image, greeting=greeting, strategy=strategy, extra=extra))
    return open_project(path, tmp_path / "state")


def deploy(project: Project) -> Any:
    (outcome,) = operations.deploy(project, "prod", ["web"])
    return outcome


def actions(project: Project) -> list[str]:
    return [e.action for e in ledger.entries(project.store)]


def wait_for_pause(tmp_path: Path) -> None:
    """Until the rollout running in another thread has started its manual pause (read from the ledger)."""
    reader = open_project(tmp_path / "ingot.yaml", tmp_path / "state")
    end = time.monotonic() + 30
    while not any(e.payload.get("step") == "pause" and e.payload.get("status") == "started"
                  for e in ledger.entries(reader.store, actions=["deploy.step"])):
        assert time.monotonic() < end, "the rollout never reached its pause"
        time.sleep(0.05)


def test_first_deploy_applies_everything_and_records_it(tmp_path: Path, cluster: FakeCluster) -> None:
    project = project_at(tmp_path)
    outcome = deploy(project)
    (name,) = cluster.deployment_names()
    assert name.startswith(f"web-{outcome.release}-")
    assert cluster.replicas() == {name: 2}
    assert cluster.selects("web") == name and cluster.selects("web-preview") == name
    assert outcome.url == "Service web in namespace hello-prod"
    assert ("hello-prod" in cluster.namespaces)
    history = operations.history(project, "prod")
    assert [(h["kind"], h["release"], h["outcome"]) for h in history] == [("deploy", outcome.release, "succeeded")]
    assert actions(project)[-2:] == ["deploy.step", "deploy.finish"]
    assert "deploy.start" in actions(project)
    applied = [call for call in cluster.calls if call[0] == "apply"]
    assert ("apply", "Deployment", name) in applied
    again = deploy(project)
    assert again.nothing_changed and again.release == outcome.release


def test_a_new_release_switches_the_selector_and_keeps_the_old_scaled_to_zero(tmp_path: Path,
                                                                              cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path))
    project = project_at(tmp_path, greeting="bonjour")
    second = deploy(project)
    assert second.release != first.release
    old = next(n for n in cluster.deployment_names() if first.release in n)
    new = next(n for n in cluster.deployment_names() if second.release in n)
    assert cluster.replicas() == {old: 0, new: 2}
    assert cluster.selects("web") == new
    rolled = operations.rollback(project, "prod", "web", None)
    assert rolled.release == first.release
    assert cluster.selects("web") == old and cluster.replicas() == {old: 2, new: 0}
    assert [h["kind"] for h in operations.history(project, "prod")] == ["rollback", "deploy", "deploy"]


def test_a_release_row_changed_in_the_database_is_never_rolled_out(tmp_path: Path, cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path))
    project = project_at(tmp_path, greeting="bonjour")
    second = deploy(project)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "state.db")) as db, db:
        spec = json.loads(db.execute("SELECT spec_json FROM releases WHERE id = ?", (first.release,)).fetchone()[0])
        spec["env"] = {**spec.get("env", {}), "GREETING": "owned"}
        db.execute("DROP TRIGGER releases_no_update")
        db.execute("UPDATE releases SET spec_json = ? WHERE id = ?", (json.dumps(spec), first.release))
    applied_before = list(cluster.calls)
    with pytest.raises(OperationFailed, match="was refused"):
        operations.rollback(project, "prod", "web", None)
    new = next(n for n in cluster.deployment_names() if second.release in n)
    assert cluster.selects("web") == new  # still the release that was live
    assert [c for c in cluster.calls[len(applied_before):] if c[0] == "apply"] == []  # nothing applied
    assert "release.refused" in actions(project)


def test_a_crashing_release_fails_with_its_pods_events_and_logs_and_the_old_keeps_serving(
        tmp_path: Path, cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path))
    cluster.crashing.add(BROKEN)
    project = project_at(tmp_path, image=BROKEN)
    with pytest.raises(OperationFailed) as failed:
        deploy(project)
    text = str(failed.value)
    assert "did not become Available" in text and "CrashLoopBackOff" in text
    assert "event Warning BackOff: Back-off restarting failed container" in text
    assert "| RuntimeError: the database is not there" in text
    assert f"release {first.release}" in text and "serves, as before" in text
    (kept,) = cluster.deployment_names()  # the failed Deployment is gone
    assert first.release in kept and cluster.selects("web") == kept and cluster.replicas()[kept] == 2
    assert actions(project)[-1] == "deploy.fail"
    assert operations.history(project, "prod")[0]["outcome"] == "failed"


def test_config_and_secrets_reach_the_cluster_but_never_the_ledger_or_disk(tmp_path: Path,
                                                                           cluster: FakeCluster) -> None:
    project = project_at(tmp_path).spec.path.write_text(
        SPEC.format(image=IMAGE, greeting="hi", strategy="{type: blue-green}", extra="")
        .replace("    port: 8000\n", "    port: 8000\n    config: [FLAG]\n    secrets: [API_KEY]\n"))
    project = open_project(tmp_path / "ingot.yaml", tmp_path / "state")
    config_ops.set_configs(project, "prod", [("FLAG", "on")])
    config_ops.set_secret(project, "prod", "API_KEY", "value-that-must-stay-secret")
    deploy(project)
    secrets = [obj for (kind, _), obj in cluster.objects.items() if kind == "Secret"]
    (secret,) = secrets
    assert secret["immutable"] is True and set(secret["data"]) == {"API_KEY"}
    config_map = next(obj for (kind, _), obj in cluster.objects.items() if kind == "ConfigMap")
    assert config_map["data"] == {"FLAG": "on"}
    everything = json.dumps([e.as_dict() for e in ledger.entries(project.store)])
    assert "value-that-must-stay-secret" not in everything
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert b"value-that-must-stay-secret" not in path.read_bytes()
    files = kube.manifests(project, "prod", kube.render_environment(project, "prod", ["web"]))
    assert "value-that-must-stay-secret" not in "".join(files.values())
    assert "SECRETS.md" in files
    assert kube.apply_secrets(project, "prod", ["web"]) == [secret["metadata"]["name"]]


def test_canary_on_a_gateway_moves_route_weights(tmp_path: Path, cluster: FakeCluster) -> None:
    cluster.gateway_api = True
    extra = "      gateway: {name: public, namespace: gateways}\n"
    strategy = "{type: canary, steps: [{weight: 20, pause: 10ms}, {weight: 60, pause: 10ms}]}"
    first = deploy(project_at(tmp_path, strategy=strategy, extra=extra))
    route = cluster.objects[("HTTPRoute", "web")]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"group": "", "kind": "Service", "name": "web", "port": 80,
                                                         "weight": 100}]
    project = project_at(tmp_path, greeting="bonjour", strategy=strategy, extra=extra)
    second = deploy(project)
    weights = [s.detail["weights"] for s in project.store.steps(second.deployment)
               if s.name == "route" and s.status == "done"]
    assert weights == [{"web": 80, "web-canary": 20}, {"web": 40, "web-canary": 60}, {"web": 100}]
    new = next(n for n in cluster.deployment_names() if second.release in n)
    assert cluster.selects("web") == new and cluster.selects("web-canary") == new
    assert first.release != second.release


def test_without_the_gateway_api_a_canary_splits_by_replicas(tmp_path: Path, cluster: FakeCluster) -> None:
    extra = "      gateway: {name: public}\n"  # configured, but this cluster does not serve HTTPRoute
    strategy = "{type: canary, steps: [{weight: 50, pause: 10ms}]}"
    deploy(project_at(tmp_path, strategy=strategy, extra=extra))
    project = project_at(tmp_path, greeting="bonjour", strategy=strategy, extra=extra)
    second = deploy(project)
    steps = [(s.name, s.detail.get("replicas"), s.detail.get("selects")) for s in project.store.steps(second.deployment)
             if s.status == "done" and s.name in ("create", "scale", "select")]
    assert steps[:3] == [("create", 1, None), ("scale", 1, None), ("select", None, "*")]
    assert ("HTTPRoute", "web") not in cluster.objects


def test_a_failed_prometheus_analysis_in_the_window_switches_back(tmp_path: Path, cluster: FakeCluster,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    second_release: list[str] = []

    def answers(url: str) -> Any:
        def ask(query: str) -> float | None:
            asked.append(query)
            if query.startswith("requests"):
                return 100.0
            return 0.25 if second_release and second_release[0] in query else 0.0
        return ask

    monkeypatch.setattr(rollout, "http_query", answers)
    extra = ("      prometheus:\n        url: http://prometheus:9090\n"
             "        requests: 'requests{deployment=\"$deployment\"}[$interval]'\n"
             "        error_rate: 'sum(rate(errors{pod=~\"$deployment-.*\"}[$interval]))'\n")
    strategy = "{type: blue-green, verification: 1s, analysis: {interval: 100ms, min_requests: 1}}"
    first = deploy(project_at(tmp_path, strategy=strategy, extra=extra))
    project = project_at(tmp_path, greeting="bonjour", strategy=strategy, extra=extra)
    expected = kube._expected_release(project, "prod", "web", project.spec.service_for("prod", "web"))
    assert expected is not None
    second_release.append(expected.id)
    with pytest.raises(OperationFailed, match="analysis failed") as failed:
        deploy(project)
    old = next(n for n in cluster.deployment_names() if first.release in n)
    assert cluster.selects("web") == old and cluster.replicas() == {old: 2}
    assert f"release {first.release}" in str(failed.value)
    assert any("[1s]" in q for q in asked)  # $interval of 100ms rounds up to Prometheus' smallest: 1s
    assert "deploy.analysis" in actions(project)


def test_manual_pause_waits_for_ingot_resume_from_another_terminal(tmp_path: Path, cluster: FakeCluster,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.Rollout, "poll", 0.02)
    strategy = "{type: canary, steps: [{weight: 50, pause: manual}]}"
    deploy(project_at(tmp_path, strategy=strategy))
    project = project_at(tmp_path, greeting="bonjour", strategy=strategy)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(deploy(project)))
    worker.start()
    wait_for_pause(tmp_path)
    time.sleep(0.2)
    assert worker.is_alive() and not done
    other = open_project(tmp_path / "ingot.yaml", tmp_path / "state")
    assert operations.control(other, "prod", "web", "resume") == {"services": ["web"], "action": "resume"}
    worker.join(10)
    assert done and not done[0].nothing_changed


def test_abort_from_another_terminal_puts_traffic_back(tmp_path: Path, cluster: FakeCluster,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.Rollout, "poll", 0.02)
    strategy = "{type: canary, steps: [{weight: 50, pause: manual}]}"
    first = deploy(project_at(tmp_path, strategy=strategy))
    project = project_at(tmp_path, greeting="bonjour", strategy=strategy)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            deploy(project)
        except OperationFailed as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for_pause(tmp_path)
    operations.control(open_project(tmp_path / "ingot.yaml", tmp_path / "state"), "prod", None, "abort")
    worker.join(10)
    assert errors and "aborted by tester@test" in str(errors[0])
    (name,) = cluster.deployment_names()
    assert first.release in name and cluster.selects("web") == name and cluster.replicas() == {name: 2}
    assert actions(project)[-1] == "deploy.abort"


@pytest.fixture
def deployed(tmp_path: Path, cluster: FakeCluster) -> Iterator[Project]:
    project = project_at(tmp_path)
    deploy(project)
    assert operations.drift(project, "prod") == []
    yield project


def test_drift_finds_a_variable_set_by_hand_and_reconcile_removes_it(deployed: Project,
                                                                     cluster: FakeCluster) -> None:
    from tests.kube.server import managed

    (name,) = cluster.deployment_names()
    live = cluster.objects[("Deployment", name)]
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DEBUG", "value": "1"})
    live["metadata"]["managedFields"].append(managed("kubectl-set", "Update", {"f:spec": {"f:template": {"f:spec": {
        "f:containers": {'k:{"name":"web"}': {"f:env": {'k:{"name":"DEBUG"}': {".": {}, "f:name": {},
                                                                                "f:value": {}}}}}}}}}))
    (finding,) = operations.drift(deployed, "prod")
    assert finding["kind"] == "changed Deployment" and finding["instance"] is None
    assert "env[name=DEBUG]: set by kubectl-set" in finding["evidence"]["differences"][0]
    result = operations.reconcile(deployed, "prod")
    assert len(result["findings"]) == 1
    assert ("patch", "Deployment", name) in cluster.calls
    assert operations.drift(deployed, "prod") == []
    assert "reconcile" in actions(deployed)


def test_drift_finds_missing_extra_and_scaled_objects_and_reconcile_repairs_them(
        deployed: Project, cluster: FakeCluster) -> None:
    (name,) = cluster.deployment_names()
    cluster.delete("Service", "web-preview")
    cluster.scale(name, 1)
    stray = dict(cluster.objects[("Service", "web")])
    stray = json.loads(json.dumps(stray))
    stray["metadata"]["name"] = "web-debug"
    cluster.objects[("Service", "web-debug")] = stray
    kinds = sorted(f["kind"] for f in operations.drift(deployed, "prod"))
    assert kinds == ["changed Deployment", "extra Service", "missing Service"]
    operations.reconcile(deployed, "prod")
    assert operations.drift(deployed, "prod") == []
    assert cluster.replicas() == {name: 2} and ("Service", "web-debug") not in cluster.objects


def test_plan_on_a_cluster_is_data(deployed: Project, tmp_path: Path, cluster: FakeCluster) -> None:
    (item,) = operations.plan(deployed, "prod", ["web"])
    assert item["steps"] == [] and item["traffic"] == "replicas"
    changed = project_at(tmp_path, greeting="bonjour")
    (item,) = operations.plan(changed, "prod", ["web"])
    assert [s["kind"] for s in item["steps"]] == ["create", "select", "wait_available", "select", "scale"]
    assert len(cluster.deployment_names()) == 1  # planning changed nothing


def test_status_shows_the_live_release_and_its_pods(deployed: Project, cluster: FakeCluster) -> None:
    report = operations.status(deployed, "prod")
    (item,) = report["services"]
    (name,) = cluster.deployment_names()
    assert item["release"] in name and item["target"]["deployment"] == name
    assert [i["health"] for i in item["instances"]] == ["healthy", "healthy"]
    assert report["agent"] == {"running": False, "note": "not used: prod runs on Kubernetes"}
    assert item["hardening"] == {"relaxed": [], "reason": None}


def test_a_release_of_a_local_image_is_refused_before_anything_is_applied(tmp_path: Path,
                                                                          cluster: FakeCluster) -> None:
    from ingot.errors import UserInputError
    from ingot.releases import load_or_create_key, new_release

    project = project_at(tmp_path)
    local = new_release(key=load_or_create_key(project.paths.keys), project="hello", service="web",
                        artifact_digest="sha256:" + "12" * 32, spec={"runtime": "docker"}, config={"values": {}},
                        actor="t")
    with pytest.raises(UserInputError, match="only in this machine's container engine: a cluster cannot pull it"):
        kube.roll(project, "prod", "web", local, True, "promote", cluster, lambda _e: None)
    assert cluster.calls == []
