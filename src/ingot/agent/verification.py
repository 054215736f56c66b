"""Verification windows in progress: the rest of a deployment's plan, running after the caller got its answer.

After full traffic the previous release stays warm while the new one is verified. The deploy command
has returned by then and the service lock is free, so a rollback, a new deploy or `down` can come at
any moment: each first ends the window here (recorded as superseded) and then plans from what runs,
which makes a rollback onto the warm release a traffic switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingot.executor import Deployment

Key = tuple[str, str]
log = logging.getLogger("ingot.agent")


@dataclass
class Window:
    task: asyncio.Task[Any]
    deployment: Deployment
    opened: float  # time.time()
    seconds: float

    @property
    def release(self) -> str:
        return self.deployment.release.id

    @property
    def previous(self) -> str | None:
        return self.deployment.row.from_release

    @property
    def until(self) -> str:
        return datetime.fromtimestamp(self.opened + self.seconds, UTC).isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {"deployment": self.deployment.row.id, "release": self.release, "previous": self.previous,
                "seconds": self.seconds, "until": self.until}


class VerificationWindows:
    def __init__(self) -> None:
        self._open: dict[Key, Window] = {}

    def open(self, key: Key, task: asyncio.Task[Any], deployment: Deployment, seconds: float,
             on_end: Callable[[Key, Deployment], None]) -> Window:
        window = Window(task, deployment, time.time(), seconds)
        self._open[key] = window

        def ended(done: asyncio.Task[Any]) -> None:
            if self._open.get(key) is window:
                del self._open[key]
            on_end(key, deployment)
            if not done.cancelled() and done.exception() is not None:
                log.warning("verification of %s in %s/%s failed: %s", window.release, key[0], key[1],
                            getattr(done.exception(), "message", done.exception()))

        task.add_done_callback(ended)
        return window

    def get(self, key: Key) -> Window | None:
        return self._open.get(key)

    def open_keys(self) -> list[Key]:
        return list(self._open)

    def is_open(self, key: Key) -> bool:
        """While open, releases other than the live one run on purpose: kept warm for a switch back."""
        return key in self._open

    async def end(self, key: Key, by: str) -> None:
        """End the window (if one is open) before another operation takes the service over.

        Only the wait itself is cancelled; if the plan has gone past it (retiring the previous release,
        or switching back after a failed verdict), that is let finish.
        """
        window = self._open.get(key)
        if window is None:
            return
        window.deployment.superseded_by = by
        if window.deployment.in_window:
            window.task.cancel()
        await asyncio.wait({window.task})
