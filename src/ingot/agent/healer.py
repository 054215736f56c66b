"""Finding drift and repairing it by replacement, inside the agent (which owns runtimes and routers)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ingot import ledger
from ingot.artifacts import ArtifactStore, diff_listings, listing_digest
from ingot.artifacts.fingerprint import DEFAULT_FULL_EVERY, TreeCache
from ingot.deploy_params import DeployParams
from ingot.drift import REPLACE, Finding, Observed, ServiceObservation, Stray, env_differences, find_drift
from ingot.errors import IngotError, UserInputError
from ingot.executor import Executor, release_environment
from ingot.health import probe
from ingot.httpclients import instance_client
from ingot.routers.base import Router
from ingot.runtimes.process import labelled_processes, process_cwd, process_environment, terminate_group
from ingot.runtimes.registry import Runtimes
from ingot.spec.durations import parse_duration
from ingot.store import ActivationRow, InstanceRow, ReleaseRow, Store
from ingot.store.repo import SPAWNING

# An instance recorded but not (yet) passed its health gate: its operation owns it while that runs.
UNFINISHED = (SPAWNING, "starting")

log = logging.getLogger("ingot.agent")
Key = tuple[str, str]
REHASH_ENV = "INGOT_REHASH_INTERVAL"


def env_duration(name: str, default: float, value: str | None = None, source: str | None = None) -> float:
    """`value`, else $`name`, else `default`, as seconds; bad text is the user's error, naming its source."""
    text = value if value is not None else os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserInputError(f"{source or name}: {exc}") from None


@dataclass
class RepairReport:
    findings: list[Finding]
    replaced: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped_strays: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"findings": [f.as_dict() for f in self.findings], "replaced": self.replaced,
                "started": self.started, "stopped_strays": self.stopped_strays, "failures": self.failures}


class Healer:
    def __init__(self, store: Store, runtimes: Runtimes, artifacts: ArtifactStore, executor: Executor,
                 routers: dict[Key, Router], lock: Callable[[Key], asyncio.Lock],
                 verifying: Callable[[Key], bool] = lambda _key: False, trees: TreeCache | None = None) -> None:
        self.store = store
        # Stored artifacts and checkouts, hashed in full only when their stat fingerprint changes or it is time.
        self.trees = trees if trees is not None else TreeCache(env_duration(REHASH_ENV, DEFAULT_FULL_EVERY))
        self.runtimes = runtimes
        self.artifacts = artifacts
        self.executor = executor
        self.routers = routers
        self.lock = lock
        self.verifying = verifying

    # ---- detection ---------------------------------------------------------------------
    async def detect(self, environment: str | None = None) -> list[Finding]:
        findings: list[Finding] = []
        for activation in self._active(environment):
            # While a rollout moves the service (it holds the lock), the new release's instances run on
            # purpose: only the live release's are judged against it.
            moving = self.lock((activation.environment, activation.service)).locked()
            findings.extend(find_drift(await self.observe(activation, only_live=moving)))
        findings.extend(await self._orphans(environment))
        return findings

    def _active(self, environment: str | None) -> list[ActivationRow]:
        # This machine's services only: another machine's drift is its agent's to see and repair.
        return [a for a in self.store.active_services(mine=True)
                if environment is None or a.environment == environment]

    async def observe(self, activation: ActivationRow, *, only_live: bool = False) -> ServiceObservation:
        key = (activation.environment, activation.service)
        release = self.store.get_release(activation.release_id or "")
        assert release is not None
        params = DeployParams.from_dict(activation.params)
        tracked = self.store.live_instances(*key, mine=True) + self.store.exited_instances(*key, mine=True)
        # In a verification window the previous release runs on purpose, idle, for a switch back.
        only_live = only_live or self.verifying(key)
        rows = [r for r in tracked if r.release_id == release.id] if only_live else tracked
        if only_live:
            # Another operation holds the service: instances not started yet are its own, in progress.
            rows = [r for r in rows if r.state not in UNFINISHED]
        observed = await asyncio.gather(*(self._observe_instance(row, release, params) for row in rows))
        store_problem = None
        if params.runtime == "process":
            try:
                await asyncio.to_thread(self.artifacts.verify, release.artifact_digest, self.trees.listing)
            except IngotError as exc:
                store_problem = "; ".join([exc.message, *exc.details])
        return ServiceObservation(
            environment=key[0], service=key[1], release=release.id, artifact=release.artifact_digest,
            runtime=params.runtime, replicas=params.replicas, instances=tuple(observed),
            strays=tuple(self._strays(key, params.runtime, {r.id for r in tracked})), store_problem=store_problem,
        )

    async def _observe_instance(self, row: InstanceRow, release: ReleaseRow, params: DeployParams) -> Observed:
        runtime = self.runtimes.of(row)
        if row.state in UNFINISHED:
            # Nothing is starting it now: an operation left it. Looked at only, not changed (no lock here).
            found = runtime.find(row, str(self.executor.paths.root)) if row.state == SPAWNING else row
            seen = runtime.observe(found) if found is not None else None
            detail = (f"left {row.state}; " + ("it runs" if seen and seen.alive else
                                               (seen.detail if seen else "nothing carries its labels")))
            return Observed(row.id, row.release_id, bool(seen and seen.alive), exit_detail=detail, leftover=True)
        seen = runtime.observe(row)
        if not seen.alive or row.state == "exited":
            return Observed(row.id, row.release_id, False, exit_detail=seen.detail,
                            log_tail=tuple(runtime.log_tail(row, 10)))
        facts = await asyncio.to_thread(self._facts, row, release)
        health = await self._health(row, params)
        if health is not None and not runtime.observe(row).alive:
            # It died while being looked at (a failed probe is often the first sign): say exited, not unhealthy.
            return await self._observe_instance(row, release, params)
        return Observed(row.id, row.release_id, True, health=health, **facts)

    def _facts(self, row: InstanceRow, release: ReleaseRow) -> dict[str, Any]:
        from ingot.config_store import mask_secrets, secret_refs, secret_values

        expected_env = {**release_environment(release), "INGOT_RELEASE": row.release_id, "INGOT_INSTANCE": row.id}
        try:
            expected_env.update(secret_values(self.store, self.executor.paths.keys, release, row.environment))
        except IngotError as exc:
            # Without the secrets key, secrets cannot be compared; everything else still is.
            log.warning("drift check of %s: its secrets are not compared: %s", row.id, exc.message)
        if row.runtime == "process":
            found = self._process_facts(row, release, expected_env)
        else:
            runtime: Any = self.runtimes.of(row)
            facts = runtime.facts(row)
            if facts is None:
                return {}
            found = {"actual_artifact": facts.image_id, "changed_files": tuple(runtime.changed_files(row)),
                     "env_diff": env_differences(expected_env, facts.env)}
        # Findings go to the ledger and to people: a secret that differs is named, its values never shown.
        found["env_diff"] = mask_secrets(found["env_diff"], set(secret_refs(release)))
        return found

    def _process_facts(self, row: InstanceRow, release: ReleaseRow, expected_env: dict[str, str]) -> dict[str, Any]:
        assert row.pid is not None
        facts: dict[str, Any] = {}
        env = process_environment(row.pid) or {}
        ports = {"PORT": str(row.port)} if row.port else {}  # a worker has none
        facts["env_diff"] = env_differences({**expected_env, **ports}, env)
        cwd = process_cwd(row.pid)
        if row.handle and cwd != row.handle:
            facts["actual_artifact"] = f"running from {cwd}, not from its checkout {row.handle}"
            return facts
        if row.handle:
            listing = self.trees.listing(Path(row.handle))
            if listing_digest(listing) != release.artifact_digest:
                expected = self.artifacts.read_listing(release.artifact_digest) or {}
                facts["changed_files"] = tuple(diff_listings(expected, listing))
        return facts

    async def _health(self, row: InstanceRow, params: DeployParams) -> str | None:
        """None if healthy; two failed probes in a row are needed to call an instance unhealthy."""
        policy = replace(params.health, timeout=min(params.health.timeout, 2.0))
        async with instance_client() as client:
            for attempt in range(2):
                result = await probe(client, row.host, row.port, policy, self.executor.check_context(row))
                if result.ok:
                    return None
                if attempt == 0:
                    await asyncio.sleep(0.2)
        return result.detail

    def _strays(self, key: Key, runtime: str, known: set[str]) -> list[Stray]:
        strays = []
        state = str(self.executor.paths.root)
        if runtime == "process":
            for pid, env in labelled_processes(state):
                if (env.get("INGOT_ENVIRONMENT"), env.get("INGOT_SERVICE")) != key:
                    continue
                if env.get("INGOT_INSTANCE") not in known and env.get("INGOT_INSTANCE") not in self._all_live():
                    strays.append(Stray(str(pid), env.get("INGOT_INSTANCE"), env.get("INGOT_RELEASE"),
                                        f"process {pid} carries ingot's labels but no live instance is recorded"))
            return strays
        docker: Any = self.runtimes.get(runtime)
        project = self.project()
        recorded = self.store.instance_states(*key)
        for facts in docker.labelled(project) if project else []:
            labels = facts.labels
            if labels.get("ingot.state", state) != state or labels.get("ingot.oneoff"):
                continue  # another ingot's, or a one-off instance (ingot run, a release_command): not drift
            if (labels.get("ingot.environment"), labels.get("ingot.service")) != key:
                continue
            instance = labels.get("ingot.instance")
            if not facts.running and instance in recorded and instance not in known:
                continue  # an instance ingot stopped, its exited container being removed: not drift
            if instance not in known:
                status = "running" if facts.running else f"exited ({facts.exit_code})"
                strays.append(Stray(facts.container_id[:12], labels.get("ingot.instance"),
                                    labels.get("ingot.release"), f"container {facts.name}: {status}"))
        return strays

    def _all_live(self) -> set[str]:
        return {r.id for r in self.store.live_instances()}

    def project(self) -> str | None:
        releases = self.store.all_releases()
        return releases[-1].project if releases else None

    async def _orphans(self, environment: str | None) -> list[Finding]:
        """Labelled processes of services that nothing serves any more (taken down, say)."""
        active = {(a.environment, a.service) for a in self.store.active_services()}
        live = self._all_live()
        findings = []
        for pid, env in labelled_processes(str(self.executor.paths.root)):
            key = (env.get("INGOT_ENVIRONMENT", ""), env.get("INGOT_SERVICE", ""))
            if key in active or env.get("INGOT_INSTANCE") in live:
                continue
            if environment and key[0] != environment:
                continue
            findings.append(Finding("unknown", key[0], key[1], env.get("INGOT_INSTANCE"), env.get("INGOT_RELEASE"),
                                    {"ident": str(pid), "detail": f"process {pid} of a service that is not deployed"}))
        return findings

    # ---- repair ------------------------------------------------------------------------
    async def reconcile(self, environment: str | None, actor: str,
                        send: Callable[[dict[str, Any]], Awaitable[None]]) -> RepairReport:
        report = RepairReport(findings=[])
        for activation in self._active(environment):
            key = (activation.environment, activation.service)
            async with self.lock(key):
                findings = find_drift(await self.observe(activation))
                report.findings.extend(findings)
                if findings:
                    self._record_findings(findings, actor)
                    await self._repair_service(activation, findings, report, send)
        orphans = await self._orphans(environment)
        report.findings.extend(orphans)
        for finding in orphans:
            await self._stop_stray(finding, report)
        if report.findings:
            ledger.record(self.store, actor=actor, action="drift.repair", environment=environment,
                          payload={"replaced": report.replaced, "started": report.started,
                                   "stopped_strays": report.stopped_strays, "failures": report.failures})
        return report

    def _record_findings(self, findings: list[Finding], actor: str) -> None:
        with self.store.begin() as conn:
            for finding in findings:
                ledger.append(conn, actor=actor, action="drift.found", environment=finding.environment,
                              service=finding.service, subject=finding.instance,
                              payload={"kind": finding.kind, "evidence": finding.evidence})

    async def _repair_service(self, activation: ActivationRow, findings: list[Finding], report: RepairReport,
                              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        key = (activation.environment, activation.service)
        params = DeployParams.from_dict(activation.params)
        release = self.store.get_release(activation.release_id or "")
        assert release is not None
        bad = {f.instance for f in findings if f.kind in REPLACE and f.instance}
        dead = {f.instance for f in findings if f.kind == "exited" and f.instance}
        # As many fresh instances as the live release lacks: a faulty instance of another release (one
        # that died before a deploy, say) is retired, not replaced by a surplus instance of this one.
        good = [r for r in self.store.live_instances(*key)
                if r.release_id == release.id and r.state == "running" and r.id not in bad]
        start = max(0, params.replicas - len(good))
        if any(f.kind == "artifact_corrupt" for f in findings) and params.runtime == "process":
            report.failures.append(f"{key[0]}/{key[1]}: the stored artifact {release.artifact_digest} is corrupt; "
                                   "nothing can be started from it: rebuild and deploy")
        elif bad or start:
            await send({"event": "repair", "service": key[1], "environment": key[0],
                        "replace": sorted(bad), "start": start})
            await self._replace(key, release, params, bad, start, report, dead=dead, good=len(good))
        for finding in findings:
            if finding.kind == "unknown":
                await self._stop_stray(finding, report)
            elif finding.kind == "leftover" and finding.instance:
                row = self.store.get_instance(finding.instance)
                if row is not None:
                    await self.executor.stop_instance(row, params.stop_timeout, state="failed")
                report.stopped_strays.append(finding.instance)

    async def _replace(self, key: Key, release: ReleaseRow, params: DeployParams, bad: set[str], count: int,
                       report: RepairReport, *, dead: set[str], good: int) -> None:
        fresh = await self.executor.start_instances(key[0], key[1], release, params, count)
        verdicts = await asyncio.gather(*(self.executor.gate(row, params) for row in fresh))
        healthy = [row for row, verdict in zip(fresh, verdicts, strict=True) if verdict.healthy]
        for row, verdict in zip(fresh, verdicts, strict=True):
            if not verdict.healthy:
                report.failures.append(f"replacement {row.id} did not become healthy: {verdict.reason}")
                await self.executor.stop_instance(row, params.stop_timeout, state="failed")
        for row in healthy:
            self.store.set_instance_state(row.id, "running")
        report.started.extend(r.id for r in healthy)
        retiring = self._retiring(key, release.id, params.replicas, bad, dead, len(healthy), good)
        serving = [r for r in self.store.live_instances(*key) if r.release_id == release.id and r.state == "running"]
        router = self.routers.get(key)
        if router is not None:
            # The replacements join the pool first; then only the retiring instances leave it. The release
            # itself keeps serving: `drain` would take all of it out of rotation.
            await router.set_backends(release.id, [(r.host, r.port) for r in serving])
            leaving = [(r.host, r.port) for r in serving if r.id in retiring]
            if leaving and not await router.drain_backends(release.id, leaving, params.drain_timeout):
                report.failures.append(f"requests were still in flight on {len(leaving)} retiring instance(s) "
                                       f"after drain_timeout ({params.drain_timeout:g} s); they were cut")
        for row in self.store.live_instances(*key) + self.store.exited_instances(*key):
            if row.id in retiring:
                # One that died is retired for good as failed, so that it is never repaired again.
                gone = row.id in dead or row.state == "exited"
                await self.executor.stop_instance(row, params.stop_timeout, state="failed" if gone else "replaced")
                report.replaced.append(row.id)

    def _retiring(self, key: Key, release_id: str, replicas: int, bad: set[str], dead: set[str], healthy: int,
                  good: int) -> list[str]:
        """The faulty instances to retire now; capacity never drops below what serves.

        Those of another release serve no traffic (outside a verification window, when they are not
        observed at all) and go. Of the live release's, a dead one goes at once, whether or not a healthy
        replacement took its place: it serves nothing, and kept, it would be found and "repaired" again
        at every pass (a missing replica is found as such). A live but faulty one goes only while the
        release keeps `replicas` serving without it.
        """
        rows = {r.id: r for r in self.store.live_instances(*key) + self.store.exited_instances(*key)}
        faulty = [rows[i] for i in sorted(bad) if i in rows]
        others = [r.id for r in faulty if r.release_id != release_id]
        own_dead = [r.id for r in faulty if r.release_id == release_id and (r.id in dead or r.state == "exited")]
        own_alive = [r.id for r in faulty if r.release_id == release_id and r.id not in own_dead]
        spare = max(0, good + healthy + len(own_alive) - replicas)
        return others + own_dead + own_alive[:spare]

    async def repair(self, activation: ActivationRow, findings: list[Finding],
                     send: Callable[[dict[str, Any]], Awaitable[None]]) -> RepairReport:
        """Repair one service's findings by replacement; the caller holds the service's lock."""
        report = RepairReport(findings=list(findings))
        await self._repair_service(activation, findings, report, send)
        return report

    async def _stop_stray(self, finding: Finding, report: RepairReport) -> None:
        ident = str(finding.evidence.get("ident", ""))
        if ident.isdigit():
            await asyncio.to_thread(terminate_group, int(ident), 10.0)
        else:
            docker: Any = self.runtimes.get("docker")
            await asyncio.to_thread(docker.remove_container, ident, 10.0)
        report.stopped_strays.append(ident)
