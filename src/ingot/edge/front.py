"""The edge's shared listeners ("the front"): one HTTP and one HTTPS listener per machine, serving
every project's services by host name and path.

One interface, two implementations (built-in asyncio and HAProxy), chosen per machine by
`INGOT_EDGE_KIND`. The edge owns one `Front`; agents never talk to it directly: they declare a
service's routes on the service's router (`ensure` with `routes`), and the edge gives the front its
whole table after every change.

Contract every implementation keeps (tests/contract/ runs the same tests against each):

- `router(router_id, name, clients)` makes the `Router` (routers/base.py contract) that serves the
  routes bound to `router_id`: its pools, weights, drains and health are the same operations as a
  dedicated router's. It has no listener of its own unless `listen` is given (the built-in front
  only; HAProxy's front refuses it, since haproxy gains no frontend without a reload).
- `set_table(bindings)` replaces the whole route table atomically for new requests. A request is
  matched by host (exact first, then the longest `*.` suffix; the port and case are ignored) and
  then by the longest path prefix on segment boundaries (`/api` matches `/api` and `/api/x`, not
  `/apix`). No match: 404 from the edge itself, never another site's backend.
- TLS: `set_certificate(host, cert_pem, key_pem)` installs or replaces the certificate of a host
  (exact or wildcard) without dropping connections; handshakes select it by SNI. A handshake for a
  name without a certificate FAILS (no default certificate is ever served as another site's).
  `remove_certificate(host)` forgets it.
- Plain HTTP: `/.well-known/acme-challenge/<token>` is answered from `challenges` (token → key
  authorisation) for any host, before routing; other requests on a route whose `redirect` is on
  get 308 to `https://` (same host, path and query; `:PORT` added when the HTTPS listener is not on
  443); `hsts` adds Strict-Transport-Security to answers over TLS. Backends get `X-Forwarded-Proto`
  `https` or `http` as the client connected.
- `stop()` closes the listeners; the routers it made stop with the edge, as dedicated ones do.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ingot.routers.base import Address, ClientPolicy, Router

FRONT_KINDS = ("builtin", "haproxy")


@dataclass(frozen=True)
class Route:
    """One host+path a service claims on the shared listeners (from the spec's `routes`)."""

    host: str  # lower-case; exact ("app.example.com") or a wildcard ("*.example.com")
    path: str = "/"  # a prefix, starting with "/"
    tls: str = "auto"  # "auto" (ACME) | "off" (plain HTTP only) | "files" (cert and key below)
    cert: str | None = None  # PEM files, for tls == "files"
    key: str | None = None
    redirect: bool = True  # HTTP → HTTPS; only meaningful when tls != "off"
    hsts: int | None = None  # Strict-Transport-Security max-age, opt-in

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "tls": self.tls, "cert": self.cert, "key": self.key,
                "redirect": self.redirect, "hsts": self.hsts}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Route:
        hsts = raw.get("hsts")
        return cls(host=str(raw["host"]).lower(), path=str(raw.get("path") or "/"), tls=str(raw.get("tls") or "auto"),
                   cert=raw.get("cert"), key=raw.get("key"), redirect=bool(raw.get("redirect", True)),
                   hsts=int(hsts) if hsts is not None else None)


@dataclass(frozen=True)
class Binding:
    """A route and the router that serves it."""

    route: Route
    router_id: str
    owner: str  # the claiming project's state directory: named when another project claims the same route
    name: str  # "<project>/<environment>/<service>", for messages


@runtime_checkable
class Front(Protocol):
    challenges: MutableMapping[str, str]  # ACME HTTP-01: token → key authorisation

    @property
    def http_address(self) -> Address | None: ...

    @property
    def https_address(self) -> Address | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def router(self, router_id: str, name: str, clients: ClientPolicy, listen: Address | None = None) -> Router: ...

    async def set_table(self, bindings: list[Binding]) -> None: ...

    async def set_certificate(self, host: str, cert_pem: bytes, key_pem: bytes) -> None: ...

    async def remove_certificate(self, host: str) -> None: ...
