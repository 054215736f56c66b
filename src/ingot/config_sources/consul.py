"""Consul KV as a config source, over its HTTP API (`GET /v1/kv/PREFIX?recurse`).

One recursive read of the prefix, served from one Raft index: `X-Consul-Index` is the revision the values
were read at, and each key's `ModifyIndex` the one that last changed it. Consul keys have no leading `/`:
the prefix is taken as written (`apps/hello/`). A 404 carrying `X-Consul-Index` means no key under the
prefix, which is an answer, not an outage.

Not tested against a real Consul: none could be installed here (Debian 12 packages no Consul server); the
tests answer as Consul's documentation says it does. ACL tokens are not supported yet.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from urllib.parse import quote

import httpx

from ingot.config_sources import EndpointsSource, SourceRead, SourceUnavailable
from ingot.config_sources.etcd import first_answer
from ingot.errors import UserInputError

KIND = "consul"
INDEX = "X-Consul-Index"


def _answered(response: httpx.Response) -> bool:
    return response.status_code in (200, 404) and INDEX in response.headers


class ConsulSource(EndpointsSource):
    kind = KIND

    def read(self, names: Collection[str]) -> SourceRead:
        path = "/v1/kv/" + quote(self.prefix)
        response = first_answer(KIND, self.endpoints, self.timeout, lambda client, endpoint: client.get(
            endpoint + path, params={"recurse": "true"}), accept=_answered)
        revision = int(response.headers[INDEX])
        entries = response.json() if response.status_code == 200 else []
        if not isinstance(entries, list):
            raise SourceUnavailable(f"consul at {response.url} answered with something other than a list of keys")
        wanted = set(names)
        values: dict[str, str] = {}
        versions: dict[str, int] = {}
        for entry in entries:
            key = str(entry.get("Key", ""))
            name = key[len(self.prefix):] if key.startswith(self.prefix) else None
            if name is None or name not in wanted:
                continue
            try:
                raw = base64.b64decode(entry.get("Value") or "")
                values[name] = raw.decode()
            except (binascii.Error, UnicodeDecodeError):
                raise UserInputError(f"consul key {key} does not hold UTF-8 text; an environment variable needs "
                                     "text") from None
            versions[name] = int(entry.get("ModifyIndex", 0))
        return SourceRead(KIND, self.endpoints, self.prefix, revision, values, versions)
