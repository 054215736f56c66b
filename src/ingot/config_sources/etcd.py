"""etcd v3 as a config source, over its JSON gRPC gateway (`POST /v3/kv/range`).

Why the gateway and httpx rather than a client library: the Python etcd3 libraries are unmaintained (and pin
old protobuf/grpc releases), while the gateway is part of etcd itself (3.4 and later serve it on the client
URL by default), documented, and plain HTTP+JSON with keys and values in base64. httpx is already one of
ingot's dependencies. Only what a deploy needs is used: one range read of the prefix, which etcd serves at a
single revision, so the values a release takes are one consistent snapshot and the revision names it.

Not supported yet: etcd authentication (users/roles) and client certificates; an https:// endpoint is
verified against the system's CA certificates.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection
from typing import Any

import httpx

from ingot.config_sources import EndpointsSource, SourceRead, SourceUnavailable
from ingot.errors import UserInputError
from ingot.httpclients import tls_context

KIND = "etcd"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes a range read cover every key starting with `prefix` (etcd's own rule: the
    prefix with its last byte below 0xff incremented and the rest dropped; all keys if there is none)."""
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] < 0xFF:
            return prefix[:index] + bytes([prefix[index] + 1])
    return b"\0"


class EtcdSource(EndpointsSource):
    kind = KIND

    def read(self, names: Collection[str]) -> SourceRead:
        # The whole prefix in one request: one revision for every key, whichever of them are there.
        raw_prefix = self.prefix.encode()
        body = {"key": _b64(raw_prefix), "range_end": _b64(prefix_end(raw_prefix))}
        answer = self._post("/v3/kv/range", body)
        wanted = set(names)
        values: dict[str, str] = {}
        versions: dict[str, int] = {}
        for kv in answer.get("kvs") or []:
            try:
                key = base64.b64decode(kv.get("key", "")).decode()
                raw = base64.b64decode(kv.get("value", ""))
            except (binascii.Error, UnicodeDecodeError):
                continue  # a key that is not text cannot be one of ours
            name = key[len(self.prefix):]
            if name not in wanted:
                continue
            try:
                values[name] = raw.decode()
            except UnicodeDecodeError:
                raise UserInputError(f"etcd key {key} holds {len(raw)} bytes that are not UTF-8 text; an "
                                     "environment variable needs text") from None
            versions[name] = int(kv.get("mod_revision", 0))
        revision = int((answer.get("header") or {}).get("revision", 0))
        return SourceRead(KIND, self.endpoints, self.prefix, revision, values, versions)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = first_answer(KIND, self.endpoints, self.timeout, lambda client, endpoint: client.post(
            endpoint + path, json=body))
        answer = response.json()
        if not isinstance(answer, dict):
            raise SourceUnavailable(f"etcd at {response.url} answered {path} with something other than an object")
        return answer


def first_answer(kind: str, endpoints: tuple[str, ...], timeout: float,
                 send: Callable[[httpx.Client, str], httpx.Response],
                 accept: Callable[[httpx.Response], bool] | None = None) -> httpx.Response:
    """The first endpoint's answer that is one (`accept`; default: 200 with a JSON body); every endpoint's
    failure named if none gives one (SourceUnavailable)."""
    failures = []
    with httpx.Client(verify=tls_context(), timeout=timeout, trust_env=False) as client:
        for endpoint in endpoints:
            answered = _attempt(client, endpoint, timeout, send, accept)
            if isinstance(answered, httpx.Response):
                return answered
            failures.append(f"{endpoint}: {answered}")
    raise SourceUnavailable(f"{kind} is unreachable: none of its endpoints answered ({', '.join(endpoints)})",
                            details=failures)


def _attempt(client: httpx.Client, endpoint: str, timeout: float, send: Callable[[httpx.Client, str], httpx.Response],
             accept: Callable[[httpx.Response], bool] | None) -> httpx.Response | str:
    """The endpoint's answer, or why it is none."""
    try:
        response = send(client, endpoint)
    except httpx.TimeoutException:
        return f"no answer within {timeout:g}s"
    except httpx.HTTPError as exc:
        return _reason(exc)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if accept(response) if accept is not None else (response.status_code == 200 and answer is not None):
        return response
    said = (answer.get("message") or answer.get("error")) if isinstance(answer, dict) else None
    return f"HTTP {response.status_code}" + (f": {said}" if said else "")


def _reason(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause or exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text
