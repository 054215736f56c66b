"""`ingot serve`: auth on every endpoint, flows through the API and the remote CLI, metrics, the token."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingot import ledger
from ingot.machine import MACHINE_ENV
from ingot.store import InstanceRow, Store
from tests.support.api_server import Served, deployed_and_served, finished, serving
from tests.support.harness import ExampleProject, make_example, poll, stop_everything


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ExampleProject, Served]]:
    with deployed_and_served(make_example(tmp_path)) as served:
        yield served


def instance_ids(example: ExampleProject) -> set[str]:
    return {i["id"] for s in example.ingot("status", "--json", check=True).json["services"] for i in s["instances"]}


def protected_calls(server: Served) -> list[tuple[str, str]]:
    """Every operation the OpenAPI document lists, plus /metrics: all of them need the token."""
    spec = httpx.get(f"{server.url}/openapi.json", trust_env=False).json()
    calls = [(method.upper(), path.replace("{deployment_id}", "x").replace("{operation_id}", "x"))
             for path, methods in spec["paths"].items() for method in methods]
    return [*calls, ("GET", "/metrics")]


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_every_endpoint_refuses_a_missing_or_wrong_token_and_nothing_happens(
        served: tuple[ExampleProject, Served], token: str) -> None:
    example, server = served
    example.set_version("2")  # a deploy that got through would change what serves
    before = (example.get()["release"], len(example.ingot("audit", "log", "--json", "--limit", "100000").json))
    calls = protected_calls(server)
    assert {("POST", "/api/v1/deploy"), ("POST", "/api/v1/rollback"), ("POST", "/api/v1/abort"),
            ("POST", "/api/v1/promote"), ("GET", "/api/v1/ledger"), ("GET", "/api/v1/operations/x"),
            ("GET", "/api/v1/operations/x/events")} <= set(calls)
    with server.client(token) as client:
        for method, path in calls:
            body: dict[str, Any] | None = {"source": "staging", "target": "production"} if method == "POST" else None
            response = client.request(method, path, json=body)
            assert response.status_code == 401, f"{method} {path} answered {response.status_code}"
            assert response.headers.get("www-authenticate") == "Bearer"
    after = (example.get()["release"], len(example.ingot("audit", "log", "--json", "--limit", "100000").json))
    assert after == before


def test_serve_adopts_the_running_instances_and_answers_reads(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    try:
        example.ingot("deploy", check=True)
        before = instance_ids(example)  # run by the agent the CLI started on demand
        with serving(example) as server:
            assert instance_ids(example) == before  # taken over, not restarted
            answers_reads(example, server)
    finally:
        stop_everything(example)


def answers_reads(example: ExampleProject, server: Served) -> None:
    with server.client() as client:
        services = client.get("/api/v1/services").json()["services"]
        assert [s["release"] for s in services] == [example.get()["release"]]
        assert {i["id"] for i in client.get("/api/v1/instances").json()} == instance_ids(example)
        assert client.get("/api/v1/environments").json()["default"] == "staging"
        releases = client.get("/api/v1/releases").json()
        assert releases[0]["id"] == example.get()["release"] and "config" not in releases[0]
        page = client.get("/api/v1/ledger", params={"limit": 2}).json()
        assert [e["seq"] for e in page["entries"]] == [1, 2]
        following = client.get("/api/v1/ledger", params={"after": page["next_after"], "limit": 2}).json()
        assert following["entries"][0]["seq"] == 3
        assert client.get("/api/v1/ledger/verify").json()["ok"] is True
        assert client.get("/api/v1/deployments/nope").status_code == 404


def test_deploy_and_rollback_through_the_api(served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    first = example.get()["release"]
    example.set_version("2")
    with server.client() as client:
        response = client.post("/api/v1/deploy", json={}, headers={"X-Ingot-Actor": "alice"})  # not believed
        operation = finished(client, response)
        assert operation["state"] == "succeeded", operation
        outcome = operation["result"][0]
        answer = example.get()
        assert (answer["version"], answer["release"]) == ("2", outcome["release"])
        detail = client.get(f"/api/v1/deployments/{outcome['deployment']}").json()
        assert detail["outcome"] == "succeeded" and detail["actor"] == "default (api)"
        assert [s["name"] for s in detail["steps"]][-1] == "finish"
        back = finished(client, client.post("/api/v1/rollback", json={"service": "web"},
                                            headers={"X-Ingot-Actor": "bob"}))
        assert back["state"] == "succeeded" and back["result"][0]["release"] == first
        assert example.get()["release"] == first
        bad = client.post("/api/v1/rollback", json={"to": "ffffffff"})
        assert bad.status_code == 400 and "no release of web starts with" in bad.json()["error"]
        unknown = client.post("/api/v1/deploy", json={"environment": "nowhere"})
        assert unknown.status_code == 400 and "unknown environment" in unknown.json()["error"]
        extra = client.post("/api/v1/deploy", json={"enviroment": "staging"})
        assert extra.status_code == 422
    log = example.ingot("audit", "log", "--json", "--limit", "200").json
    assert any(e["action"] == "rollback.finish" and e["actor"] == "default (api)" for e in log)


def test_the_cli_drives_a_remote_server(served: tuple[ExampleProject, Served], tmp_path: Path) -> None:
    example, server = served
    elsewhere = tmp_path / "elsewhere"  # no spec here: everything comes from the server
    elsewhere.mkdir()
    remote = {"INGOT_SERVER": server.url, "INGOT_TOKEN": server.token}

    def ingot(*args: str, env: dict[str, str] = remote) -> Any:
        from tests.support.harness import ExampleProject as Project

        return Project(elsewhere, example.port).ingot(*args, extra_env=env)

    status = ingot("status", "--json")
    assert status.code == 0 and status.json["services"][0]["release"] == example.get()["release"]
    example.set_version("3")
    deployed = ingot("deploy", "--json")
    assert deployed.code == 0, deployed.err
    assert example.get()["version"] == "3"
    assert ingot("history", "--json").json[0]["actor"] == "default (api)"  # the token's name
    assert ingot("abort").code == 2  # nothing in progress: the server's error, as a local one would say
    wrong = ingot("status", env={**remote, "INGOT_TOKEN": "nope"})
    assert wrong.code == 2 and "refused the token" in wrong.err
    token_file = tmp_path / "token"
    token_file.write_text(server.token)
    by_file = ingot("--token-file", str(token_file), "status", "--json", env={"INGOT_SERVER": server.url})
    assert by_file.code == 0


def test_metrics_count_operations_and_live_traffic(served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    release = example.get()["release"]
    for _ in range(20):
        example.get()
    with server.client() as client:
        text = poll(lambda: (t := client.get("/metrics").text) and "ingot_router_requests_total" in t and t,
                    what="metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ingot_deployments_total", (("kind", "deploy"), ("outcome", "succeeded")))] >= 1
    where = (("environment", "staging"), ("release", release), ("service", "web"))
    assert samples[("ingot_router_requests_total", where)] >= 20
    assert samples[("ingot_router_weight_percent", where)] == 100
    assert samples[("ingot_instances", (*where[:2], ("service", "web"), ("state", "running")))] == 2


def test_token_rotation_locks_the_old_token_out(served: tuple[ExampleProject, Served]) -> None:
    example, server = served
    path = example.state / "keys" / "api-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    example.ingot("token", "rotate", check=True)
    fresh = example.ingot("token", "show", check=True).out.strip()
    assert fresh != server.token
    with server.client() as old, server.client(fresh) as new:
        assert old.get("/api/v1/services").status_code == 401
        assert new.get("/api/v1/services").status_code == 200
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert any(e["action"] == "token.rotate" for e in example.ingot("audit", "log", "--json").json)


def test_an_environment_running_on_another_machine_is_refused_with_400_and_nothing_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = make_example(tmp_path)
    monkeypatch.setenv(MACHINE_ENV, "host-a")  # staging runs on host A (its instance recorded there)
    store = Store(example.state)
    store.add_instance(InstanceRow(id="a1", environment="staging", service="web", release_id="r1",
                                   runtime="process", pid=999_999, proc_start="1", host="127.0.0.1", port=20_001,
                                   log_path="/dev/null", started_at=time.time(), stopped_at=None, state="running"))
    before = len(ledger.entries(store))
    monkeypatch.setenv(MACHINE_ENV, "host-b")  # and this `ingot serve` is host B's
    try:
        with serving(example) as server, server.client() as client:
            for path, body in (("deploy", {"environment": "staging"}), ("rollback", {"environment": "staging"}),
                               ("restart", {"environment": "staging", "service": "web"}),
                               ("scale", {"environment": "staging", "service": "web", "replicas": 3})):
                refused = client.post(f"/api/v1/{path}", json=body)
                assert refused.status_code == 400, (path, refused.text)
                assert "staging runs on machine host-a, not on this one (host-b)" in refused.json()["error"]
        assert [r.id for r in store.live_instances("staging")] == ["a1"] and store.deployments() == []
        assert [e.action for e in ledger.entries(store)[before:]] == ["agent.start"]  # serve's agent, nothing else
    finally:
        store.close()
        stop_everything(example)
