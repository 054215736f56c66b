"""`make_front(settings)`: the machine's `Front` of the kind its settings name (`INGOT_EDGE_KIND`)."""

from __future__ import annotations

import socket
from pathlib import Path

from ingot.edge.front import Front
from ingot.edge.settings import EdgeSettings
from ingot.errors import UserInputError


def make_front(settings: EdgeSettings, *, home: Path | None = None,
               socks: dict[str, socket.socket] | None = None) -> Front:
    """An unstarted front. `home`: the edge's state directory (where an implementation keeps its files);
    `socks`: listening sockets the edge's supervisor held across a restart, by name ("http", "https")."""
    if settings.kind == "builtin":
        from ingot.edge.builtin_front import BuiltinFront

        return BuiltinFront(settings.http, settings.https, socks=socks, clients=settings.clients)
    if settings.kind == "haproxy":
        from ingot.edge.haproxy_front import HAProxyFront

        if home is None:
            raise ValueError("an HAProxy front keeps its haproxy's files in the edge's home: give `home`")
        # Its own directory, not under home/haproxy (the dedicated routers' workdirs, whose strays the edge
        # stops). Held sockets are not used: its haproxy outlives the edge and is adopted by the next one.
        return HAProxyFront(home / "front", http=settings.http, https=settings.https, clients=settings.clients)
    raise UserInputError(f"INGOT_EDGE_KIND: unknown edge kind {settings.kind!r}; expected builtin or haproxy")
