"""Steering a rollout in progress from another terminal: pause, resume (promote a step), abort."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from ingot.errors import OperationFailed

T = TypeVar("T")


class RolloutAborted(OperationFailed):
    pass


class RolloutControl:
    """Shared between the executor applying a plan and the agent's control requests."""

    def __init__(self) -> None:
        self.paused_by: str | None = None
        self.aborted_by: str | None = None
        self._changed = asyncio.Event()
        self._advance = 0  # resumes asked for; a manual pause consumes one

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def pause(self, who: str) -> None:
        self.paused_by = who
        self._notify()

    def resume(self, who: str) -> None:
        """Lift a pause, or end the current manual pause step (promote-step)."""
        self.paused_by = None
        self._advance += 1
        self._notify()

    def abort(self, who: str) -> None:
        self.aborted_by = who
        self._notify()

    async def or_abort(self, work: Awaitable[T]) -> T:
        """Await `work`, but give it up as soon as the rollout is aborted (raises RolloutAborted): a
        health gate that may take its whole deadline must not hold an abort back."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                self.check()
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def check(self) -> None:
        if self.aborted_by:
            raise RolloutAborted(f"aborted by {self.aborted_by}")

    async def checkpoint(self) -> float:
        """Between steps: wait while paused; return how long it waited. Raises if aborted."""
        started = time.monotonic()
        while True:
            self.check()
            if self.paused_by is None:
                return time.monotonic() - started
            await self._changed.wait()

    async def hold(self, seconds: float | None) -> str:
        """A pause step: `seconds`, or until resumed when None. Returns how it ended."""
        deadline = None if seconds is None else time.monotonic() + seconds
        advance = self._advance
        while True:
            self.check()
            if seconds is None and self._advance > advance:
                return "resumed"
            if seconds is not None and self._advance > advance:
                return "promoted early"
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0 and self.paused_by is None:
                return "elapsed"
            changed = self._changed
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives as
            # the event is set (it returns the result instead), and a cancelled hold then never ends.
            try:
                async with asyncio.timeout(None if remaining is None else max(remaining, 0.05)):
                    await changed.wait()
            except TimeoutError:
                continue
