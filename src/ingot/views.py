"""Read models for the HTTP API and the dashboard: releases, one deployment in full, rollouts in progress.

Plain data over the store and the agent's status; the CLI's own views live in `ingot.operations`. The text
of `ingot status`, `history` and `logs` is rendered here too (`status_text`, ...), onto a console given by
the caller: the CLI's own, or one the agent makes for a thin client (see ingot.cli.fast), so both print
the same bytes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ingot import ledger, operations
from ingot.project import Project
from ingot.store import ReleaseRow, Store

if TYPE_CHECKING:
    from rich.console import Console


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


# How every console of ingot's text prints (ingot.cli.output's, and the agent's for a thin client).
CONSOLE_OPTIONS: dict[str, Any] = {"highlight": False, "soft_wrap": True}


def console_width(stdout_is_terminal: bool) -> int | None:
    """Off a terminal, lines are not wrapped at 80 columns: logs and CI keep whole lines."""
    return None if stdout_is_terminal else 160


def json_text(data: Any) -> str:
    """What `--json` prints."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def short(digest: str | None, length: int = 12) -> str:
    if not digest:
        return "-"
    return digest.split(":", 1)[-1][:length]


def status_text(report: dict[str, Any], out: Console, err: Console) -> None:
    """`ingot status` as text: the agent, a table of services, then what needs a person's attention."""
    from rich.table import Table

    agent = report["agent"]
    out.print(f"project {report['project']} — agent "
              + (f"running (pid {agent['pid']})" if agent["running"] else "not running"))
    uses_processes = any(i.get("runtime", "process") == "process" for s in report["services"]
                         for i in s.get("instances", ()))
    for weaker in (agent.get("isolation") or {}).get("weaker", []) if uses_processes else []:
        err.print(f"warning: {weaker}", markup=False, soft_wrap=True)
    if not report["services"]:
        out.print("nothing deployed")
        _one_off_lines(report, out)
        return
    table = Table(show_edge=False)
    for column in ("environment", "service", "release", "url", "instances", "requests", "5xx", "p99 ms"):
        table.add_column(column)
    for item in report["services"]:
        stats = item["router"]["stats"].get(item["release"] or "", {})
        healthy = sum(1 for i in item["instances"] if i["health"] == "healthy")
        elsewhere = item.get("machine") and item["machine"] != report.get("machine")
        table.add_row(item["environment"] + (f" (on {item['machine']})" if elsewhere else ""), item["service"],
                      item["release"] or "-", item["url"],
                      f"{healthy}/{len(item['instances'])} healthy", str(stats.get("requests", "-")),
                      str(stats.get("errors_5xx", "-")), f"{stats['p99_ms']:.1f}" if stats else "-")
    out.print(table)
    for item in report["services"]:
        paused = item.get("maintenance")
        if paused:
            out.print(f"  {item['environment']}/{item['service']}: maintenance on since {paused['since']}: "
                      f"every request answered 503 (Retry-After: {paused['retry_after']})", markup=False)
        window = item.get("verifying")
        if window:
            out.print(f"  {item['environment']}/{item['service']}: verifying {window['release']} until "
                      f"{window['until']}; {window['previous']} kept warm for a switch back", markup=False)
        hardening = item.get("hardening")
        if hardening and hardening["relaxed"]:
            out.print(f"  {item['environment']}/{item['service']}: hardening relaxed: "
                      f"{', '.join(hardening['relaxed'])} (reason: {hardening['reason']})", markup=False)
        for healing in _self_heal_lines(item.get("self_heal")):
            out.print(f"  {item['environment']}/{item['service']}: {healing}", markup=False)
        for route in item.get("routes") or []:
            out.print(f"  {item['environment']}/{item['service']}: route {route['url']} "
                      f"(certificate: {route['certificate']})", markup=False)
        for instance in item["instances"]:
            if instance["health"] != "healthy":
                out.print(f"  {item['service']}/{instance['id']} (pid {instance['pid']}, port "
                          f"{instance['port']}): {instance['state']}, {instance['health']}")
    _one_off_lines(report, out)


def _one_off_lines(report: dict[str, Any], out: Console) -> None:
    """The detached one-offs (`ingot run --detach`) still running: no service's instances, stopped by down."""
    for one in report.get("one_offs") or []:
        pid = "" if one["pid"] is None else f", pid {one['pid']}"
        out.print(f"  {one['environment']}/{one['service']}: one-off {one['id']} running ({one['runtime']}{pid}, "
                  f"release {one['release']}); its output: {one['log']}; 'ingot down' stops it", markup=False)


def _self_heal_lines(heal: dict[str, Any] | None) -> list[str]:
    """What `ingot status` says of self-healing: a fallback to the last stable release, a backoff, or drift
    left alone because it is off."""
    if not heal:
        return []
    lines = []
    fallback = heal.get("fallback")
    if fallback:
        match fallback["outcome"]:
            case "rolled back" | "rolling back":
                lines.append(f"self-heal {fallback['outcome']} from {fallback['from']} to {fallback['to']}, "
                             f"the last release that was stable: {fallback['reason']}")
            case "failed":
                lines.append(f"self-heal could not go back to {fallback['to']}: {fallback['error']} "
                             f"({fallback['reason']})")
            case _:
                lines.append(f"self-heal has no earlier stable release to go back to: {fallback['reason']}")
    backoff = heal.get("backoff")
    if backoff:
        lines.append(f"self-heal backing off: {backoff['failed_replacements']} failed replacement(s), next try in "
                     f"{backoff['next_try_in']:g}s (last: {backoff['last_failure']})")
    elif heal.get("findings") and not heal.get("enabled"):
        lines.append(f"self-heal off: {len(heal['findings'])} drift finding(s) recorded, not repaired "
                     "(ingot drift shows them, ingot reconcile repairs them)")
    return lines


def history_text(environment: str, rows: list[dict[str, Any]], out: Console) -> None:
    """`ingot history` as text: a table of deployments, newest first."""
    from rich.table import Table

    if not rows:
        out.print(f"no deployments in {environment} yet")
        return
    table = Table(show_edge=False)
    for column in ("when", "service", "kind", "release", "commit", "artifact", "who", "outcome", ""):
        table.add_column(column)
    for row in rows:
        commit = row["commit"] or ""
        commit_text = short(commit, 10) + ("-dirty" if commit.endswith("-dirty") else "")
        table.add_row(when(row["at"]), row["service"], row["kind"], row["release"], commit_text,
                      short(row["artifact"]), row["actor"], row["outcome"], "← live" if row["live"] else "")
    out.print(table)


def logs_text(tails: list[tuple[str, list[str]]], out: Console) -> None:
    """`ingot logs` as text: each instance's last lines under its name."""
    for instance, text in tails:
        out.print(f"==> {instance} <==", style="bold")
        for line in text:
            out.print(line, markup=False, highlight=False)


def drift_text(findings: list[dict[str, Any]], out: Console) -> None:
    """What `ingot drift` prints (the full CLI and the agent's answer to the thin client alike)."""
    if not findings:
        out.print("no drift: everything runs as its release says")
        return
    for finding in findings:
        who = f"instance {finding['instance']}" if finding["instance"] else f"service {finding['service']}"
        out.print(f"{finding['environment']}/{finding['service']}: {who}: [bold]{finding['kind']}[/bold]")
        for name, value in finding["evidence"].items():
            out.print(f"    {name}: {_evidence(value)}", markup=False)
        out.print(f"    repair: {finding['repair']}", markup=False)


def _evidence(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(_evidence(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
