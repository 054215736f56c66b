"""Operating commands: logs, rollback --to any earlier release, environments, the state directory."""

from __future__ import annotations

from pathlib import Path

from ingot.artifacts import ArtifactStore
from tests.support.harness import ExampleProject, manual_repair


def test_rollback_to_an_earlier_release_by_prefix(example: ExampleProject) -> None:
    releases = []
    for version in ("1", "2", "3"):
        example.set_version(version)
        example.ingot("deploy", check=True)
        releases.append(example.get()["release"])
    first = releases[0]
    result = example.ingot("rollback", "--to", first[:6], check=True)
    assert f"rolled back to release {first}" in result.out
    assert example.get()["version"] == "1"
    # The default rollback now goes back to what was live before this rollback: version 3.
    example.ingot("rollback", check=True)
    assert example.get()["version"] == "3"
    bad = example.ingot("rollback", "--to", "zzzz")
    assert bad.code == 2 and "no release of web starts with 'zzzz'" in bad.err


def test_logs_show_each_running_instance(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    for _ in range(3):
        example.get()
    result = example.ingot("logs", "web", "-n", "20", check=True)
    instances = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    for instance in instances:
        assert f"==> {instance['id']} <==" in result.out
    assert "hello v1 listening" in result.out
    assert '"GET / HTTP/1.1" 200' in result.out


def test_production_overrides_and_separate_router(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    prod = example.ingot("deploy", "--env", "production", check=True)
    status = example.ingot("status", "--json", check=True).json
    by_env = {s["environment"]: s for s in status["services"]}
    assert len(by_env["production"]["instances"]) == 3 and len(by_env["staging"]["instances"]) == 2
    assert by_env["production"]["url"] != by_env["staging"]["url"]
    assert by_env["production"]["url"] in prod.out
    # Taking production down leaves staging serving.
    example.ingot("down", "--env", "production", check=True)
    assert example.get()["version"] == "1"
    status = example.ingot("status", "--json", check=True).json
    assert [s["environment"] for s in status["services"]] == ["staging"]


def test_state_directory_from_ingot_home_and_flag(example: ExampleProject, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    result = example.ingot("deploy", check=True, extra_env={"INGOT_HOME": str(home)})
    assert "live at" in result.out
    assert (home / "state.db").exists() and not (example.root / ".ingot").exists()
    # --state names the same directory explicitly and sees the same deployment.
    status = example.ingot("--state", str(home), "status", "--json", check=True).json
    assert status["services"][0]["release"] == example.get()["release"]
    example.ingot("--state", str(home), "down", check=True)
    assert example.ingot("--state", str(home), "status", "--json", check=True).json["services"] == []


def test_router_address_change_moves_the_service_and_a_failed_one_changes_nothing(example: ExampleProject) -> None:
    import httpx

    from tests.support.harness import free_port

    example.ingot("deploy", check=True)
    release = example.get()["release"]
    spec = example.root / "ingot.yaml"
    original = spec.read_text()
    # A deploy to a new address whose release fails its gate: the old address keeps serving.
    new_port = free_port()
    broken = original.replace(f"127.0.0.1:{example.port}", f"127.0.0.1:{new_port}")
    spec.write_text(broken.replace("deadline: 30s", "deadline: 1s").replace("command: [python, app.py]",
                                                                           "command: [python, missing.py]"))
    assert example.ingot("deploy").code == 1
    assert example.get()["release"] == release
    try:
        httpx.get(f"http://127.0.0.1:{new_port}/", timeout=2, trust_env=False)
        raise AssertionError("the failed deploy's router still listens")
    except httpx.ConnectError:
        pass
    # The same release moved to a new address: no new release, the new address serves it.
    spec.write_text(broken)
    moved = example.ingot("deploy", check=True)
    assert f"127.0.0.1:{new_port}" in moved.out
    answer = httpx.get(f"http://127.0.0.1:{new_port}/", timeout=5, trust_env=False).json()
    assert answer["release"] == release
    try:
        httpx.get(example.url, timeout=2, trust_env=False)
        raise AssertionError("the old address still listens after the move")
    except httpx.ConnectError:
        pass


def test_changing_replicas_scales_the_same_release(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    release = example.get()["release"]
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 3"))
    plan = example.ingot("plan", "--json", check=True).json[0]
    assert plan["release"] == release and not plan["needs_build"]
    assert [s["kind"] for s in plan["steps"]] == ["start", "wait_healthy", "route"]
    assert plan["steps"][0]["count"] == 1
    scaled = example.ingot("deploy", check=True)
    assert f"release {release} (already exists)" in scaled.out
    instances = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    assert len(instances) == 3 and {i["release"] for i in instances} == {release}
    assert example.ingot("plan", "--json", check=True).json[0]["steps"] == []


def test_prune_keeps_live_and_rollback_targets_in_every_environment(example: ExampleProject) -> None:
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("    router: {listen:", "    retention: 2\n    router: {listen:", 1))
    example.set_version("1")
    example.ingot("deploy", "--env", "production", check=True)
    production_release = example.ingot("status", "--json", "--env", "production", check=True).json[
        "services"][0]["release"]
    releases = []
    for version in ("2", "3", "4", "5"):
        example.set_version(version)
        example.ingot("deploy", check=True)
        releases.append(example.get()["release"])
    dry = example.ingot("prune", "--dry-run", "--json", check=True).json
    assert dry["removed"] == []
    kept_reasons = " ".join(r for reasons in dry["keep"].values() for r in reasons)
    assert f"live in staging: release {releases[-1]}" in kept_reasons
    assert f"rollback target in staging: release {releases[-2]}" in kept_reasons
    assert f"live in production: release {production_release}" in kept_reasons
    doomed = {rid for ids in dry["remove"].values() for rid in ids}
    assert doomed == {releases[0], releases[1]}

    store = ArtifactStore(example.state / "artifacts")
    before = store.disk_usage()
    pruned = example.ingot("prune", "--json", check=True).json
    assert sorted(pruned["removed"]) == sorted(dry["remove"])
    # What it says it freed is what the store shrank by; the files releases share stay for the kept ones.
    assert pruned["freed_bytes"] == dry["freed_bytes"] == before - store.disk_usage() > 0
    # Rollback targets still work; a pruned release says plainly why it cannot come back.
    example.ingot("rollback", check=True)
    assert example.get()["release"] == releases[-2]
    gone = example.ingot("rollback", "--to", releases[0])
    assert gone.code == 1 and "no longer in the store" in gone.err
    assert example.ingot("prune", "--json", check=True).json["removed"] == []
    actions = [e["action"] for e in example.ingot("audit", "log", "--json", "--limit", "1000").json]
    assert "prune" in actions


def test_promote_copies_the_exact_artifact_and_refuses_an_unhealthy_source(example: ExampleProject) -> None:
    manual_repair(example)  # the stopped instance below must stay as it is, not be healed
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("web: {replicas: 3,", "web: {replicas: 3, env: {GREETING: hi-prod},"))
    example.ingot("deploy", check=True)
    staging = example.ingot("history", "--json", check=True).json[0]
    example.set_version("2")  # the work tree moves on; promotion must not rebuild from it
    promoted = example.ingot("promote", "--from", "staging", "--to", "production", check=True)
    assert "promoted staging → production" in promoted.out
    prod = example.ingot("history", "--json", "--env", "production", check=True).json[0]
    assert prod["kind"] == "promote" and prod["artifact"] == staging["artifact"]
    assert prod["release"] != staging["release"]  # production's own env makes its own release
    status = example.ingot("status", "--json", "--env", "production", check=True).json["services"][0]
    assert len(status["instances"]) == 3
    import httpx

    answer = httpx.get(status["url"], timeout=5, trust_env=False).json()
    assert (answer["version"], answer["greeting"]) == ("1", "hi-prod")

    # An unhealthy source is refused, unless forced (and the force is recorded).
    import os
    import signal

    os.kill(int(example.ingot("status", "--json", check=True).json["services"][0]["instances"][0]["pid"]),
            signal.SIGSTOP)
    refused = example.ingot("promote", "--from", "staging", "--to", "production")
    assert refused.code == 1 and "not healthy and verified in staging" in refused.err and "--force" in refused.err
    forced = example.ingot("promote", "--from", "staging", "--to", "production", "--force", check=True)
    assert "already serves" in forced.out
    log = example.ingot("audit", "log", "--json", "--limit", "1000").json
    assert [e["payload"]["forced"] for e in log if e["action"] == "promote"] == [False, True]
