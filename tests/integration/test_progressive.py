"""Canary and rolling on both routers (built-in and HAProxy), under load from another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.harness import ExampleProject, break_app, load, poll, use_strategy

CANARY = ("\n    strategy: {{type: canary, drain_timeout: 5s, steps: {steps},"
          " analysis: {{interval: 500ms, max_error_rate: 0.05, max_p99_ms: {p99}, min_requests: 10}}}}")


def test_failing_canary_is_aborted_automatically_at_about_its_share(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, CANARY.format(steps="[{weight: 20, pause: 20s}]", p99=500))
    routed.ingot("deploy", check=True)
    stable = routed.get()["release"]
    routed.set_version("2")
    break_app(routed, 'self._send(500, b"boom\\n", "text/plain"); return')
    with load(routed.url, tmp_path) as during:
        failed = routed.ingot("deploy")
    assert failed.code == 1 and "analysis failed" in failed.err
    assert "error rate" in failed.err and f"traffic went back to {stable}" in failed.err
    share = len(during["failures"]) / int(during["requests"])
    assert 0 < share < 0.25, f"clients saw errors at {share:.0%}, expected about the canary's 20% for a while"
    assert routed.get()["release"] == stable
    status = routed.ingot("status", "--json", check=True).json["services"][0]
    assert {i["release"] for i in status["instances"]} == {stable}
    log = routed.ingot("audit", "log", "--json", "--limit", "1000").json
    verdicts = [e["payload"]["verdict"] for e in log if e["action"] == "deploy.analysis"]
    assert verdicts and verdicts[-1]["result"] == "fail" and verdicts[-1]["numbers"]
    assert routed.ingot("history", "--json").json[0]["outcome"] == "failed"


def test_slow_canary_is_aborted_on_latency(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, CANARY.format(steps="[{weight: 30, pause: 20s}]", p99=100))
    routed.ingot("deploy", check=True)
    stable = routed.get()["release"]
    routed.set_version("2")
    break_app(routed, "import time; time.sleep(0.3)")
    with load(routed.url, tmp_path):
        failed = routed.ingot("deploy")
    assert failed.code == 1 and "p99" in failed.err
    assert routed.get()["release"] == stable


def test_good_canary_walks_every_step(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, CANARY.format(steps="[{weight: 20, pause: 1s}, {weight: 50, pause: 1s}]", p99=500))
    routed.ingot("deploy", check=True)
    routed.set_version("2")
    with load(routed.url, tmp_path) as during:
        routed.ingot("deploy", check=True)
    assert during["failures"] == [] and set(during["versions"]) == {"1", "2"}
    assert routed.get()["version"] == "2"
    log = routed.ingot("audit", "log", "--json", "--limit", "1000").json
    routes = [e["payload"]["weights"] for e in log if e["action"] == "deploy.step"
              and e["payload"]["step"] == "route" and e["payload"]["status"] == "done"]
    assert [w.get(routed.get()["release"]) for w in routes[-3:]] == [20, 50, 100]
    # An inconclusive window (too few requests on a loaded machine) is a wait, never a pass: none may fail,
    # and the steps were passed on passing windows.
    verdicts = [e["payload"]["verdict"]["result"] for e in log if e["action"] == "deploy.analysis"]
    assert verdicts and set(verdicts) <= {"pass", "inconclusive"} and verdicts.count("pass") >= 2


def test_rolling_with_max_unavailable_zero_serves_every_request(routed: ExampleProject, tmp_path: Path) -> None:
    use_strategy(routed, "    strategy: {type: rolling, max_surge: 1, max_unavailable: 0, drain_timeout: 5s}")
    spec = routed.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 3"))
    routed.ingot("deploy", check=True)
    routed.set_version("2")
    with load(routed.url, tmp_path) as during:
        routed.ingot("deploy", check=True)
    assert during["failures"] == [] and set(during["versions"]) == {"1", "2"}
    status = routed.ingot("status", "--json", check=True).json["services"][0]
    assert len(status["instances"]) == 3 and {i["release"] for i in status["instances"]} == {status["release"]}
    kinds = [s["kind"] for s in routed.ingot("plan", "--json").json[0]["steps"]]
    assert kinds == []


def test_manual_pause_resumed_and_aborted_from_another_terminal(example: ExampleProject) -> None:
    use_strategy(example, "    strategy: {type: canary, drain_timeout: 5s, steps: [{weight: 10, pause: manual}]}")
    example.ingot("deploy", check=True)
    stable = example.get()["release"]

    def deploy_in_background() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def paused() -> bool:
        log = example.ingot("audit", "log", "--json", "--limit", "50").json
        return any(e["action"] == "deploy.step" and e["payload"]["step"] == "pause"
                   and e["payload"]["status"] == "started" for e in log[-5:])

    example.set_version("2")
    first = deploy_in_background()
    poll(paused, timeout=60, what="the manual pause")
    # The canary's instances run on purpose while the rollout holds the service: not drift.
    drift = example.ingot("drift", "--json")
    assert drift.code == 0 and drift.json == [], drift.out
    assert "aborted the rollout of web" in example.ingot("abort", check=True).out
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 1 and "aborted by" in err
    assert example.get()["release"] == stable
    assert example.ingot("history", "--json").json[0]["outcome"] == "aborted"

    second = deploy_in_background()
    poll(paused, timeout=60, what="the manual pause again")
    assert example.ingot("resume", check=True).code == 0
    second.communicate(timeout=60)
    assert second.returncode == 0 and example.get()["version"] == "2"
    assert example.ingot("abort").code == 2  # nothing in progress any more
