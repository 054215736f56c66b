"""Running a canary analysis step against a live router: sampling windows and acting on verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ingot.analysis import Counters, Window, decide, judge
from ingot.errors import OperationFailed

if TYPE_CHECKING:
    from ingot.executor import Deployment
    from ingot.plan import Step


class AnalysisFailed(OperationFailed):
    pass


async def analyse(dep: Deployment, step: Step, record: Callable[[Deployment, dict[str, Any]], None], *,
                  until_failure: bool = False) -> dict[str, Any]:
    """Judge the canary against the stable release, window after window (see `ingot.analysis`).

    Ends at the first `proceed` (once `step.seconds` have passed, if given); raises `AnalysisFailed` on
    `fail`. With `until_failure` (the guard of a manual pause) it only ever ends by failing.
    """
    assert step.analysis is not None and step.release is not None and step.baseline is not None
    thresholds = step.analysis
    started = time.monotonic()
    window_start = _sample(dep, step.release, step.baseline)
    inconclusive_since: float | None = None
    windows = 0
    while True:
        await dep.control.hold(thresholds.interval)
        dep.control.check()
        end = _sample(dep, step.release, step.baseline)
        verdict = judge(Window(window_start[0], end[0]), Window(window_start[1], end[1]), thresholds)
        waited = 0.0 if inconclusive_since is None else time.monotonic() - inconclusive_since
        decision = decide(verdict, thresholds, waited, bounded=not until_failure)
        windows += 1
        record(dep, {"canary": step.release, "stable": step.baseline, "window": windows,
                     "verdict": verdict.as_dict(), "decision": decision.as_dict()})
        if decision.action == "fail":
            raise AnalysisFailed(
                f"analysis failed: {decision.reason}",
                details=[*verdict.reasons, f"traffic went back to {step.baseline}"],
            )
        if decision.action == "wait":
            inconclusive_since = inconclusive_since or time.monotonic()
            continue
        inconclusive_since = None
        window_start = end
        if until_failure:
            continue
        if step.seconds is None or time.monotonic() - started >= step.seconds:
            return {"windows": windows, "verdict": verdict.as_dict()}


def _sample(dep: Deployment, canary: str, stable: str) -> tuple[Counters, Counters]:
    stats = dep.router.stats()
    return Counters.of(stats.get(canary)), Counters.of(stats.get(stable))
