"""Deploy, rollback and promote as operations: 202 at once, then polling and a server-sent-event stream, from a
real `ingot serve`; the remote CLI follows the stream (exit code from how it ended) and detaches on Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api_server import Served, deployed_and_served, finished
from tests.support.harness import ExampleProject, interrupt, make_example, use_strategy

pytestmark = pytest.mark.integration

HEALTHY = 'if self.path == "/healthz":\n            self._send(200, b"ok\\n", "text/plain")'
UNHEALTHY = 'if self.path == "/healthz":\n            self._send(500, b"down\\n", "text/plain")'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExampleProject, Served]]:
    with deployed_and_served(make_example(tmp_path_factory.mktemp("operations"), replicas=1)) as served:
        yield served


def read_events(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """The stream's events until the server ends it (after the final `end` event)."""
    events: list[dict[str, Any]] = []
    names: list[str] = []
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                names.append(line[6:].strip())
            elif line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert names == [e["event"] for e in events]  # each event's type is the SSE event name too
    return events


def test_a_deploy_answers_202_and_is_followed_by_polling_and_by_its_event_stream(
        served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    example.set_version("2")
    with server.client() as client:
        response = client.post("/api/v1/deploy", json={"service": "web"})
        assert response.status_code == 202, response.text
        started = response.json()
        where = f"/api/v1/operations/{started['id']}"
        assert response.headers["location"] == where and started["events"] == f"{where}/events"
        assert (started["kind"], started["environment"], started["services"]) == ("deploy", "staging", ["web"])

        events = read_events(client, started["events"])  # opened while it runs: follows it to the end
        kinds = [e["event"] for e in events]
        assert kinds[0] == "build" and kinds[-1] == "end" and kinds.count("end") == 1
        assert kinds.index("release") < kinds.index("plan") < kinds.index("step")
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        plan = next(e for e in events if e["event"] == "plan")
        end = events[-1]
        assert end["state"] == "succeeded" and end["error"] is None
        assert end["result"][0]["release"] == example.get()["release"]
        assert example.get()["version"] == "2"

        operation = client.get(where).json()
        assert operation["state"] == "succeeded" and operation["ended"] >= operation["created"]
        assert operation["deployment"] == plan["deployment"] == end["result"][0]["deployment"]
        assert operation["actor"] == "default (api)"
        assert operation["steps"] and {s["status"] for s in operation["steps"]} == {"done"}
        assert len(operation["steps"]) == len(plan["plan"]["steps"])
        assert operation["result"] == end["result"]
        deployment = client.get(f"/api/v1/deployments/{operation['deployment']}").json()
        assert deployment["outcome"] == "succeeded"

        # A finished operation's stream replays from where a client left off, then ends.
        again = read_events(client, started["events"], after=plan["seq"])
        assert again[0]["seq"] == plan["seq"] + 1 and again[-1] == end
        resumed = client.get(started["events"], headers={"Last-Event-ID": str(end["seq"] - 1)})
        assert resumed.text.count("event: ") == 1 and "event: end" in resumed.text

        assert client.get("/api/v1/operations/nope").status_code == 404
        assert client.get("/api/v1/operations/nope/events").status_code == 404
        # Bad input is refused at once, before any operation starts.
        refused = client.post("/api/v1/promote", json={"source": "staging", "target": "staging"})
        assert refused.status_code == 400 and "both staging" in refused.json()["error"]


def test_a_failed_operation_says_why_in_its_state_and_the_previous_release_serves(
        served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    good = example.get()["release"]
    broken(example)
    try:
        with server.client() as client:
            operation = finished(client, client.post("/api/v1/deploy", json={}))
    finally:
        broken(example, undo=True)
    assert operation["state"] == "failed"
    assert "did not become healthy" in operation["error"]["message"] and operation["error"]["exit_code"] == 1
    assert operation["result"] is None and operation["deployment"]
    assert any(s["status"] == "failed" for s in operation["steps"])
    assert example.get()["release"] == good


def broken(example: ExampleProject, *, undo: bool = False) -> None:
    """The next release fails its health gate within 2 s (or, with `undo`, is healthy again)."""
    app, spec = example.root / "app.py", example.root / "ingot.yaml"
    swap = [(HEALTHY, UNHEALTHY), ("deadline: 30s", "deadline: 2s")]
    for path, (good, bad) in zip((app, spec), swap, strict=True):
        old, new = (bad, good) if undo else (good, bad)
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))


def remote_ingot(example: ExampleProject, server: Served, elsewhere: Path, *args: str) -> Any:
    from tests.support.harness import ExampleProject as Project

    return Project(elsewhere, example.port).ingot(*args, extra_env={"INGOT_SERVER": server.url,
                                                                    "INGOT_TOKEN": server.token})


def test_the_remote_cli_follows_a_deploy_to_its_end_and_a_failing_one_exits_1(
        served: tuple[ExampleProject, Served], tmp_path: Path) -> None:
    example, server = served
    elsewhere = tmp_path / "elsewhere"  # no spec here: everything comes from the server
    elsewhere.mkdir()
    example.set_version("3")
    deployed = remote_ingot(example, server, elsewhere, "deploy")
    assert deployed.code == 0, deployed.err
    live = example.get()
    assert live["version"] == "3"
    # The same lines as a local deploy prints, from the event stream.
    assert "web: artifact " in deployed.out and f"web: release {live['release']} (new, signed)" in deployed.out
    assert "steps" in deployed.out and "web: done [1/" in deployed.out
    assert f"web: release {live['release']} is live at" in deployed.out

    broken(example)
    try:
        failed = remote_ingot(example, server, elsewhere, "deploy")
    finally:
        broken(example, undo=True)
    assert failed.code == 1, failed.out + failed.err
    assert "did not become healthy" in failed.err and "Traceback" not in failed.err
    assert "FAILED" in failed.out  # the failed step, as it happened
    assert example.get()["release"] == live["release"]

    rolled = remote_ingot(example, server, elsewhere, "rollback", "--json")
    assert rolled.code == 0, rolled.err
    assert rolled.json[0]["release"] == example.get()["release"] != live["release"]


def test_ctrl_c_detaches_from_a_remote_deploy_and_follow_picks_it_up(
        served: tuple[ExampleProject, Served], tmp_path: Path) -> None:
    example, server = served
    example.set_version("4")
    use_strategy(example, "    strategy: {type: blue-green, drain_timeout: 10s, min_ready: 4s}")  # time to detach
    env = {**os.environ, "INGOT_SERVER": server.url, "INGOT_TOKEN": server.token, "PYTHONUNBUFFERED": "1"}
    env.pop("INGOT_HOME", None)
    process = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    for line in process.stdout:
        if "steps" in line:  # planned: the agent runs it now
            break
    out, err = interrupt(process, timeout=30)
    assert process.returncode == 130, out + err
    assert "detached: operation " in err and "follow" in err
    operation = err.split("detached: operation ", 1)[1].split()[0]
    with server.client() as client:  # still running there (min_ready 4 s): a second deploy is refused at once
        busy = client.post("/api/v1/deploy", json={})
        assert busy.status_code == 409 and "staging is locked" in busy.json()["error"], busy.text
    followed = remote_ingot(example, server, tmp_path, "follow", operation)
    assert followed.code == 0, followed.err
    assert example.get()["version"] == "4"
    assert f"release {example.get()['release']} is live at" in followed.out
    with server.client() as client:
        assert client.get(f"/api/v1/operations/{operation}").json()["state"] == "succeeded"


def test_remote_irreversible_deploy_refuses_a_rollback_past_it_unless_forced(
        served: tuple[ExampleProject, Served], tmp_path: Path) -> None:
    example, server = served
    before = example.get()["release"]
    example.set_version("5")
    deployed = remote_ingot(example, server, tmp_path, "deploy", "--irreversible")
    assert deployed.code == 0, deployed.err
    marked = example.get()["release"]
    assert marked != before
    with server.client() as client:  # refused at once (400), before any operation starts
        refused = client.post("/api/v1/rollback", json={"to": before})
        assert refused.status_code == 400 and f"past irreversible release {marked}" in refused.json()["error"]
    cli = remote_ingot(example, server, tmp_path, "rollback", "--to", before)
    assert cli.code == 2, cli.out + cli.err
    assert f"past irreversible release {marked}" in cli.err and "deployed with --irreversible" in cli.err
    assert "Traceback" not in cli.err and example.get()["release"] == marked
    forced = remote_ingot(example, server, tmp_path, "rollback", "--to", before, "--force",
                          "--rerun-release-command", "--json")
    assert forced.code == 0, forced.err
    assert example.get()["release"] == before
    with server.client() as client:
        log = client.get("/api/v1/ledger", params={"tail": "true", "limit": 50}).json()["entries"]
    [entry] = [e for e in log if e["action"] == "rollback.forced"]
    assert entry["subject"] == before and entry["payload"]["past_irreversible"] == [marked]
    assert entry["actor"] == "default (api)"


def test_remote_scale_and_restart_keep_the_live_release(served: tuple[ExampleProject, Served], tmp_path: Path) -> None:
    example, server = served
    live = example.get()["release"]
    scaled = remote_ingot(example, server, tmp_path, "scale", "web", "2", "--json")
    assert scaled.code == 0, scaled.err
    assert scaled.json["release"] == live and scaled.json["replicas"] == 2
    restarted = remote_ingot(example, server, tmp_path, "restart", "web")
    assert restarted.code == 0, restarted.err
    assert f"fresh instances of release {live}" in restarted.out
    with server.client() as client:
        log = client.get("/api/v1/ledger", params={"tail": "true", "limit": 60}).json()["entries"]
        [start] = [e for e in log if e["action"] == "scale.start"]
        assert start["payload"]["replicas"] == {"from": 1, "to": 2} and start["actor"] == "default (api)"
        assert [e["payload"]["outcome"] for e in log if e["action"] == "restart.finish"] == ["succeeded"]
        services = client.get("/api/v1/services").json()["services"]
    [web] = [s for s in services if s["service"] == "web"]
    assert len(web["instances"]) == 2 and {i["release"] for i in web["instances"]} == {live}
    refused = remote_ingot(example, server, tmp_path, "scale", "web", "0")
    assert refused.code == 2 and "expected 1 or more replicas" in refused.err
