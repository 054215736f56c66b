"""Success means stable: a release must stay up under traffic for min_ready before the previous one retires,
and one that self-heal cannot keep up is left for the last release that was stable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import ExampleProject, exit_after_first_health_check, load, poll, use_strategy

SELF_HEAL = "ingot-agent/self-heal"


def instances_by_release(example: ExampleProject) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for instance in example.ingot("status", "--json", check=True).json["services"][0]["instances"]:
        found.setdefault(instance["release"], set()).add(instance["id"])
    return found


def ledger(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    entries = example.ingot("audit", "log", "--json", "--limit", "5000", check=True).json
    return [e for e in entries if e["action"] == action]


def test_a_release_that_dies_after_its_health_gate_is_not_reported_succeeded(routed: ExampleProject,
                                                                             tmp_path: Path) -> None:
    routed.ingot("deploy", check=True)
    old = routed.get()["release"]
    old_instances = instances_by_release(routed)[old]
    use_strategy(routed, "    strategy: {type: blue-green, drain_timeout: 5s, min_ready: 6s}")
    routed.set_version("2")
    # Each instance of version 2 passes its gate, then exits: the first 2 s after its first health check,
    # the next a second later.
    exit_after_first_health_check(routed, 2.0, stagger=tmp_path / "order")
    with load(routed.url, tmp_path) as during:
        failed = routed.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "succeeded" not in failed.out and "is live at" not in failed.out
    history = routed.ingot("history", "--json", check=True).json
    new = history[0]["release"]
    assert new != old and history[0]["outcome"] == "failed"
    # The evidence: which instance, what happened and when, its last log lines, what still serves.
    assert "at step 'settle:" in failed.err and "stopped running (exited with code 3)" in failed.err
    assert "into its min_ready of 6s" in failed.err and "giving up" in failed.err
    assert f"still serving: release {old}" in failed.err and "Traceback" not in failed.err
    # The previous release served throughout, and serves now from the very instances it had: a pure switch.
    assert during["failures"] == [], during["failures"][:5]
    assert int(during["requests"]) > 100 and "1" in during["versions"]
    assert routed.get()["release"] == old
    poll(lambda: instances_by_release(routed) == {old: old_instances}, timeout=30, what="only the old instances")
    # Recorded: the settle step failed, then the deployment, with the same evidence.
    [fail] = [e for e in ledger(routed, "deploy.fail") if e["subject"] == history[0]["deployment"]]
    assert fail["payload"]["release"] == new and "exited with code 3" in fail["payload"]["error"]
    assert any("giving up" in line for line in fail["payload"]["details"])
    assert fail["payload"]["serving"].startswith(f"still serving: release {old}")
    steps = [e["payload"] for e in ledger(routed, "deploy.step") if e["subject"] == history[0]["deployment"]]
    assert [(s["step"], s["status"]) for s in steps][-3:] == [("route", "done"), ("settle", "started"),
                                                               ("settle", "failed")]
    assert not [e for e in ledger(routed, "deploy.finish") if e["subject"] == history[0]["deployment"]]
    assert routed.ingot("audit", "verify").code == 0


def test_a_stable_release_passes_min_ready_and_the_plan_shows_it(example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    old = example.get()["release"]
    use_strategy(example, "    strategy: {type: blue-green, drain_timeout: 5s, min_ready: 2s}")
    example.set_version("2")
    example.ingot("build", check=True)
    plan = example.ingot("plan", "--json", check=True).json[0]
    assert [s["kind"] for s in plan["steps"]] == ["start", "wait_healthy", "route", "settle", "drain", "stop"]
    assert plan["steps"][3]["seconds"] == 2 and plan["steps"][3]["baseline"] == old
    assert "2s (min_ready)" in example.ingot("plan", check=True).out
    with load(example.url, tmp_path) as during:
        example.ingot("deploy", check=True)
    assert during["failures"] == [] and {"1", "2"} <= set(during["versions"])
    deployment = example.ingot("history", "--json", check=True).json[0]
    assert deployment["outcome"] == "succeeded"
    steps = {e["payload"]["step"]: e["payload"] for e in ledger(example, "deploy.step")
             if e["subject"] == deployment["deployment"] and e["payload"]["status"] == "done"}
    # The previous release was stopped only after the new one had stayed up and healthy for min_ready.
    assert steps["settle"]["seconds"] >= 2 and steps["settle"]["probes"] >= 2 * 2
    assert set(instances_by_release(example)) == {deployment["release"]}


@pytest.fixture
def healing(example: ExampleProject) -> ExampleProject:
    example.env["INGOT_HEAL_INTERVAL"] = "1s"
    return example


def test_a_crash_looping_release_falls_back_to_the_last_stable_one(healing: ExampleProject,
                                                                    tmp_path: Path) -> None:
    example = healing
    example.ingot("deploy", check=True)
    stable = example.get()["release"]
    example.set_version("2")
    # Version 2 passes its gate and its min_ready, then dies, and so does every replacement of it.
    exit_after_first_health_check(example, 2.0)
    example.ingot("deploy", check=True)
    bad = example.ingot("history", "--json", check=True).json[0]["release"]
    assert bad != stable
    poll(lambda: example.get()["release"] == stable, timeout=120, interval=0.3,
         what="self-heal to go back to the last stable release")
    [fallback] = ledger(example, "self_heal.fallback")
    assert fallback["actor"] == SELF_HEAL and fallback["subject"] == stable
    assert fallback["payload"]["from"] == bad and fallback["payload"]["to"] == stable
    assert fallback["payload"]["failed_replacements"] == 3
    assert f"{bad} crash-loops: 3 failed replacements in a row" in fallback["payload"]["reason"]
    assert len(ledger(example, "self_heal.backoff")) == 3
    # A normal rollback through the health gate, by self-heal, in the history.
    rollback = poll(lambda: (h := example.ingot("history", "--json", check=True).json[0])["outcome"] == "succeeded"
                    and h, timeout=60, what="the rollback to finish")
    assert (rollback["kind"], rollback["release"], rollback["actor"]) == ("rollback", stable, SELF_HEAL)
    plan = next(e for e in ledger(example, "rollback.start")
                if e["subject"] == rollback["deployment"])["payload"]["plan"]
    assert [s["kind"] for s in plan["steps"]][:3] == ["start", "wait_healthy", "route"]
    # It says so, and the bad release is gone.
    status = example.ingot("status", check=True).out
    assert f"self-heal rolled back from {bad} to {stable}, the last release that was stable" in status
    heal = example.ingot("status", "--json", check=True).json["services"][0]["self_heal"]
    assert heal["fallback"]["outcome"] == "rolled back" and heal["backoff"] is None
    poll(lambda: set(instances_by_release(example)) == {stable}, timeout=30, what="only the stable release")
    with load(example.url, tmp_path) as during:
        poll(lambda: example.ingot("drift").code == 0, timeout=30, what="no drift left")
    assert during["failures"] == [] and set(during["versions"]) == {"1"}
    assert example.ingot("audit", "verify").code == 0
