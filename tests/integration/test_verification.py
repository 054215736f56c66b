"""The verification window after full traffic, on both routers, under load from another process."""

from __future__ import annotations

from pathlib import Path

from tests.support.harness import ExampleProject, break_app, load, poll, use_strategy

WINDOW = ("    strategy: {{type: blue-green, drain_timeout: 5s, verification: {window},"
          " analysis: {{interval: 500ms, max_error_rate: 0.05, min_requests: 10}}}}")


def instances_by_release(example: ExampleProject) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for instance in example.ingot("status", "--json", check=True).json["services"][0]["instances"]:
        found.setdefault(instance["release"], set()).add(instance["id"])
    return found


def test_good_release_is_verified_then_the_previous_one_retires(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, WINDOW.format(window="8s"))
    routed.ingot("deploy", check=True)
    old = routed.get()["release"]
    routed.set_version("2")
    with load(routed.url, tmp_path) as during:
        deployed = routed.ingot("deploy", "--json", check=True).json[0]
        new = deployed["release"]
        # The command returned at the switch: the window is open, the previous release still runs.
        assert deployed["verifying"]["previous"] == old and deployed["verifying"]["seconds"] == 8
        assert routed.get()["release"] == new
        assert set(instances_by_release(routed)) == {old, new}
        poll(lambda: set(instances_by_release(routed)) == {new}, timeout=30, what="the previous release retired")
    assert during["failures"] == [] and "2" in during["versions"]
    assert routed.ingot("history", "--json", check=True).json[0]["outcome"] == "succeeded"
    log = routed.ingot("audit", "log", "--json", "--limit", "1000").json
    verdicts = [e["payload"]["verdict"]["result"] for e in log if e["action"] == "deploy.analysis"]
    assert verdicts and set(verdicts) <= {"pass", "inconclusive"} and "pass" in verdicts


def test_failed_verification_switches_back_to_the_warm_release(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, WINDOW.format(window="30s"))
    routed.ingot("deploy", check=True)
    old = routed.get()["release"]
    old_instances = instances_by_release(routed)[old]
    routed.set_version("2")
    break_app(routed, 'self._send(500, b"boom\\n", "text/plain"); return')
    with load(routed.url, tmp_path):
        deployed = routed.ingot("deploy", "--json", check=True).json[0]
        assert deployed["verifying"]["previous"] == old
        poll(lambda: routed.get()["release"] == old, timeout=30, what="traffic back on the previous release")
        poll(lambda: set(instances_by_release(routed)) == {old}, timeout=30, what="the bad release stopped")
    # A pure switch: the very instances that served before serve again; none was started for it.
    assert instances_by_release(routed)[old] == old_instances
    history = routed.ingot("history", "--json", check=True).json
    assert history[0]["release"] == deployed["release"] and history[0]["outcome"] == "failed"
    log = routed.ingot("audit", "log", "--json", "--limit", "1000").json
    fail = [e for e in log if e["action"] == "deploy.analysis" and e["payload"]["verdict"]["result"] == "fail"]
    assert fail and fail[-1]["payload"]["verdict"]["numbers"]
    assert routed.ingot("audit", "verify").code == 0


def test_rollback_inside_the_window_is_a_pure_switch(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, WINDOW.format(window="5m"))
    routed.ingot("deploy", check=True)
    old = routed.get()["release"]
    old_instances = instances_by_release(routed)[old]
    routed.set_version("2")
    with load(routed.url, tmp_path) as during:
        new = routed.ingot("deploy", "--json", check=True).json[0]["release"]
        status = routed.ingot("status", check=True)
        assert f"verifying {new}" in status.out and f"{old} kept warm" in status.out
        refused = routed.ingot("promote", "--from", "staging", "--to", "production")
        assert refused.code == 1 and "still in its verification window" in refused.err
        routed.ingot("rollback", check=True)
        assert routed.get()["release"] == old
        poll(lambda: set(instances_by_release(routed)) == {old}, timeout=30, what="the new release stopped")
    assert during["failures"] == [] and {"1", "2"} <= set(during["versions"])
    assert instances_by_release(routed)[old] == old_instances
    history = routed.ingot("history", "--json", check=True).json
    assert [h["kind"] for h in history[:2]] == ["rollback", "deploy"]
    assert history[1]["outcome"] == "superseded" and history[0]["outcome"] == "succeeded"
    log = routed.ingot("audit", "log", "--json", "--limit", "1000").json
    plan = next(e for e in reversed(log) if e["action"] == "rollback.start")["payload"]["plan"]
    assert [s["kind"] for s in plan["steps"]] == ["route", "drain", "stop"]
