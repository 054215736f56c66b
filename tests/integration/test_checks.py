"""Smoke checks before traffic: a failing one aborts with the previous release serving; passing ones run
before each step that gives the new release traffic, against its own instances."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tests.support.harness import ExampleProject, load, use_strategy

FETCH = ("import os, urllib.request; url = os.environ['INGOT_TARGET_URL']; "
         "print('uid', os.getuid(), url, urllib.request.urlopen(url).read().decode())")


def set_checks(example: ExampleProject, checks: str) -> None:
    """Replace the service's `checks:` (the lines given, each a `- {...}` item) in the spec."""
    spec = example.root / "ingot.yaml"
    text = spec.read_text()
    if "    checks:\n" in text:
        head, rest = text.split("    checks:\n", 1)
        rest = rest.split("    router:", 1)[1]
        text = head + "    router:" + rest
    spec.write_text(text.replace("    router: {listen", f"    checks:\n{checks}    router: {{listen", 1))


def entries(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    return [e for e in log if e["action"] == action]


def test_failing_checks_abort_with_the_previous_release_serving(example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    stable = example.get()["release"]
    example.set_version("2")
    set_checks(example, '      - {http: /, status: 200, body: \'"version": "1"\'}\n')
    with load(example.url, tmp_path) as during:
        by_http = example.ingot("deploy")
        set_checks(example, "      - {name: smoke, command: [python, -c, \"import os, sys; "
                            "print('smoke saw', os.environ['INGOT_TARGET_URL']); sys.exit(3)\"], timeout: 5s}\n")
        by_command = example.ingot("deploy")
    assert during["failures"] == [] and set(during["versions"]) == {"1"}
    assert by_http.code == 1 and "check 'GET /' failed" in by_http.err and "body does not match" in by_http.err
    assert by_command.code == 1 and "check 'smoke' failed" in by_command.err and "exited 3" in by_command.err
    assert example.get()["release"] == stable
    status = example.ingot("status", "--json", check=True).json["services"][0]
    assert {i["release"] for i in status["instances"]} == {stable}
    failed = [e["payload"] for e in entries(example, "deploy.check") if not e["payload"]["ok"]]
    # The HTTP check failed on each of the two new instances; the command ran once.
    assert [f["kind"] for f in failed] == ["http", "http", "command"]
    assert '"version": "2"' in failed[0]["output"]  # what the new release answered
    smoke = failed[2]
    assert smoke["check"] == "smoke" and smoke["output"].startswith("smoke saw http://127.0.0.1:")
    # Aimed at the new instance itself, not at the router.
    assert f":{example.port}" not in smoke["output"]
    history = example.ingot("history", "--json", check=True).json
    assert [h["outcome"] for h in history[:2]] == ["failed", "failed"]


def test_passing_checks_run_before_each_canary_step_and_rolling_batch(
        example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    use_strategy(example, "    strategy: {type: canary, drain_timeout: 5s, steps: [{weight: 20, pause: 300ms}, "
                          "{weight: 50, pause: 300ms}]}")
    set_checks(example, f'      - {{name: fetch, command: [python, -c, "{FETCH}"], timeout: 5s}}\n'
                        '      - {http: /healthz, body: ok}\n')
    example.set_version("2")
    [planned] = example.ingot("plan", "--json", check=True).json
    assert planned["checks"] == ["fetch", "GET /healthz"]
    assert ("smoke checks before each step that gives the new release traffic: fetch, GET /healthz"
            in example.ingot("plan", check=True).out)
    with load(example.url, tmp_path) as during:
        example.ingot("deploy", check=True)
    assert during["failures"] == []
    release = example.get()["release"]
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    order = []
    for entry in log:
        payload = entry["payload"]
        if entry["action"] == "deploy.check" and payload["release"] == release:
            order.append(("check", payload["check"], payload["weight"]))
            assert payload["ok"]
            if payload["check"] == "fetch":
                assert '"version": "2"' in payload["output"] and f":{example.port}" not in payload["output"]
                # As root, ingot runs a check's command as the service's own user, as its instances.
                assert not payload["output"].startswith("uid 0 ") or os.geteuid() != 0
        elif entry["action"] == "deploy.step" and payload["step"] == "route" and payload["status"] == "done":
            weight = dict(payload["weights"]).get(release)
            if weight:
                order.append(("route", "", weight))
    expected = []
    for weight in (20, 50, 100):
        # The HTTP check on each of the two new instances, the command once.
        expected += [("check", "fetch", weight), ("check", "GET /healthz", weight), ("check", "GET /healthz", weight),
                     ("route", "", weight)]
    assert order == expected

    # Rolling: before each batch's route, the checks run on that batch's fresh instance.
    spec = example.root / "ingot.yaml"
    spec.write_text(re.sub(r"^    strategy: \{.*\}$", "    strategy: {type: rolling, max_surge: 1, max_unavailable: 0, "
                                                      "drain_timeout: 5s, min_ready: 500ms}",
                           spec.read_text(), count=1, flags=re.M))
    example.set_version("3")
    seen = len(log)
    example.ingot("deploy", check=True)
    third = example.get()["release"]
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json[seen:]
    batches, checked_since = [], []
    for entry in log:
        payload = entry["payload"]
        if entry["action"] == "deploy.check" and payload["release"] == third:
            checked_since.append((payload["check"], payload["instance"], payload["ok"]))
        elif entry["action"] == "deploy.step" and payload["step"] == "route" and payload["status"] == "done":
            batches.append((dict(payload["weights"]).get(third), checked_since))
            checked_since = []
    first, second = batches[0], batches[1]
    assert 0 < first[0] < 100 and len(first[1]) == 2 and all(ok for _, _, ok in first[1])
    assert second[1] and {i for _, i, _ in second[1]} != {i for _, i, _ in first[1]}  # the next fresh instance
