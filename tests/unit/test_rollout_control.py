"""A manual pause guarded by analysis ends when resumed: the analysis's own hold is cancelled as the same
resume wakes it (Python 3.11's wait_for lost that cancellation, and the pause never ended)."""

from __future__ import annotations

import asyncio

from ingot.executor import guarded
from ingot.rollout_control import RolloutControl


async def analysis_windows(control: RolloutControl) -> None:
    while True:
        await control.hold(0.05)


def test_a_guarded_manual_pause_ends_at_each_resume() -> None:
    async def one_pause() -> str:
        control = RolloutControl()
        asyncio.get_running_loop().call_later(0.1, control.resume, "operator")
        return await asyncio.wait_for(guarded(control.hold(None), analysis_windows(control)), 2.0)

    async def many() -> list[str]:
        return [await one_pause() for _ in range(10)]

    assert asyncio.run(many()) == ["resumed"] * 10


def test_an_abort_ends_a_held_pause_with_the_abort() -> None:
    async def aborted() -> str:
        control = RolloutControl()
        asyncio.get_running_loop().call_later(0.05, control.abort, "operator")
        try:
            await asyncio.wait_for(control.hold(None), 2.0)
        except Exception as exc:  # RolloutAborted
            return type(exc).__name__
        return "not aborted"

    assert asyncio.run(aborted()) == "RolloutAborted"
