"""Deploy hooks (spec `hooks`) and the notification of a finished operation (spec `notify`).

Hooks are the operator's local commands, run where the deploy is run (the CLI, the API server, the git
watcher), as its user, in the spec's directory, inside the environment's deploy lock, with the
operator's environment and INGOT_PROJECT, _ENVIRONMENT, _SERVICE, _RELEASE, _COMMIT, _ACTOR and _OUTCOME.
A failing `pre_deploy` stops the deploy before anything starts; the others' failures are recorded and
change nothing. Every hook's run (exit code, the end of its output) is in the ledger (`hook.<name>`).

Notifications are handed to the agent, which delivers them in the background (see ingot.notify): a
deploy never waits for a receiver, and a receiver's failure never changes a deploy's outcome.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ingot import ledger
from ingot.agent.client import AgentClient
from ingot.local_command import CommandResult, run_command
from ingot.notify import event_of
from ingot.project import Project
from ingot.runtimes.process import resolve_command
from ingot.spec.models import HooksSpec
from ingot.store import ReleaseRow

log = logging.getLogger("ingot")
HOOKS = ("pre_deploy", "post_deploy", "on_failure", "on_rollback")


def run_hook(project: Project, environment: str, service: str, hooks: HooksSpec, which: str, *,
             release: ReleaseRow, actor: str, outcome: str) -> CommandResult | None:
    """Run hook `which` if the service has it; its run recorded. None: the service has no such hook."""
    argv = getattr(hooks, which)
    if not argv:
        return None
    env = {**os.environ, "INGOT_PROJECT": project.spec.project, "INGOT_ENVIRONMENT": environment,
           "INGOT_SERVICE": service, "INGOT_RELEASE": release.id, "INGOT_COMMIT": release.commit or "",
           "INGOT_ACTOR": actor, "INGOT_OUTCOME": outcome, "INGOT_HOOK": which}
    done = run_command(resolve_command(tuple(argv)), env=env, cwd=project.spec.root_dir, timeout=hooks.timeout)
    ledger.record(project.store, actor=actor, action=f"hook.{which}", environment=environment, service=service,
                  subject=release.id, payload={"hook": which, "command": list(argv), "ok": done.ok,
                                               "exit_code": done.code, "timed_out": done.timed_out,
                                               "error": done.error, "output": done.output, "seconds": done.seconds,
                                               "outcome": outcome})
    return done


def notify(project: Project, environment: str, service: str, *, kind: str, outcome: str, release: ReleaseRow,
           actor: str, previous: str | None = None, deployment: str | None = None, error: str | None = None,
           url: str | None = None) -> None:
    """Hand the notification of a finished operation to the agent; never raises (a deploy's outcome is
    what it is, whatever becomes of its notification)."""
    event = event_of(kind, outcome)
    entries = [e for e in project.spec.notify_for(environment) if event in e.events]
    if not entries:
        return
    facts: dict[str, Any] = {
        "event": event, "kind": kind, "outcome": outcome, "project": project.spec.project,
        "environment": environment, "service": service, "release": release.id, "previous": previous,
        "commit": release.commit, "actor": actor, "deployment": deployment, "error": error, "url": url,
    }
    try:
        AgentClient(project.paths).call("notify", timeout=10.0, environment=environment, service=service,
                                        facts=facts, entries=[e.model_dump(mode="json") for e in entries])
    except Exception as exc:  # recorded and said in the log; the deploy stands
        log.warning("the notification of %s could not be handed to the agent: %s", kind, exc)
        try:
            ledger.record(project.store, actor=actor, action="notify.delivery", environment=environment,
                          service=service, subject=deployment or release.id,
                          payload={"event": event, "deployment": deployment, "attempt": 0, "delivered": False,
                                   "final": True, "error": f"not handed to the agent: {type(exc).__name__}"})
        except Exception:  # a full disk, say: the log has it
            log.exception("nor could that be recorded")
