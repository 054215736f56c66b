"""Who is acting: recorded in every ledger entry and release."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Set per request by the HTTP API, so that its calls are recorded under the name of the token that made them.
_acting_as: ContextVar[str | None] = ContextVar("ingot_actor", default=None)


def current_actor() -> str:
    override = _acting_as.get()
    if override:
        return override
    explicit = os.environ.get("INGOT_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    token = _acting_as.set(name)
    try:
        yield
    finally:
        _acting_as.reset(token)
