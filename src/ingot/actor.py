"""Who is acting: recorded in every ledger entry and release."""

from __future__ import annotations

import getpass
import os
import socket


def current_actor() -> str:
    explicit = os.environ.get("INGOT_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"
