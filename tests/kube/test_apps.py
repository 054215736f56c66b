"""What an application needs besides its web pods, on a cluster (the in-memory one): the release_command as
a Job before the Deployment changes, workers without Services, volumes as claims, and the hooks and
webhooks that run around any deploy. No real cluster here: tests/kube/test_cluster.py is the one for that.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ingot import config_ops, ledger, oneoff, operations
from ingot.agent.client import AgentClient
from ingot.errors import OperationFailed, UserInputError
from ingot.kube import names
from ingot.kube import operations as kube
from ingot.project import Project, open_project
from tests.kube.fake_cluster import FakeCluster
from tests.support.harness import poll

IMAGE = "registry.example.com/team/hello-web@sha256:" + "ab" * 32
SPEC = """project: hello
services:
  web:
    runtime: docker
    image: {image}
    port: {port}
    replicas: 2
    env: {{GREETING: "{greeting}"}}
    health: {{path: /healthz, interval: 1s, deadline: 20s}}
    strategy: {strategy}
{extra}environments:
  prod:
    target:
      kind: kubernetes
      namespace: hello-prod
{target}"""
MIGRATE = "    release_command: [python, manage.py, migrate]\n"
BAD_MIGRATE = "    release_command: [python, manage.py, migrate, --broken]\n"
RECEIVER_PORT = 24017


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster()
    monkeypatch.setattr(kube, "connect", lambda context, namespace: fake)
    monkeypatch.setenv("INGOT_ACTOR", "tester@test")
    return fake


def project_at(tmp_path: Path, *, greeting: str = "hello", extra: str = "", port: str = "8000",
               strategy: str = "{type: blue-green}", target: str = "") -> Project:
    path = tmp_path / "ingot.yaml"
    path.write_text(SPEC.format(image=IMAGE, greeting=greeting, extra=extra, port=port, strategy=strategy,
                                target=target))
    return open_project(path, tmp_path / "state")


def deploy(project: Project, events: list[dict[str, Any]] | None = None) -> Any:
    (outcome,) = operations.deploy(project, "prod", ["web"], on_event=events.append if events is not None else None)
    return outcome


def payloads(project: Project, action: str) -> list[dict[str, Any]]:
    return [e.payload for e in ledger.entries(project.store, actions=[action])]


def applied(cluster: FakeCluster) -> list[tuple[str, str]]:
    return [(kind, name) for verb, kind, name in cluster.calls if verb == "apply"]


# ---- release_command ---------------------------------------------------------------------------------


def test_the_release_command_runs_as_a_job_before_the_deployment_and_its_log_is_streamed_and_kept(
        tmp_path: Path, cluster: FakeCluster) -> None:
    project = project_at(tmp_path, extra=MIGRATE + "    secrets: [DB_PASSWORD]\n")
    config_ops.set_secret(project, "prod", "DB_PASSWORD", "pw-that-must-stay-secret")
    cluster.job_results["python manage.py migrate"] = (0, ["applying 0001_initial", "password is "
                                                           "pw-that-must-stay-secret", "done"])
    events: list[dict[str, Any]] = []
    outcome = deploy(project, events)
    job = names.release_job_name("web", outcome.release)
    assert cluster.jobs_started == [job]
    order = applied(cluster)
    (deployment,) = cluster.deployment_names()
    assert order.index(("Job", job)) < order.index(("Deployment", deployment))
    # The Job's pods are the release's pods with the command swapped, and no Service can select them.
    pod = cluster.objects[("Job", job)]["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == IMAGE and names.SERVICE not in pod["metadata"]["labels"]
    streamed = [e["line"] for e in events if e.get("event") == "release_output"]
    assert streamed == ["applying 0001_initial", "password is ***", "done"]  # a secret value is masked
    (done,) = payloads(project, oneoff.SUCCEEDED)
    assert done["job"] == job and done["exit_code"] == 0 and done["target"] == "kubernetes"
    kept = Path(done["log_path"])
    assert kept.read_text() == "applying 0001_initial\npassword is ***\ndone\n"
    assert kept == project.paths.instance_log("prod", "web", job)
    steps = [s.name for s in project.store.steps(outcome.deployment)]
    assert steps[:3] == ["release_command", "release_command", "create"]  # started, done, then the Deployment
    everything = json.dumps([e.as_dict() for e in ledger.entries(project.store)])
    assert "pw-that-must-stay-secret" not in everything


def test_a_failing_job_fails_the_deploy_and_leaves_the_old_deployment_untouched(tmp_path: Path,
                                                                                 cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path, extra=MIGRATE))
    (old,) = cluster.deployment_names()
    before = json.dumps(cluster.objects[("Deployment", old)], sort_keys=True)
    services = {name: json.dumps(cluster.objects[("Service", name)], sort_keys=True) for name in ("web", "web-preview")}
    cluster.job_results["python manage.py migrate --broken"] = (3, ["Traceback (most recent call last):",
                                                                    "django.db.utils.OperationalError: boom"])
    broken = project_at(tmp_path, greeting="bonjour", extra=BAD_MIGRATE)
    cluster.calls.clear()
    with pytest.raises(OperationFailed) as failed:
        deploy(broken)
    text = str(failed.value) + "\n".join(failed.value.details)
    assert "release command `python manage.py migrate --broken`" in text and "its command exited non-zero" in text
    assert "| django.db.utils.OperationalError: boom" in text
    assert f"release {first.release}" in text and "serves, as before" in text
    # Nothing of the new release's Deployment was made; the old one and its Services are as they were.
    assert cluster.deployment_names() == [old]
    assert not [c for c in cluster.calls if c[1] in ("Deployment", "Service") and c[0] in ("apply", "scale", "patch")]
    assert not [c for c in cluster.calls if c[2] == old]
    assert json.dumps(cluster.objects[("Deployment", old)], sort_keys=True) == before
    assert {n: json.dumps(cluster.objects[("Service", n)], sort_keys=True) for n in services} == services
    (failure,) = payloads(broken, oneoff.FAILED)
    assert failure["exit_code"] == 3 and failure["tail"][-1] == "django.db.utils.OperationalError: boom"
    assert operations.history(broken, "prod")[0]["outcome"] == "failed"


def test_a_reused_release_does_not_run_its_job_again_unless_asked(tmp_path: Path, cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path, extra=MIGRATE))
    project = project_at(tmp_path, greeting="bonjour", extra=MIGRATE)
    second = deploy(project)
    assert cluster.jobs_started == [names.release_job_name("web", r) for r in (first.release, second.release)]
    back = operations.rollback(project, "prod", "web", None)
    assert back.release == first.release
    assert len(cluster.jobs_started) == 2  # the first release's migration is done: not run on the way back
    assert "release_command" not in [s.name for s in project.store.steps(back.deployment)]
    # Asked for: the same Job name, so the finished one is deleted first and the command runs once more.
    again = operations.rollback(project, "prod", "web", second.release, rerun_release_command=True)
    assert again.release == second.release
    assert cluster.jobs_started[-1] == names.release_job_name("web", second.release) and len(cluster.jobs_started) == 3
    assert ("delete", "Job", names.release_job_name("web", second.release)) in cluster.calls
    assert len(payloads(project, oneoff.SUCCEEDED)) == 3


def test_ingot_plan_shows_the_job_first(tmp_path: Path, cluster: FakeCluster) -> None:
    project = project_at(tmp_path, extra=MIGRATE)
    (planned,) = operations.plan(project, "prod", ["web"])
    assert planned["steps"][0]["kind"] == "release_command"
    assert planned["steps"][0]["description"].startswith("run the release_command of release ")
    deploy(project)
    assert operations.plan(project, "prod", ["web"])[0]["steps"] == []


# ---- workers -----------------------------------------------------------------------------------------


def test_a_worker_is_a_deployment_without_services_and_rolls_and_rolls_back(tmp_path: Path,
                                                                            cluster: FakeCluster) -> None:
    worker = dict(port="null", extra="    command: [python, consume.py]\n",
                  strategy="{type: rolling, min_ready: 2s}")
    first = deploy(project_at(tmp_path, **worker))
    (old,) = cluster.deployment_names()
    assert not [k for (k, _n) in cluster.objects if k in ("Service", "HTTPRoute")]
    assert cluster.objects[("Deployment", old)]["spec"]["minReadySeconds"] == 2
    project = project_at(tmp_path, greeting="bonjour", **worker)
    second = deploy(project)
    new = next(n for n in cluster.deployment_names() if second.release in n)
    assert cluster.replicas() == {old: 0, new: 2}
    assert [s.name for s in project.store.steps(second.deployment) if s.status == "done"].count("scale") >= 2
    assert kube.status(project, "prod")[0]["release"] == second.release
    back = operations.rollback(project, "prod", "web", None)
    assert back.release == first.release and cluster.replicas() == {old: 2, new: 0}
    assert not [k for (k, _n) in cluster.objects if k == "Service"]
    assert operations.drift(project, "prod") == []


# ---- volumes -----------------------------------------------------------------------------------------


def test_volumes_are_claims_made_before_the_pods_kept_across_releases_and_never_deleted(
        tmp_path: Path, cluster: FakeCluster) -> None:
    volumes = "    volumes: {uploads: /srv/uploads}\n    security: {run_as_user: 10001}\n"
    project = project_at(tmp_path, extra=volumes, target="      volume_size: 2Gi\n")
    deploy(project)
    claim = cluster.objects[("PersistentVolumeClaim", "web-uploads")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    order = applied(cluster)
    assert order.index(("PersistentVolumeClaim", "web-uploads")) < order.index(
        ("Deployment", cluster.deployment_names()[0]))
    # The binder's fields (volumeName, annotations) are not drift.
    assert operations.drift(project, "prod") == []
    uid = claim["metadata"]["uid"]
    second = deploy(project_at(tmp_path, greeting="bonjour", extra=volumes, target="      volume_size: 2Gi\n"))
    new = next(n for n in cluster.deployment_names() if second.release in n)
    pod = cluster.objects[("Deployment", new)]["spec"]["template"]["spec"]
    assert {"name": "volume-uploads", "persistentVolumeClaim": {"claimName": "web-uploads"}} in pod["volumes"]
    assert cluster.objects[("PersistentVolumeClaim", "web-uploads")]["metadata"]["uid"] == uid  # the same data
    # A volume gone from the spec keeps its claim: drift does not call it extra, reconcile does not delete it.
    dropped = project_at(tmp_path, greeting="ciao", target="      volume_size: 2Gi\n")
    deploy(dropped)
    assert operations.drift(dropped, "prod") == []
    operations.reconcile(dropped, "prod")
    assert ("PersistentVolumeClaim", "web-uploads") in cluster.objects
    assert not [c for c in cluster.calls if c[:2] == ("delete", "PersistentVolumeClaim")]


def test_a_claim_of_that_name_that_is_not_this_volumes_is_never_taken_over(tmp_path: Path,
                                                                           cluster: FakeCluster) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "web-uploads", "namespace": "hello-prod", "labels": {"app": "other"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    with pytest.raises(OperationFailed) as failed:
        deploy(project_at(tmp_path, extra="    volumes: {uploads: /srv/uploads}\n"))
    assert "PersistentVolumeClaim web-uploads exists" in failed.value.message
    assert "does not take over another's data" in failed.value.message
    assert cluster.objects[("PersistentVolumeClaim", "web-uploads")]["metadata"]["labels"] == {"app": "other"}
    assert cluster.deployment_names() == []


# ---- hooks and notify ----------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Receiver.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", RECEIVER_PORT), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{RECEIVER_PORT}/hook"
    server.shutdown()
    server.server_close()


def test_hooks_and_webhooks_run_around_a_cluster_deploy(tmp_path: Path, cluster: FakeCluster, receiver: str) -> None:
    out, flag = tmp_path / "hooks", tmp_path / "refuse"
    out.mkdir()
    dump = "env | grep ^INGOT_ | sort > {}/{}.env"
    hooks = "".join(f"      {name}: [sh, -c, '{dump.format(out, name)}']\n"
                    for name in ("post_deploy", "on_failure", "on_rollback"))
    extra = (f"    hooks:\n      pre_deploy: [sh, -c, 'if [ -e {flag} ]; then echo pre refused; exit 4; fi']\n"
             f"{hooks}" + MIGRATE)
    notify = f"notify: [{{url: '{receiver}'}}]\nenvironments:\n"

    def project(greeting: str, release_command: str = MIGRATE) -> Project:
        text = SPEC.format(image=IMAGE, greeting=greeting, port="8000", strategy="{type: blue-green}", target="",
                           extra=extra.replace(MIGRATE, release_command))
        (tmp_path / "ingot.yaml").write_text(text.replace("environments:\n", notify, 1))
        return open_project(tmp_path / "ingot.yaml", tmp_path / "state")

    try:
        flag.touch()
        with pytest.raises(OperationFailed) as refused:
            deploy(project("hello"))
        assert "pre_deploy hook exited 4" in refused.value.message
        assert cluster.deployment_names() == [] and cluster.jobs_started == []  # nothing started on the cluster
        flag.unlink()
        first = deploy(project("hello"))
        post = dict(line.split("=", 1) for line in (out / "post_deploy.env").read_text().splitlines())
        assert post["INGOT_RELEASE"] == first.release and post["INGOT_OUTCOME"] == "succeeded"
        assert post["INGOT_ENVIRONMENT"] == "prod"
        cluster.job_results["python manage.py migrate --broken"] = (1, ["boom"])
        with pytest.raises(OperationFailed):
            deploy(project("bonjour", BAD_MIGRATE))
        failure = dict(line.split("=", 1) for line in (out / "on_failure.env").read_text().splitlines())
        assert failure["INGOT_OUTCOME"] == "failed" and failure["INGOT_RELEASE"] != first.release
        second = deploy(project("ciao"))
        operations.rollback(project("ciao"), "prod", "web", None)
        back = dict(line.split("=", 1) for line in (out / "on_rollback.env").read_text().splitlines())
        assert back["INGOT_RELEASE"] == first.release and back["INGOT_OUTCOME"] == "succeeded"
        # The agent delivers the webhooks in the background, as for any target.
        poll(lambda: len(Receiver.bodies) >= 5, timeout=30, what="five webhooks delivered")
        seen = sorted((b["event"], b["release"], b["previous"]) for b in Receiver.bodies)
        assert ("deploy", first.release, None) in seen and ("rollback", first.release, second.release) in seen
        assert [b["event"] for b in Receiver.bodies].count("failure") == 2  # the refused and the failed deploy
    finally:
        client = AgentClient(open_project(tmp_path / "ingot.yaml", tmp_path / "state").paths)
        if client.alive():
            client.call("shutdown", timeout=10)


# ---- the CLI -----------------------------------------------------------------------------------------


def test_cli_exit_codes_for_cluster_apps(tmp_path: Path, cluster: FakeCluster) -> None:
    from ingot.cli.main import app

    runner = CliRunner()
    spec, state = tmp_path / "ingot.yaml", tmp_path / "state"

    def ingot(*args: str) -> Any:
        return runner.invoke(app, ["--state", str(state), "-f", str(spec), *args])

    project_at(tmp_path, extra=MIGRATE)
    done = ingot("deploy", "--env", "prod")
    assert done.exit_code == 0, done.output
    project_at(tmp_path, greeting="bonjour", extra=BAD_MIGRATE)
    cluster.job_results["python manage.py migrate --broken"] = (2, ["no such table"])
    failed = ingot("deploy", "--env", "prod")
    assert failed.exit_code == 1 and "release command" in failed.output and "Traceback" not in failed.output
    spec.write_text(spec.read_text().replace(
        "    health: {path: /healthz, interval: 1s, deadline: 20s}\n",
        "    health: {command: [docker, exec, '${INGOT_CONTAINER}', check], deadline: 20s}\n"))
    refused = ingot("validate")
    assert refused.exit_code == 2
    assert "health.command[2]: ${INGOT_CONTAINER} names the instance from the host" in " ".join(refused.output.split())


def test_a_jobs_end_is_read_from_its_conditions() -> None:
    from ingot.kube.rollout import exit_code, job_state

    assert job_state({"status": {"active": 1}}) == ("running", "")
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ("succeeded", "")
    late = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                       "message": "Job was active longer than specified deadline"}]}}
    assert job_state(late) == ("failed", "it ran past release_command_timeout and was stopped (Job was active "
                                         "longer than specified deadline)")
    # A condition not (yet) true is not an end.
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}})[0] == "running"
    assert exit_code({"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 7}}}]}}) == 7
    assert exit_code({"status": {"containerStatuses": [{"state": {"running": {}}}]}}) is None


def test_a_rollback_past_an_irreversible_release_is_refused_unless_forced(tmp_path: Path,
                                                                          cluster: FakeCluster) -> None:
    first = deploy(project_at(tmp_path))
    project = project_at(tmp_path, greeting="bonjour")
    (second,) = operations.deploy(project, "prod", ["web"], irreversible=True)
    assert [e.subject for e in ledger.entries(project.store, actions=[oneoff.IRREVERSIBLE])] == [second.release]
    cluster.calls.clear()
    with pytest.raises(UserInputError) as refused:
        operations.rollback(project, "prod", "web", None)
    text = str(refused.value) + "\n".join(refused.value.details)
    assert f"to {first.release} refused" in text and f"irreversible release {second.release}" in text
    assert "--force" in text
    # Refused before the cluster was changed: nothing applied, scaled, patched or deleted.
    assert not [c for c in cluster.calls if c[0] in ("apply", "scale", "patch", "delete")]
    back = operations.rollback(project, "prod", "web", None, force=True)
    assert back.release == first.release
    (forced,) = payloads(project, "rollback.forced")
    assert forced["past_irreversible"] == [second.release]


# ---- ingot run ---------------------------------------------------------------------------------------


def test_ingot_run_on_a_cluster_is_a_job_of_the_live_release_with_its_exit_code_and_masked_output(
        tmp_path: Path, cluster: FakeCluster) -> None:
    project = project_at(tmp_path, extra="    secrets: [DB_PASSWORD]\n")
    config_ops.set_secret(project, "prod", "DB_PASSWORD", "pw-that-must-stay-secret")
    live = deploy(project)
    (deployment,) = cluster.deployment_names()
    before = json.dumps(cluster.objects[("Deployment", deployment)]["spec"], sort_keys=True)
    cluster.job_results["python manage.py createsuperuser --noinput"] = (
        4, ["connecting with pw-that-must-stay-secret", "error: that user exists"])
    cluster.calls.clear()
    lines: list[str] = []
    outcome = operations.run_command(project, "prod", "web", None,
                                     ["python", "manage.py", "createsuperuser", "--noinput"], on_line=lines.append)
    assert outcome["exit_code"] == 4 and outcome["release"] == live.release
    assert lines == ["connecting with ***", "error: that user exists"]
    job = outcome["instance"]
    assert job.startswith("web-run-") and cluster.jobs_started == [job]
    pod = cluster.objects[("Job", job)]["spec"]
    assert "activeDeadlineSeconds" not in pod  # a one-off runs until it ends, unlike a release_command
    container = pod["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["args"][:2] == ["python", "manage.py"]
    assert names.SERVICE not in pod["template"]["metadata"]["labels"]  # no Service sends it traffic
    assert "pw-that-must-stay-secret" not in Path(outcome["log"]).read_text()
    # The running release is not touched: no Deployment or Service applied, scaled, patched or deleted.
    assert not [c for c in cluster.calls if c[1] in ("Deployment", "Service") and c[0] != "get"]
    assert json.dumps(cluster.objects[("Deployment", deployment)]["spec"], sort_keys=True) == before
    started, finished = payloads(project, oneoff.STARTED), payloads(project, oneoff.FINISHED)
    assert [p["instance"] for p in started] == [job] and finished[0]["exit_code"] == 4
    everything = json.dumps([e.as_dict() for e in ledger.entries(project.store)])
    assert "pw-that-must-stay-secret" not in everything
    # Detached: the Job is applied and left; nothing waits for it.
    detached = operations.run_command(project, "prod", "web", None, ["python", "worker.py"], detach=True)
    assert detached["detached"] and detached["log"] == f"kubectl logs job/{detached['instance']}"
    assert cluster.jobs_started[-1] == detached["instance"]


def test_ingot_run_on_a_cluster_needs_a_live_release(tmp_path: Path, cluster: FakeCluster) -> None:
    with pytest.raises(UserInputError, match="not deployed in prod"):
        operations.run_command(project_at(tmp_path), "prod", "web", None, ["true"])
    assert cluster.jobs_started == []
