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

        return BuiltinFront(settings.http, settings.https, socks=socks)
    if settings.kind == "haproxy":
        # The HAProxy front goes here (routers/haproxy_front.py): return HAProxyFront(settings, home=home).
        raise UserInputError("INGOT_EDGE_KIND=haproxy: the HAProxy front is not available yet",
                             details=["set INGOT_EDGE_KIND=builtin (the default)"])
    raise UserInputError(f"INGOT_EDGE_KIND: unknown edge kind {settings.kind!r}; expected builtin or haproxy")
