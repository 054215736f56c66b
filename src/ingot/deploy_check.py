"""Whether `ingot deploy` would change nothing, found out without changing anything (the thin client's
no-change deploy: ingot.cli.fast asks the agent, ingot.agent.cli_answers answers).

It walks the steps of `operations.deploy` up to the agent's plan, for each service in turn, and stops at
the first that could act or differ: a Kubernetes target, a runtime other than `process`, a pre_deploy hook
(it runs on every deploy), a pin or signing key still to be written, the environment's lock held, a build
context whose input key has no stored artifact that verifies, a config snapshot (values, secret versions,
the config source's) or spec fields that make another release id, or a release not yet in the store. The
agent then says whether that release is live with the same deployment parameters, healthy, with nothing
for a deploy to do (`AgentServer.deploy_unchanged`).

What it saves is the hashing: a context is listed through a `TreeCache` (re-hashed when its stat
fingerprint moved, or when it changed too recently to trust that), the stored artifact verified through
the agent's own. Anything it cannot vouch for is answered "changed", and the full CLI deploys as always.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingot import build_release, config_ops, locks, operations
from ingot.artifacts import ArtifactCorrupt, ArtifactNotFound
from ingot.artifacts.build import context_input_key
from ingot.artifacts.fingerprint import DEFAULT_FULL_EVERY, TreeCache
from ingot.canonical import content_digest
from ingot.deploy_params import DeployParams
from ingot.project import Project
from ingot.releases import release_id
from ingot.signing import load_key
from ingot.store import ReleaseRow

# A context changed less than this long before its fingerprint was taken is hashed again on the next call.
CONTEXT_SETTLE = 2.0
# (environment, service), release id, deployment parameters -> the agent's verdict: nothing to do.
AgentVerdict = Callable[[tuple[str, str], str, DeployParams], bool]


@dataclass(frozen=True)
class Unchanged:
    """One service a deploy would leave as it is: what the full path would record and print for it."""

    service: str
    built: build_release.Built
    context: Path
    release: ReleaseRow
    params: DeployParams


class Changed(Exception):
    """Something a deploy would act on, or that this cannot vouch for (the reason)."""


class DeployCheck:
    """Answers "would this deploy change nothing?" for one agent; keeps its context listings between calls."""

    def __init__(self, artifact_trees: TreeCache, contexts: TreeCache | None = None) -> None:
        self.artifact_trees = artifact_trees
        self.contexts = contexts if contexts is not None else TreeCache(DEFAULT_FULL_EVERY, settle=CONTEXT_SETTLE)

    def unchanged(self, project: Project, environment: str, names: list[str],
                  agent_verdict: AgentVerdict) -> list[Unchanged]:
        """Per service of `names` (in order), what stays; raises `Changed` if a deploy would do anything."""
        if operations.on_cluster(project, environment):
            raise Changed("a Kubernetes target")
        if locks.current(project.store, environment) is not None:
            raise Changed(f"the lock of {environment} is held")
        self._signing_ready(project)
        found = [self._service(project, environment, name) for name in names]
        for item in found:
            if not agent_verdict((environment, item.service), item.release.id, item.params):
                raise Changed(f"{item.service}: the agent has something to do")
        return found

    def _signing_ready(self, project: Project) -> None:
        """The pin checked as the deploy checks it, without the deploy's writing a missing key or pin."""
        if load_key(project.paths.keys) is None:
            raise Changed("no signing key yet")
        if project.paths.pin is not None:
            if not project.paths.pin.exists():
                raise Changed("no pin yet")
            build_release.check_pin(project)  # a mismatch: refused, as the deploy would (the full CLI says it)

    def _service(self, project: Project, environment: str, name: str) -> Unchanged:
        service = project.spec.service_for(environment, name)
        operations.check_supported(project, environment, name, service)
        if service.runtime != "process":
            raise Changed(f"{name}: runtime {service.runtime}")
        if service.hooks.pre_deploy:
            raise Changed(f"{name}: a pre_deploy hook")
        config, _sourced = config_ops.release_config_read(project, environment, name, service, record_failure=False)
        context = build_release.context_dir(project, service, environment, name)
        if not context.is_dir():
            raise Changed(f"{name}: no build context")
        key = context_input_key(context, sys.executable, build_release.spec_exclusion(project, context),
                                build_release.build_steps(service), self.contexts.listing)
        digest = project.artifacts.lookup_input(key)
        if digest is None or not project.artifacts.has(digest):
            raise Changed(f"{name}: the context was not built")
        try:
            project.artifacts.verify(digest, lister=self.artifact_trees.listing)
        except (ArtifactCorrupt, ArtifactNotFound) as exc:
            raise Changed(f"{name}: the stored artifact: {exc.message}") from exc
        wanted = release_id(project.spec.project, name, digest, content_digest(config),
                            content_digest(service.release_fields()))
        release = project.store.get_release(wanted)
        if release is None:
            raise Changed(f"{name}: release {wanted} is not made yet")
        env_spec = project.spec.environments.get(environment)
        params = operations.deploy_params(service, self_heal=not env_spec or env_spec.self_heal,
                                          root=project.spec.root_dir)
        built = build_release.Built(digest, True, key, str(project.artifacts.path_for(digest)))
        return Unchanged(name, built, context, release, params)


def record(project: Project, environment: str, found: list[Unchanged]) -> None:
    """What the full deploy records when nothing changed: each reused build, in the ledger."""
    for item in found:
        build_release.record_build(project, environment, item.service,
                                   project.spec.service_for(environment, item.service), item.context, item.built)


__all__ = ["AgentVerdict", "Changed", "DeployCheck", "Unchanged", "record"]
