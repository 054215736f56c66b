"""The `Front` implementations the contract suite runs against: adding one is a line in FRONT_KINDS and a
branch in `make_front` (ingot.edge.fronts), which builds each from the same settings."""

from __future__ import annotations

from pathlib import Path

from ingot.edge.front import Front
from ingot.edge.fronts import make_front
from ingot.edge.settings import EdgeSettings
from ingot.routers.base import ClientPolicy
from tests.support.harness import free_port

FRONT_KINDS = ["builtin", "haproxy"]


def new_front(kind: str, home: Path, clients: ClientPolicy | None = None) -> Front:
    """An unstarted front of `kind` on free loopback ports; `clients`: the machine's listener limits."""
    settings = EdgeSettings(kind=kind, http=("127.0.0.1", free_port()), https=("127.0.0.1", free_port()),
                            clients=clients or ClientPolicy())
    return make_front(settings, home=home)
