"""Driving a remote `ingot serve` over its HTTP API: the same results as `ingot.operations`, from afar."""

from __future__ import annotations

from typing import Any

import httpx

from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.operations import DeployOutcome

API = "/api/v1"


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

    def deploy(self, environment: str | None, service: str | None) -> list[DeployOutcome]:
        return _outcomes(self._call("POST", f"{API}/deploy", json={"environment": environment, "service": service}))

    def rollback(self, environment: str | None, service: str | None, to: str | None) -> list[DeployOutcome]:
        return _outcomes(self._call("POST", f"{API}/rollback",
                                    json={"environment": environment, "service": service, "to": to}))

    def promote(self, source: str, target: str, service: str | None, force: bool) -> list[DeployOutcome]:
        return _outcomes(self._call("POST", f"{API}/promote",
                                    json={"source": source, "target": target, "service": service, "force": force}))

    def control(self, environment: str | None, service: str | None, action: str) -> dict[str, Any]:
        return dict(self._call("POST", f"{API}/{action}", json={"environment": environment, "service": service}))


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
