"""Driving a remote `ingot serve` over its HTTP API: the same results as `ingot.operations`, from afar."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx

from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.operations import DeployOutcome

API = "/api/v1"
OnStart = Callable[[str], None]


class Progress(Protocol):
    """Where an operation's events go as they come (the CLI's progress display)."""

    def event(self, event: dict[str, Any]) -> None: ...

    def output(self, line: str) -> None: ...


class Remote:
    def __init__(self, url: str, token: str, timeout: float = 3600.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"--server {url}: expected an http:// or https:// URL, e.g. http://127.0.0.1:7070")
        self.url = url.rstrip("/")
        # The server records the token's name as the actor: a name sent along would be a claim it cannot check.
        headers = {"Authorization": f"Bearer {token}"}
        self._client = httpx.Client(base_url=self.url, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=10.0), trust_env=False)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OperationFailed(f"cannot reach the ingot server at {self.url}: {exc}") from exc
        if response.status_code == 401:
            raise UserInputError(f"the ingot server at {self.url} refused the token (401): set INGOT_TOKEN or "
                                 "--token-file to the token that server uses ('ingot token show' there)")
        if response.is_success:
            return response.json()
        raise _error_from(response)

    def status(self, environment: str | None) -> dict[str, Any]:
        return dict(self._call("GET", f"{API}/services", params=_given(environment=environment)))

    def history(self, environment: str | None, service: str | None, limit: int) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{API}/deployments",
                               params=_given(environment=environment, service=service, limit=limit)))

    def drift(self, environment: str | None) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{API}/drift", params=_given(environment=environment)))

    def ledger(self, environment: str | None, service: str | None, limit: int) -> list[dict[str, Any]]:
        page = self._call("GET", f"{API}/ledger",
                          params=_given(environment=environment, service=service, limit=limit, tail="true"))
        return list(page["entries"])

    # Deploy, rollback and promote start an operation on the server (202) and follow its event stream.
    def deploy(self, environment: str | None, service: str | None, progress: Progress | None = None,
               on_start: OnStart | None = None, *, irreversible: bool = False) -> list[DeployOutcome]:
        started = self._call("POST", f"{API}/deploy", json={"environment": environment, "service": service,
                                                             "irreversible": irreversible})
        return self._until_done(started, progress, on_start)

    def rollback(self, environment: str | None, service: str | None, to: str | None,
                 progress: Progress | None = None, on_start: OnStart | None = None, *, force: bool = False,
                 rerun_release_command: bool = False) -> list[DeployOutcome]:
        started = self._call("POST", f"{API}/rollback", json={
            "environment": environment, "service": service, "to": to, "force": force,
            "rerun_release_command": rerun_release_command})
        return self._until_done(started, progress, on_start)

    def promote(self, source: str, target: str, service: str | None, force: bool,
                progress: Progress | None = None, on_start: OnStart | None = None, *,
                rerun_release_command: bool = False) -> list[DeployOutcome]:
        started = self._call("POST", f"{API}/promote",
                             json={"source": source, "target": target, "service": service, "force": force,
                                   "rerun_release_command": rerun_release_command})
        return self._until_done(started, progress, on_start)

    def scale(self, environment: str | None, service: str, replicas: int, batch: int | None,
              progress: Progress | None = None, on_start: OnStart | None = None) -> list[DeployOutcome]:
        started = self._call("POST", f"{API}/scale", json={"environment": environment, "service": service,
                                                            "replicas": replicas, "batch": batch})
        return self._until_done(started, progress, on_start)

    def restart(self, environment: str | None, service: str, batch: int | None,
                progress: Progress | None = None, on_start: OnStart | None = None) -> list[DeployOutcome]:
        started = self._call("POST", f"{API}/restart", json={"environment": environment, "service": service,
                                                              "batch": batch})
        return self._until_done(started, progress, on_start)

    def operation(self, operation_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"{API}/operations/{operation_id}"))

    def _until_done(self, started: dict[str, Any], progress: Progress | None,
                    on_start: OnStart | None) -> list[DeployOutcome]:
        if on_start is not None:
            on_start(str(started["id"]))
        return self.follow(str(started["id"]), progress)

    def follow(self, operation_id: str, progress: Progress | None = None) -> list[DeployOutcome]:
        """Read the operation's events until its final one (reconnecting from the last one seen if the
        stream breaks); its outcomes, or its error raised as the error it was on the server."""
        final = self._final_event(operation_id, progress)
        error = final.get("error")
        if error:
            kind = UserInputError if error.get("exit_code") == 2 else OperationFailed
            raise kind(str(error.get("message")), details=list(error.get("details") or []))
        if final.get("state") != "succeeded":
            raise OperationFailed(f"operation {operation_id} ended {final.get('state')}")
        return _outcomes(list(final.get("result") or []))

    def _final_event(self, operation_id: str, progress: Progress | None) -> dict[str, Any]:
        seen, breaks = 0, 0
        path = f"{API}/operations/{operation_id}/events"
        while True:
            try:
                with self._client.stream("GET", path, params={"after": seen},
                                         headers={"Accept": "text/event-stream"}) as response:
                    if not response.is_success:
                        response.read()
                        raise _error_from(response)
                    for event in _events(response.iter_lines()):
                        seen = int(event.get("seq", seen))
                        if event.get("event") == "end":
                            return event
                        if progress is not None:
                            show(progress, event)
            except httpx.HTTPError as exc:
                breaks += 1
                if breaks > 5:
                    raise OperationFailed(f"lost the event stream of operation {operation_id} from {self.url}: "
                                          f"{exc}", details=[f"it may still run there: 'ingot --server {self.url} "
                                                             f"follow {operation_id}'"]) from exc
                time.sleep(min(0.2 * 2 ** breaks, 3.0))

    def control(self, environment: str | None, service: str | None, action: str) -> dict[str, Any]:
        return dict(self._call("POST", f"{API}/{action}", json={"environment": environment, "service": service}))


def show(progress: Progress, event: dict[str, Any]) -> None:
    if event.get("event") == "output":
        progress.output(str(event.get("line", "")))
    else:
        progress.event(event)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The data of each server-sent event (one `data:` line each here), skipping comments."""
    for line in lines:
        if line.startswith("data:"):
            yield dict(json.loads(line[5:].strip()))


def _given(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _outcomes(data: list[dict[str, Any]]) -> list[DeployOutcome]:
    return [DeployOutcome(**item) for item in data]


def _error_from(response: httpx.Response) -> IngotError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("error") or body.get("detail") or f"HTTP {response.status_code}"
    if not isinstance(message, str):  # FastAPI's validation errors come as a list
        message = f"the server refused the request: {message}"
    error = UserInputError if response.status_code in (400, 404, 422) else OperationFailed
    return error(message, details=list(body.get("details") or []))
