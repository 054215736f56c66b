"""Which artifacts to keep: pure rules, so that pruning can never surprise anyone.

Per service and per environment, the last `retention` distinct releases that were live there are kept:
the live one and the rollback targets. Releases never deployed anywhere are kept while they are among
the service's `retention` newest. An artifact is removed only when no kept release of any environment
uses it: a prune for staging can never take production's rollback inventory.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    service: str
    artifact: str
    created_at: float


@dataclass
class RetentionDecision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # artifact -> why (one line per reason)
    remove: dict[str, list[str]] = field(default_factory=dict)  # artifact -> releases that used it


def decide(
    releases: list[ReleaseInfo],
    live_history: dict[tuple[str, str], list[str]],  # (environment, service) -> release ids, oldest first
    retention: dict[tuple[str, str], int],  # (environment, service) -> how many to keep
    default_retention: int,
    stored: set[str],  # artifacts present in the stores
) -> RetentionDecision:
    by_id = {r.id: r for r in releases}
    decision = RetentionDecision()

    def keep(artifact: str, reason: str) -> None:
        decision.keep.setdefault(artifact, []).append(reason)

    ever_live: set[str] = set()
    for (environment, service), history in live_history.items():
        window = _last_distinct(history, retention.get((environment, service), default_retention))
        ever_live.update(history)
        for position, release_id in enumerate(window):
            info = by_id.get(release_id)
            if info is None:
                continue
            role = "live" if position == 0 and history and history[-1] == release_id else "rollback target"
            keep(info.artifact, f"{role} in {environment}: release {release_id}")
    for service in sorted({r.service for r in releases}):
        undeployed = sorted((r for r in releases if r.service == service and r.id not in ever_live),
                            key=lambda r: r.created_at, reverse=True)
        limit = max([n for (_env, svc), n in retention.items() if svc == service] or [default_retention])
        for info in undeployed[:limit]:
            keep(info.artifact, f"among the {limit} newest undeployed releases of {service}: release {info.id}")
    for info in releases:
        if info.artifact in stored and info.artifact not in decision.keep:
            decision.remove.setdefault(info.artifact, []).append(info.id)
    return decision


def _last_distinct(history: list[str], count: int) -> list[str]:
    """The newest `count` distinct releases of a history, newest first."""
    seen: list[str] = []
    for release_id in reversed(history):
        if release_id not in seen:
            seen.append(release_id)
        if len(seen) == count:
            break
    return seen
