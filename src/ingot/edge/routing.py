"""Which binding serves a request: host first (exact, then the longest `*.` suffix), then the longest
path prefix on segment boundaries. Pure functions over a `Table` built once per `set_table`, so a
request costs two dict lookups and a short walk up its path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from ingot.edge.front import Binding

T = TypeVar("T")


def normal_host(raw: str) -> str:
    """A Host header or SNI name as routes compare it: lower case, without the port or a final dot."""
    host = raw.strip().lower()
    if host.startswith("["):  # an IPv6 literal: never a route's host, kept whole
        return host.partition("]")[0] + "]"
    host = host.rpartition(":")[0] if ":" in host else host
    return host.rstrip(".")


def host_candidates(host: str) -> Iterable[str]:
    """`host`, then each wildcard that covers it from the longest: a.b.example.com → *.b.example.com,
    *.example.com, *.com. A wildcard covers one label or more, as the spec's `*.example.com` means any
    name under example.com."""
    yield host
    rest = host
    while "." in rest:
        rest = rest.partition(".")[2]
        yield "*." + rest


def path_matches(prefix: str, path: str) -> bool:
    """`/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` matches everything."""
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")


def request_path(url: str) -> str:
    """The path of a request target (origin or absolute form), without its query."""
    if not url.startswith("/"):
        _scheme, sep, rest = url.partition("://")
        url = "/" + rest.partition("/")[2] if sep else "/"
    return url.partition("?")[0].partition("#")[0] or "/"


class Table(Generic[T]):
    """host → [(path prefix, value)], longest prefix first."""

    def __init__(self, entries: Iterable[tuple[str, str, T]] = ()) -> None:
        hosts: dict[str, list[tuple[str, T]]] = {}
        for host, path, value in entries:
            hosts.setdefault(host.lower(), []).append((path, value))
        for paths in hosts.values():
            paths.sort(key=lambda item: len(item[0].rstrip("/")), reverse=True)
        self._hosts = hosts
        # Host header as sent → its paths (None: no host matches); what makes a request one dict lookup.
        self._seen: dict[bytes, list[tuple[str, T]] | None] = {}

    def __len__(self) -> int:
        return sum(len(p) for p in self._hosts.values())

    def host_known(self, host: str) -> bool:
        return any(c in self._hosts for c in host_candidates(normal_host(host)))

    def lookup(self, host: str, path: str) -> T | None:
        """The value of the most specific route for `host` (a Host header: port and case ignored) and
        `path`. A host whose exact entry has no matching path does not fall back to a wildcard: the
        exact name owns that host (its owner decides what it serves)."""
        for prefix, value in self._paths(normal_host(host)) or ():
            if path_matches(prefix, path):
                return value
        return None


    def _paths(self, name: str) -> list[tuple[str, T]] | None:
        for candidate in host_candidates(name):
            paths = self._hosts.get(candidate)
            if paths is not None:
                return paths
        return None

    def lookup_request(self, host: bytes, url: bytes) -> T | None:
        """`lookup` from a request's raw Host header and target, with the host's answer remembered."""
        seen = self._seen
        try:
            paths = seen[host]
        except KeyError:
            if len(seen) > 4096:  # a client sending random names must not grow it without bound
                seen.clear()
            paths = seen[host] = self._paths(normal_host(host.decode("latin-1")))
        if paths is None:
            return None
        if len(paths) == 1 and paths[0][0] == "/":
            return paths[0][1]
        path = request_path(url.decode("latin-1"))
        for prefix, value in paths:
            if path_matches(prefix, path):
                return value
        return None


def binding_table(bindings: Iterable[Binding]) -> Table[Binding]:
    return Table((b.route.host, b.route.path, b) for b in bindings)


def conflicts(bindings: Iterable[Binding]) -> list[tuple[Binding, Binding]]:
    """Pairs of bindings of different routers that claim the same host+path (the later one second)."""
    seen: dict[tuple[str, str], Binding] = {}
    found = []
    for b in bindings:
        key = (b.route.host.lower(), b.route.path.rstrip("/") or "/")
        holder = seen.get(key)
        if holder is not None and holder.router_id != b.router_id:
            found.append((holder, b))
        else:
            seen.setdefault(key, b)
    return found
