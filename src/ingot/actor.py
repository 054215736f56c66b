"""Who is acting: recorded in every ledger entry and release."""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Set per request by the HTTP API, so that its calls are recorded under the caller's name.
_acting_as: ContextVar[str | None] = ContextVar("ingot_actor", default=None)
_PRINTABLE = re.compile(r"[^\w.@:/+ -]")


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


def api_actor(claimed: str | None) -> str:
    """The name an API call is recorded under: what the caller says (it holds the token, so it is trusted
    as far as the token is), cleaned and marked as coming through the API."""
    name = _PRINTABLE.sub("", (claimed or "").strip())[:80]
    return f"{name or 'anonymous'} (api)"
