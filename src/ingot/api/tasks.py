"""Long operations (deploy, rollback, promote) as resources: started by a POST that answers 202 at once,
followed by polling `GET /api/v1/operations/{id}` or reading its server-sent-event stream.

An operation runs in a thread of its own (the service functions block, talking to the agent over its socket)
with the requesting token's actor. Its events, the same ones the CLI prints, are kept in memory for a while;
a small record (state, deployment ids, result) is also written under the state directory, so that once the
server has restarted a finished operation is still answered, its deployments' outcomes read from the store.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingot.atomic import write_atomically
from ingot.errors import IngotError
from ingot.operations import DeployOutcome
from ingot.store import Store

KEEP_SECONDS = 3600.0  # a finished operation's events stay in memory this long, its record on disk a day
KEEP_RECORDS_SECONDS = 86400.0
MAX_EVENTS = 5000  # a build's output can be long: past this, the oldest output lines are dropped
FINAL = "end"
# The deployment outcomes the store records, which an operation's final state follows.
ENDED = ("succeeded", "failed", "aborted", "superseded", "interrupted")

Work = Callable[[Callable[[dict[str, Any]], None], Callable[[str], None]], list[DeployOutcome]]


@dataclass
class Operation:
    id: str
    kind: str
    environment: str
    services: list[str]
    actor: str
    created: float = field(default_factory=time.time)
    state: str = "running"
    ended: float | None = None
    deployments: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    result: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # output lines dropped past MAX_EVENTS
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self.state != "running"

    def add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self.events.append({"seq": self._seq, **event})
            if len(self.events) > MAX_EVENTS:
                index = next((i for i, e in enumerate(self.events) if e.get("event") == "output"), 0)
                del self.events[index]
                self.dropped += 1
        kind = event.get("event")
        if kind == "plan" and event.get("deployment"):
            self.deployments.append(str(event["deployment"]))
        elif kind == "step":
            self._step(event)

    def _step(self, event: dict[str, Any]) -> None:
        step = {"service": event.get("service"), "index": event.get("index"), "total": event.get("total"),
                "description": (event.get("step") or {}).get("description"), "status": event.get("status"),
                "seconds": event.get("seconds"), "error": event.get("error")}
        for known in self.steps:
            if (known["service"], known["index"]) == (step["service"], step["index"]):
                known.update(step)
                return
        self.steps.append(step)

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["seq"] > seq]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "environment": self.environment, "services": self.services,
                "actor": self.actor, "state": self.state, "created": self.created, "ended": self.ended,
                "deployment": self.deployments[-1] if self.deployments else None,
                "deployments": list(self.deployments), "steps": [dict(s) for s in self.steps],
                "result": self.result, "error": self.error}


class Operations:
    """The operations this server started: in memory while they run and for KEEP_SECONDS after."""

    def __init__(self, records: Path, store: Store) -> None:
        self.records = records
        self.store = store
        self._running: dict[str, Operation] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, environment: str, services: list[str], actor: str, work: Work) -> Operation:
        op = Operation(id=secrets.token_hex(8), kind=kind, environment=environment, services=services, actor=actor)
        self._forget_old()
        with self._lock:
            self._running[op.id] = op
        self._save(op)
        context = contextvars.copy_context()  # the request's actor goes along into the thread
        threading.Thread(target=context.run, args=(self._run, op, work), name=f"operation-{op.id}",
                         daemon=True).start()
        return op

    def _run(self, op: Operation, work: Work) -> None:
        def on_event(event: dict[str, Any]) -> None:
            known = len(op.deployments)
            op.add(event)
            if len(op.deployments) != known:
                self._save(op)

        error: dict[str, Any] | None = None
        result: list[dict[str, Any]] | None = None
        try:
            result = [o.as_dict() for o in work(on_event, lambda line: op.add({"event": "output", "line": line}))]
        except IngotError as exc:
            error = {"message": exc.message, "details": list(exc.details), "exit_code": exc.exit_code}
        except Exception as exc:  # a bug must still end the operation, saying what it was
            error = {"message": f"internal error: {exc!r}", "details": [], "exit_code": 1}
        op.result, op.error = result, error
        op.state = self._final_state(op.deployments, failed=error is not None)
        op.ended = time.time()
        self._save(op)
        op.add({"event": FINAL, "state": op.state, "result": result, "error": error,
                "deployments": list(op.deployments)})

    def _final_state(self, deployments: list[str], *, failed: bool) -> str:
        """The last deployment's outcome when it is one the store records (an abort, a supersession),
        else whether the operation raised."""
        if deployments:
            with contextlib.suppress(Exception):  # the store is a second opinion here, not a requirement
                outcome = self.store.deployment_outcome(deployments[-1])
                if outcome in ENDED and (outcome != "succeeded" or not failed):
                    return outcome
        return "failed" if failed else "succeeded"

    def get(self, op_id: str) -> Operation | None:
        """The operation, from memory, or as its record on disk says (the server restarted since)."""
        with self._lock:
            found = self._running.get(op_id)
        if found is not None:
            return found
        return self._load(op_id)

    # ---- records ------------------------------------------------------------------------------
    def _path(self, op_id: str) -> Path | None:
        if not op_id.isalnum() or len(op_id) > 64:
            return None
        return self.records / f"{op_id}.json"

    def _save(self, op: Operation) -> None:
        path = self._path(op.id)
        assert path is not None
        summary = op.summary()
        summary.pop("steps")  # the store has the steps of each deployment
        with contextlib.suppress(OSError):  # a full disk must not fail the operation itself
            self.records.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, json.dumps(summary, sort_keys=True, default=str))

    def _load(self, op_id: str) -> Operation | None:
        path = self._path(op_id)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        op = Operation(id=data["id"], kind=data["kind"], environment=data["environment"],
                       services=list(data["services"]), actor=data["actor"], created=data["created"],
                       state=data["state"], ended=data.get("ended"), deployments=list(data["deployments"]),
                       result=data.get("result"), error=data.get("error"))
        if op.state == "running":  # the server stopped while it ran: its deployments say how it ended
            outcomes = [self._outcome(d) for d in op.deployments]
            if not outcomes:
                op.state = "failed"
                op.error = {"message": "the server stopped before this operation's deployment started",
                            "details": [], "exit_code": 1}
            elif all(o in ENDED for o in outcomes):
                op.state = next((o for o in outcomes if o != "succeeded"), "succeeded")
        if op.done:
            op.add({"event": FINAL, "state": op.state, "result": op.result, "error": op.error,
                    "deployments": list(op.deployments)})
        return op

    def _outcome(self, deployment: str) -> str:
        try:
            return str(self.store.deployment_outcome(deployment))
        except Exception:  # unknown is an answer here
            return "unknown"

    def _forget_old(self) -> None:
        now = time.time()
        with self._lock:
            for op_id in [k for k, op in self._running.items() if op.ended and now - op.ended > KEEP_SECONDS]:
                del self._running[op_id]
        with contextlib.suppress(OSError):
            for path in self.records.glob("*.json"):
                if now - path.stat().st_mtime > KEEP_RECORDS_SECONDS:
                    path.unlink(missing_ok=True)


def sse(event: dict[str, Any]) -> str:
    """One server-sent event: its `seq` as the id (a reconnecting client sends it as Last-Event-ID)."""
    data = json.dumps(event, sort_keys=True, default=str)
    return f"id: {event['seq']}\nevent: {event.get('event', 'message')}\ndata: {data}\n\n"
