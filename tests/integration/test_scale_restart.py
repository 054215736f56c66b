"""`ingot scale` and `ingot restart`: the live release's instances changed in number, or replaced by fresh
ones, with no new release, under load, recorded; a restart whose fresh instances fail leaves the old serving.

One project for the module (each test starts from the state the previous one left: 2 instances of the
live release), so that it is deployed once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import ExampleProject, load, make_example, stop_everything

# The example's app, reading a file of its volume as it starts: the volume outlives releases, so what an
# instance finds there is not part of the release it runs (as a config file on a mounted disk would be).
BOOT_CHECK = '''    boot = os.path.join(os.environ.get("INGOT_VOLUME_DATA", "."), "boot")
    if os.path.exists(boot) and open(boot).read().strip() == "broken":
        print("the boot file of the data volume says broken", flush=True)
        sys.exit(4)
    server = ThreadingHTTPServer((host, port), Handler)
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleProject]:
    tmp = tmp_path_factory.mktemp("scale")
    example = make_example(tmp, extra_service_yaml="\n    volumes: {data: /data}")
    example.env["INGOT_HEAL_INTERVAL"] = "0"  # a count changed behind the agent's back is not repaired here
    app = example.root / "app.py"
    app.write_text(app.read_text().replace("    server = ThreadingHTTPServer((host, port), Handler)\n", BOOT_CHECK))
    yield example
    stop_everything(example)
    from ingot.paths import StatePaths

    shutil.rmtree(StatePaths(example.state.resolve()).volumes / "hello", ignore_errors=True)


def instances(example: ExampleProject) -> list[dict[str, Any]]:
    """The live instances as the store records them (read here: a CLI call per look is slow on a busy CI)."""
    from ingot.store import Store

    store = Store(example.state)
    try:
        return [{"id": r.id, "release": r.release_id, "state": r.state} for r in store.live_instances("staging", "web")]
    finally:
        store.close()


def live_params(example: ExampleProject) -> dict[str, Any]:
    from ingot.store import Store

    store = Store(example.state)
    try:
        current = store.current_activation("staging", "web")
        assert current is not None
        return dict(current.params)
    finally:
        store.close()


def ledger(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    from ingot import ledger as entries
    from ingot.store import Store

    store = Store(example.state)
    try:
        return [e.as_dict() for e in entries.entries(store, actions=[action])]
    finally:
        store.close()


def test_scale_and_restart_are_refused_without_a_live_release(project: ExampleProject) -> None:
    for args in (("scale", "web", "3"), ("restart", "web")):
        result = project.ingot(*args)
        assert result.code == 2, result
        assert "web has no live release in staging" in result.err and "Traceback" not in result.err
    assert project.ingot("scale", "nope", "3").code == 2


def test_scale_up_and_down_under_load_with_no_failed_request(project: ExampleProject, tmp_path: Path) -> None:
    project.ingot("deploy", check=True)
    release = project.get()["release"]
    assert len(instances(project)) == 2
    with load(project.url, tmp_path) as during:
        up = project.ingot("scale", "web", "4", "--batch", "1", check=True)
        assert len(instances(project)) == 4
        project.ingot("scale", "web", "1", check=True)
    assert during["failures"] == [] and during["requests"] > 50, during
    assert "4 instance(s) of release" in up.out
    running = instances(project)
    assert len(running) == 1 and {i["release"] for i in running} == {release}
    starts = ledger(project, "scale.start")
    assert [s["payload"]["replicas"] for s in starts[-2:]] == [{"from": 2, "to": 4}, {"from": 4, "to": 1}]
    assert {s["actor"] for s in starts} == {"tester@ci"} and all(s["payload"]["to"] == release for s in starts)
    assert len(ledger(project, "scale.finish")) == 2
    # The same release, no new one: the history has two scale deployments of it.
    kinds = [(d["kind"], d["release"]) for d in project.ingot("history", "--json", check=True).json[:2]]
    assert kinds == [("scale", release), ("scale", release)]
    # A deploy of the unchanged spec keeps the scaled count; a spec that changes replicas wins, also downwards
    # (a plan that only stops instances records its count too, or drift repair would start them again).
    assert "nothing changed" in project.ingot("deploy", check=True).out
    assert len(instances(project)) == 1
    project.ingot("scale", "web", "3", check=True)
    spec = project.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 1"))
    project.ingot("deploy", check=True)
    assert len(instances(project)) == 1 and live_params(project)["replicas"] == 1
    assert "spec_replicas" not in live_params(project)
    spec.write_text(spec.read_text().replace("replicas: 1", "replicas: 2"))
    project.ingot("deploy", check=True)
    assert len(instances(project)) == 2


def test_scale_to_twelve_and_back_under_load_fails_no_request(project: ExampleProject, tmp_path: Path) -> None:
    """2 -> 12 -> 2, one command each, load from another process. The excess leaves the pool and finishes its
    requests before it is stopped, and stays out while it stops: the agent, seeing the first of them exit,
    refreshes the pool from what runs, which once put the others back (502s: the least busy backends, the
    ones being stopped, took every retry)."""
    assert len(instances(project)) == 2
    with load(project.url, tmp_path) as during:
        project.ingot("scale", "web", "12", check=True)
        assert len(instances(project)) == 12
        project.ingot("scale", "web", "2", check=True)
    assert during["failures"] == [] and during["requests"] > 100, during
    assert len(instances(project)) == 2
    drained = ledger(project, "scale.step")
    assert any(e["payload"].get("step") == "drain_instances" and e["payload"].get("status") == "done"
               and len(e["payload"]["instances"]) == 10 for e in drained), drained[-6:]


def test_restart_replaces_every_instance_under_load(project: ExampleProject, tmp_path: Path) -> None:
    release = project.get()["release"]
    before = {i["id"] for i in instances(project)}
    with load(project.url, tmp_path) as during:
        project.ingot("restart", "web", check=True)
    assert during["failures"] == [] and during["requests"] > 20, during
    after = instances(project)
    assert len(after) == 2 and not before & {i["id"] for i in after}
    assert {i["release"] for i in after} == {release} and project.get()["release"] == release
    assert ledger(project, "restart.finish")[-1]["payload"]["outcome"] == "succeeded"


def test_restart_whose_fresh_instances_fail_leaves_the_old_serving(project: ExampleProject, tmp_path: Path) -> None:
    from ingot.paths import StatePaths

    before = {i["id"] for i in instances(project)}
    boot = StatePaths(project.state.resolve()).volumes / "hello" / "staging" / "data" / "boot"
    assert boot.parent.is_dir(), "the data volume is made at deploy"
    boot.write_text("broken\n")
    try:
        with load(project.url, tmp_path) as during:
            result = project.ingot("restart", "web")
            scaled = project.ingot("scale", "web", "4")
    finally:
        boot.unlink()
    assert result.code == 1, result
    assert "did not become healthy" in result.err and "the boot file of the data volume says broken" in result.err
    assert during["failures"] == [], during
    assert {i["id"] for i in instances(project)} == before
    assert ledger(project, "restart.fail")
    # A failed scale-up likewise: what it started is gone, and the count of record is what it was.
    assert scaled.code == 1 and "did not become healthy" in scaled.err, scaled
    assert live_params(project)["replicas"] == 2 and ledger(project, "scale.fail")
