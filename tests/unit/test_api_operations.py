"""Operations kept by the API: their final state, and how a record is read back after the server restarted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingot.api.tasks import Operations
from ingot.errors import OperationFailed
from ingot.operations import DeployOutcome
from tests.support.harness import poll


class Outcomes:
    """The one thing of the store operations read: each deployment's outcome."""

    def __init__(self, **outcomes: str) -> None:
        self.outcomes = outcomes

    def deployment_outcome(self, deployment: str) -> str:
        return self.outcomes.get(deployment, "running")


def registry(tmp_path: Path, **outcomes: str) -> Operations:
    store: Any = Outcomes(**outcomes)
    return Operations(tmp_path / "operations", store)


def test_an_operation_records_its_events_steps_and_result_then_ends(tmp_path: Path) -> None:
    ops = registry(tmp_path, d1="succeeded")

    def work(on_event: Any, on_output: Any) -> list[DeployOutcome]:
        on_output("npm ci")
        on_event({"event": "plan", "service": "web", "deployment": "d1", "plan": {"steps": [{}]}})
        on_event({"event": "step", "service": "web", "index": 1, "total": 1, "status": "started",
                  "step": {"description": "start"}})
        on_event({"event": "step", "service": "web", "index": 1, "total": 1, "status": "done", "seconds": 0.1,
                  "step": {"description": "start"}})
        return [DeployOutcome("web", "r1", True, False, "http://x", "d1")]

    op = ops.start("deploy", "staging", ["web"], "alice", work)
    poll(lambda: op.done, timeout=5, what="the operation to end")
    assert op.state == "succeeded" and op.deployments == ["d1"] and op.result and op.result[0]["release"] == "r1"
    assert [s["status"] for s in op.steps] == ["done"]  # one step, updated in place
    assert [e["event"] for e in op.since(0)] == ["output", "plan", "step", "step", "end"]
    assert [e["event"] for e in op.since(3)] == ["step", "end"]
    assert ops.get(op.id) is op


def test_a_failed_operation_keeps_its_error_and_an_abort_is_said_as_such(tmp_path: Path) -> None:
    ops = registry(tmp_path, d2="aborted")

    def fails(on_event: Any, _on_output: Any) -> list[DeployOutcome]:
        on_event({"event": "plan", "service": "web", "deployment": "d2", "plan": {"steps": []}})
        raise OperationFailed("aborted by bob", details=["still serving: release r0"])

    op = ops.start("deploy", "staging", ["web"], "alice", fails)
    poll(lambda: op.done, timeout=5, what="the operation to end")
    assert op.state == "aborted"
    assert op.error == {"message": "aborted by bob", "details": ["still serving: release r0"], "exit_code": 1}


def test_after_a_restart_a_record_is_answered_from_the_store(tmp_path: Path) -> None:
    records = tmp_path / "operations"
    records.mkdir()
    base = {"kind": "deploy", "environment": "staging", "services": ["web"], "actor": "alice", "created": 1.0,
            "ended": None, "result": None, "error": None}
    for op_id, deployments in (("a1", ["d1"]), ("a2", ["d2"]), ("a3", []), ("a4", ["d4"])):
        (records / f"{op_id}.json").write_text(json.dumps({**base, "id": op_id, "state": "running",
                                                           "deployment": None, "deployments": deployments}))
    ops = registry(tmp_path, d1="succeeded", d2="superseded")  # d4: still running (another agent's)
    states = {op_id: getattr(ops.get(op_id), "state", None) for op_id in ("a1", "a2", "a3", "a4", "zz", "../x")}
    assert states == {"a1": "succeeded", "a2": "superseded", "a3": "failed", "a4": "running", "zz": None,
                      "../x": None}
    found = ops.get("a2")
    assert found is not None and [e["event"] for e in found.since(0)] == ["end"]
    assert found.since(0)[0]["state"] == "superseded"
