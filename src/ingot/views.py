"""Read models for the HTTP API and the dashboard: releases, one deployment in full, rollouts in progress.

Plain data over the store and the agent's status; the CLI's own views live in `ingot.operations`.
"""

from __future__ import annotations

from typing import Any

from ingot import ledger
from ingot.project import Project
from ingot.store import ReleaseRow


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
    verdicts = [e.payload for e in ledger.entries(project.store, environment=row.environment, service=row.service)
                if e.subject == row.id and e.action.endswith(".analysis")]
    return {
        "deployment": row.id, "environment": row.environment, "service": row.service, "kind": row.kind,
        "from": row.from_release, "release": row.to_release, "strategy": row.strategy, "actor": row.actor,
        "at": row.started_at, "outcome": project.store.deployment_outcome(row.id),
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
                "step": current_step, "analysis": detail["analysis"][-1] if detail["analysis"] else None,
            },
        })
    return out
