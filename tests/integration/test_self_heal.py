"""Continuous self-healing: the agent finds drift on its own and repairs it by replacement, unasked."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import ExampleProject, exit_after_first_health_check, load, poll, use_strategy

SELF_HEAL = "ingot-agent/self-heal"


@pytest.fixture(autouse=True)
def _fast_self_heal(example: ExampleProject) -> None:
    example.env["INGOT_HEAL_INTERVAL"] = "1s"


def service(example: ExampleProject) -> dict[str, Any]:
    return dict(example.ingot("status", "--json", check=True).json["services"][0])


def ledger(example: ExampleProject, action: str, actor: str = SELF_HEAL) -> list[dict[str, Any]]:
    entries = example.ingot("audit", "log", "--json", "--limit", "5000", check=True).json
    return [e for e in entries if e["action"] == action and e["actor"] == actor]


def warm_up(example: ExampleProject) -> None:
    """Wait until the load client's connections through the router are established and busy."""
    def served() -> int:
        report = service(example)
        return int(report["router"]["stats"][report["release"]]["requests"])

    start = served()
    poll(lambda: served() >= start + 200, timeout=30, what="the load to reach the router")


def test_killed_instance_is_replaced_by_the_agent_with_zero_failed_requests(example: ExampleProject,
                                                                            tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    before = service(example)["instances"]
    victim = before[0]
    with load(example.url, tmp_path) as during:
        warm_up(example)
        os.killpg(int(victim["pid"]), signal.SIGKILL)
        now = poll(lambda: (s := service(example)["instances"]) and len(s) == 2
                   and victim["id"] not in {i["id"] for i in s}
                   and all(i["health"] == "healthy" for i in s) and s, timeout=30, what="the agent to replace it")
    assert during["failures"] == [] and int(during["requests"]) > 50
    assert before[1]["id"] in {i["id"] for i in now}  # the survivor was left alone
    [repair] = ledger(example, "drift.repair")
    assert repair["payload"]["replaced"] == [victim["id"]] and len(repair["payload"]["started"]) == 1
    [finding] = repair["payload"]["findings"]
    assert finding["kind"] == "exited" and finding["instance"] == victim["id"]
    assert "detail" in finding["evidence"] and "last_log_lines" in finding["evidence"]
    assert [f["subject"] for f in ledger(example, "drift.found")] == [victim["id"]]
    assert ledger(example, "drift.repair", actor="tester@ci") == []  # nobody asked
    assert example.ingot("drift").code == 0
    assert example.ingot("audit", "verify").code == 0


def test_a_release_that_keeps_dying_is_backed_off_not_restarted_in_a_loop(example: ExampleProject) -> None:
    # Long enough after the gate to pass min_ready and be deployed; a crash loop after that.
    exit_after_first_health_check(example, 2.0)
    example.ingot("deploy", check=True)
    # Four failed replacements: the backoff waits 1 s, 2 s, 4 s, then 8 s before the fifth.
    backoffs = poll(lambda: (b := ledger(example, "self_heal.backoff")) and len(b) >= 4 and b,
                    timeout=60, interval=0.3, what="four failed replacements")
    status = service(example)
    repairs = ledger(example, "drift.repair")
    assert [b["payload"]["next_try_in"] for b in backoffs] == [1, 2, 4, 8]
    assert "exited" in backoffs[0]["payload"]["reason"] and "after passing its health gate" in backoffs[0][
        "payload"]["reason"]
    assert len(repairs) == 4  # the fifth waits for its 8 s
    # Every attempt began no sooner than the backoff before it allowed, and the gaps between them grow.
    begun = [r["at"] - r["payload"]["seconds"] for r in repairs]
    for backoff, start in zip(backoffs, begun[1:], strict=False):
        assert start >= backoff["at"] + backoff["payload"]["next_try_in"] - 0.05
    gaps = [later - earlier for earlier, later in itertools.pairwise(begun)]
    assert gaps[2] - gaps[0] > 1.5, gaps
    heal = status["self_heal"]
    assert heal["enabled"] and heal["backoff"]["failed_replacements"] == 4
    assert 0 < heal["backoff"]["next_try_in"] <= 8
    table = example.ingot("status", check=True).out
    assert "self-heal backing off: 4 failed replacement(s), next try in" in table
    # A crash loop, but this release is the only one ever deployed: nothing to go back to, and it says so once.
    [none] = ledger(example, "self_heal.fallback.none")
    assert "3 failed replacements in a row" in none["payload"]["reason"]
    assert "self-heal has no earlier stable release to go back to" in table
    assert ledger(example, "self_heal.fallback") == []

    # A new deployment ends the backoff at once; what the dead release left behind is cleared up,
    # without starting more instances than the replicas asked for.
    app = example.root / "app.py"
    # (Nor does it take the lock that kept responses whole while it died: it would hang holding it.)
    app.write_text(app.read_text().replace("WRITING.acquire(), ", "").replace("os._exit(3)", "None"))
    example.ingot("deploy", check=True)
    assert service(example)["self_heal"]["backoff"] is None
    poll(lambda: example.ingot("drift").code == 0, timeout=30, what="no drift")
    now = poll(lambda: (s := service(example)["instances"]) and all(i["health"] == "healthy" for i in s) and s,
               timeout=30, what="healthy instances")
    assert len(now) == 2
    assert [e["payload"]["reason"] for e in ledger(example, "self_heal.backoff.end")] == [
        f"new deployment {example.ingot('history', '--json', check=True).json[0]['deployment']}"]


def test_with_self_heal_off_drift_is_recorded_not_repaired(example: ExampleProject) -> None:
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("  staging: {}\n", "  staging: {self_heal: false}\n"))
    example.ingot("deploy", check=True)
    [victim, survivor] = service(example)["instances"]
    os.killpg(int(victim["pid"]), signal.SIGKILL)
    [found] = poll(lambda: ledger(example, "drift.found"), timeout=30, what="the finding recorded")
    assert found["subject"] == victim["id"] and found["payload"]["kind"] == "exited"
    assert found["payload"]["self_heal"] is False and "not repaired" in found["payload"]["note"]
    # Several more passes see it too: still one survivor, nothing started, the finding recorded once.
    passes = service(example)["self_heal"]["passes"]
    heal = poll(lambda: (h := service(example)["self_heal"])["passes"] >= passes + 3 and h, timeout=30,
                what="three more passes")
    assert heal["enabled"] is False and heal["findings"] == [f"staging/web: instance {victim['id']}: exited"]
    assert [i["id"] for i in service(example)["instances"]] == [survivor["id"]]
    assert ledger(example, "drift.repair") == [] and len(ledger(example, "drift.found")) == 1
    assert "self-heal off: 1 drift finding(s) recorded, not repaired" in example.ingot("status", check=True).out
    # `ingot reconcile` still repairs it when asked.
    assert "started 1 fresh instance" in example.ingot("reconcile", check=True).out
    assert len(service(example)["instances"]) == 2


def test_self_heal_leaves_a_verification_window_alone(example: ExampleProject, tmp_path: Path) -> None:
    use_strategy(example, "    strategy: {type: blue-green, drain_timeout: 5s, verification: 5m}")
    example.ingot("deploy", check=True)
    old = service(example)["instances"]
    example.set_version("2")
    deployed = example.ingot("deploy", "--json", check=True).json[0]
    assert deployed["verifying"]
    passes = service(example)["self_heal"]["passes"]
    heal = poll(lambda: (h := service(example)["self_heal"])["passes"] >= passes + 3 and h, timeout=30,
                what="three more passes")
    assert heal["paused"] == "a verification window is open"
    # The previous release runs on purpose, kept warm: self-heal neither flags nor replaces it.
    running = {i["id"] for i in service(example)["instances"]}
    assert {i["id"] for i in old} <= running and len(running) == 4
    assert ledger(example, "drift.found") == [] and ledger(example, "drift.repair") == []
    with load(example.url, tmp_path) as during:
        example.ingot("rollback", check=True)  # a pure switch back onto the very same warm instances
    assert during["failures"] == []
    assert {i["id"] for i in service(example)["instances"]} == {i["id"] for i in old}
