"""Any exception, not only ingot's own, fails a deploy cleanly: traffic back, what it started stopped, the
outcome recorded (never `running` for ever), and its checkout under `runs/` removed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from ingot import ledger
from ingot.artifacts import ArtifactStore
from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.errors import OperationFailed
from ingot.executor import Deployment, Executor
from ingot.paths import StatePaths
from ingot.plan import Plan, Step, Target
from ingot.releases import load_or_create_key, new_release
from ingot.routers.base import ReleaseStats
from ingot.runtimes.base import InstanceRequest, Observation
from ingot.runtimes.registry import Runtimes
from ingot.store import InstanceRow, ReleaseRow, Store
from tests.support.harness import ExampleProject, load, poll


class FakeRuntime:
    """Instances that exist only as rows; stopping the previous release's fails with a non-ingot error."""

    name = "process"

    def __init__(self, fail_stopping: str) -> None:
        self.fail_stopping = fail_stopping
        self.stopped: list[str] = []

    def start(self, request: InstanceRequest) -> InstanceRow:
        return InstanceRow(request.instance_id, request.environment, request.service, request.release_id,
                           self.name, 4242, None, "127.0.0.1", 1, str(request.log_path), time.time(), None,
                           "starting", str(request.artifact_path))

    def stop(self, instance: InstanceRow, timeout: float) -> None:
        if instance.release_id == self.fail_stopping:
            raise RuntimeError("the engine went away")
        self.stopped.append(instance.id)

    def observe(self, instance: InstanceRow) -> Observation:
        return Observation(alive=instance.id not in self.stopped)

    def log_tail(self, instance: InstanceRow, lines: int = 20) -> list[str]:
        return []

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        return None


class FakeRouter:
    listen_address = ("127.0.0.1", 1)

    def __init__(self) -> None:
        self._weights: dict[str, int] = {}
        self.backends: dict[str, list[tuple[str, int]]] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_backends(self, release: str, addrs: list[tuple[str, int]]) -> None:
        self.backends[release] = addrs

    async def set_weights(self, weights: dict[str, int]) -> None:
        self._weights = dict(weights)

    async def drain(self, release: str, timeout: float) -> bool:
        return True

    async def drain_backends(self, release: str, addrs: list[tuple[str, int]], timeout: float) -> bool:
        return True

    async def remove_release(self, release: str) -> None:
        self.backends.pop(release, None)

    def stats(self) -> dict[str, ReleaseStats]:
        return {}

    def weights(self) -> dict[str, int]:
        return dict(self._weights)


def _release(paths: StatePaths, store: Store, digest: str, version: str) -> ReleaseRow:
    row = new_release(key=load_or_create_key(paths.keys), project="hello", service="web", artifact_digest=digest,
                      spec={"command": ["python", "app.py"], "env": {"VERSION": version}}, config={"values": {}},
                      actor="tester")
    with store.begin() as conn:
        store.insert_release(conn, row)
    return row


def test_a_non_ingot_exception_mid_deploy_fails_it_cleanly(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    store = Store(paths.root)
    artifacts = ArtifactStore(paths.artifacts)
    staging = artifacts.new_staging_dir()
    (staging / "app.py").write_text("print('hi')\n")
    digest = artifacts.put_tree(staging)
    stable, target = _release(paths, store, digest, "1"), _release(paths, store, digest, "2")
    params = DeployParams(replicas=1, health=HealthPolicy(), listen=("127.0.0.1", 1), drain_timeout=0.1)
    # The stable release serves: one running instance, live of record.
    store.add_instance(InstanceRow("web-old", "staging", "web", stable.id, "process", 4241, None, "127.0.0.1", 2,
                                   str(tmp_path / "old.log"), time.time(), None, "running", None))
    runtime = FakeRuntime(fail_stopping=stable.id)
    runtimes = Runtimes()
    runtimes._made["process"] = runtime  # type: ignore[assignment]
    executor = Executor(store, runtimes, artifacts, paths)
    router = FakeRouter()
    with store.begin() as conn:
        store.activate(conn, environment="staging", service="web", release_id=stable.id, deployment_id=None,
                       params=params.as_dict())
        row = store.create_deployment(conn, environment="staging", service="web", kind="deploy",
                                      from_release=stable.id, to_release=target.id, strategy="blue-green",
                                      params=params.as_dict(), actor="tester")
    # Past the switch, stopping the old release raises something that is not an IngotError.
    plan = Plan("blue-green", Target(target.id, 1), (
        Step("start", release=target.id, count=1),
        Step("route", weights=((target.id, 100),)),
        Step("stop", release=stable.id, count=1),
    ))
    events: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        events.append(event)

    dep = Deployment(row=row, release=target, params=params, router=router)  # type: ignore[arg-type]
    with pytest.raises(OperationFailed) as failed:
        asyncio.run(executor.apply(dep, plan, emit))

    assert "failed at step 'stop 1 instance(s)" in failed.value.message
    assert "unexpected RuntimeError: the engine went away" in failed.value.message
    assert any(f"still serving: release {stable.id}" in d for d in failed.value.details)
    assert router.weights() == {stable.id: 100}  # traffic back at once
    current = store.current_activation("staging", "web")
    assert current is not None and current.release_id == stable.id
    [new] = dep.started
    assert runtime.stopped == [new.id]  # what it started, stopped
    assert store.get_instance(new.id).state == "stopped"  # type: ignore[union-attr]
    assert store.deployment_outcome(row.id) == "failed"  # not `running` for ever
    [fail] = [e for e in ledger.entries(store) if e.action == "deploy.fail"]
    assert "RuntimeError" in fail.payload["error"]
    assert not list(paths.runs.iterdir())  # its checkout removed
    assert [e["status"] for e in events if e.get("index") == 3] == ["started", "failed"]


def test_a_failing_start_with_a_non_ingot_error_keeps_the_previous_release_serving(example: ExampleProject,
                                                                                  tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    v1 = example.get()["release"]
    example.set_version("2")
    # Where the service's instance logs go is a file now: starting an instance raises FileExistsError.
    logs = example.state / "logs" / "staging" / "web"
    logs.rename(tmp_path / "web-logs")  # the running instances' loggers keep their open files
    logs.write_text("in the way\n")
    with load(example.url, tmp_path) as during:
        failed = example.ingot("deploy")
    assert failed.code == 1, failed
    assert "unexpected FileExistsError" in failed.err and "Traceback" not in failed.err
    assert f"still serving: release {v1}" in failed.err
    assert during["failures"] == [] and int(during["requests"]) > 20
    assert example.get()["release"] == v1
    assert len(list(example.runs.iterdir())) == 1  # the new release's checkout removed
    [latest, *_] = example.ingot("history", "--json", check=True).json
    assert latest["outcome"] == "failed" and latest["release"] != v1
    fail = [e for e in example.ingot("audit", "log", "--json", check=True).json if e["action"] == "deploy.fail"]
    assert fail and "FileExistsError" in fail[-1]["payload"]["error"]
    # Once the obstacle is gone the next deploy just works: nothing was left locked or half-started.
    logs.unlink()
    (tmp_path / "web-logs").rename(logs)
    example.ingot("deploy", check=True)
    poll(lambda: example.get()["release"] not in (v1,), timeout=10, what="release 2 serving")
    states = {i["state"] for i in example.ingot("status", "--json", check=True).json["services"][0]["instances"]}
    assert states == {"running"}

