"""Read models for the HTTP API and the dashboard: releases, one deployment in full, rollouts in progress.

Plain data over the store and the agent's status; the CLI's own views live in `ingot.operations`.
"""

from __future__ import annotations

from typing import Any

from ingot import ledger, operations
from ingot.project import Project
from ingot.store import ReleaseRow, Store


def release_summary(release: ReleaseRow) -> dict[str, Any]:
    """What a person needs to pick a release: never its config values (they may be sensitive)."""
    return {"id": release.id, "service": release.service, "artifact": release.artifact_digest,
            "config_digest": release.config_digest, "spec_digest": release.spec_digest,
            "commit": release.commit, "created_at": release.created_at, "created_by": release.created_by}


def releases(project: Project, service: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    rows = [r for r in project.store.all_releases() if service is None or r.service == service]
    return [release_summary(r) for r in reversed(rows[-limit:])]


def deployment(project: Project, deployment_id: str) -> dict[str, Any] | None:
    """One deployment with its steps and the analysis verdicts recorded while it ran."""
    row = project.store.get_deployment(deployment_id)
    if row is None:
        return None
    env, service = row.environment, row.service
    # Only the ledger from this deployment's start on is read: the dashboard asks for a rollout every second.
    start = next((e for e in ledger.entries(project.store, environment=env, service=service,
                                            actions=[f"{row.kind}.start"]) if e.subject == row.id), None)
    entries = ledger.entries(project.store, environment=env, service=service, after=start.seq - 1 if start else 0)
    mine = [e for e in entries if e.subject == row.id]
    verdicts = [e.payload for e in mine if e.action.endswith(".analysis")]
    outcome = project.store.deployment_outcome(row.id)
    # Pause and resume are recorded per service, not per deployment: the last one since this one started.
    steering = [e for e in entries if start is not None and e.seq > start.seq
                and e.action in ("rollout.pause", "rollout.resume")]
    paused_by = steering[-1].actor if steering and steering[-1].action == "rollout.pause" else None
    planned = (start.payload.get("plan") or {}).get("steps") if start else None
    return {
        "deployment": row.id, "environment": row.environment, "service": row.service, "kind": row.kind,
        "from": row.from_release, "release": row.to_release, "strategy": row.strategy, "actor": row.actor,
        "at": row.started_at, "outcome": outcome,
        "planned_steps": len(planned) if isinstance(planned, list) else None,
        "paused_by": paused_by if outcome == "running" else None,
        "steps": [{"seq": s.seq, "name": s.name, "status": s.status, "detail": s.detail, "at": s.at}
                  for s in project.store.steps(row.id)],
        "analysis": verdicts,
    }


def rollouts(project: Project, services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per service of an agent status report: traffic by release, and the deployment in progress if any
    (its current step and latest analysis verdict)."""
    out = []
    for item in services:
        running = next((d for d in project.store.deployments(item["environment"], item["service"], limit=5)
                        if project.store.deployment_outcome(d.id) == "running"), None)
        detail = deployment(project, running.id) if running else None
        current_step = None
        started: list[dict[str, Any]] = []
        if detail:
            started = [s for s in detail["steps"] if s["status"] == "started"]
            current_step = started[-1] if started else None
        out.append({
            "environment": item["environment"], "service": item["service"], "release": item["release"],
            "weights": item["router"]["weights"], "stats": item["router"]["stats"],
            "verifying": item.get("verifying"),
            "deployment": None if detail is None else {
                "id": detail["deployment"], "kind": detail["kind"], "strategy": detail["strategy"],
                "from": detail["from"], "release": detail["release"], "actor": detail["actor"],
                "step": current_step, "step_number": len(started), "steps_total": detail["planned_steps"],
                "paused_by": detail["paused_by"],
                "analysis": detail["analysis"][-1] if detail["analysis"] else None,
            },
        })
    return out


def ledger_page(store: Store, *, after: int = 0, limit: int = 100, tail: bool = False, before: int | None = None,
                environment: str | None = None, service: str | None = None) -> dict[str, Any]:
    """A page of the ledger in order of `seq`: `limit` entries from `after`; or, with `tail`, the newest `limit`
    (older than `before`, if given: the dashboard pages back from the end). `older` says whether any remain
    before the page's first entry."""
    if tail or before is not None:
        page = ledger.latest(store, limit=limit + 1, before=before, environment=environment, service=service)
        older, entries = len(page) > limit, page[-limit:]
    else:
        entries = ledger.entries(store, environment=environment, service=service, after=after, limit=limit)
        older = bool(entries) and entries[0].seq > 1 and bool(
            ledger.latest(store, limit=1, before=entries[0].seq, environment=environment, service=service))
    return {"entries": [e.as_dict() for e in entries], "next_after": entries[-1].seq if entries else after,
            "older": older}


def overview(project: Project, environment: str | None) -> dict[str, Any]:
    """What the dashboard refreshes every second, from one status report of the agent: the services with
    their instances and health, and the traffic and rollout in progress of each."""
    report = operations.status(project, environment)
    return {**report, "environment": environment, "rollouts": rollouts(project, report["services"])}
