"""Continuous self-healing: the agent finds drift on an interval and repairs it by replacement, unasked.

Each pass observes every live service the way `ingot drift` does. New findings go to the ledger. In an
environment with `self_heal: true` (the default) they are then repaired the way `ingot reconcile`
repairs them: a fresh instance of the same release first, the faulty one retired after. With
`self_heal: false` they are only recorded. A pass re-hashes a stored artifact or checkout only when its
stat fingerprint moved or its full re-hash is due (`ingot.artifacts.fingerprint`): its cost follows the
number of files, not their size.

Self-heal never fights an operator: a service is left alone while something holds its lock (a deploy,
rollback, reconcile or down in the agent; it does not queue behind them), while a deploy, rollback
or promote holds its environment's lock (it is building, and will replace what runs anyway), and
while a verification window is open (the previous release runs on purpose, kept warm).

A release whose instances crash on start, or keep dying shortly after starting, is not restarted in
a hot loop: each failed replacement doubles the wait before the next one (1 s, 2 s, 4 s … up to
5 min). The backoff is recorded and shown by `ingot status`. It ends once replacements have stayed
healthy for `STABLE_AFTER`, or when a new deployment (or new deployment parameters) comes.

A live release that self-heal cannot keep up is left for the last release that was stable. The
trigger: `FALLBACK_AFTER` (3) failed replacements in a row, with no `STABLE_AFTER` of health between
them (which would have reset the count), while the service still has findings. That is a crash loop,
not bad luck: about 1 + 2 s of backoff plus three lives of the release. The release gone back to is
the newest one, other than the live release, whose deployment in this environment succeeded (so it
stayed up through its min_ready), whose artifact is still in the store, and that self-heal has not
already left for crash-looping (so two bad releases cannot ping-pong). Going back is a normal
rollback through the health gate, by `ingot-agent/self-heal`: it is in the ledger (`self_heal.fallback`,
with the reason, before it starts; then the rollback's own entries), in `ingot history`, in the
agent's log and in `ingot status`. It is tried once per deployment: when there is nothing to go back
to, or the rollback fails, that is recorded and shown too, and the backoff goes on as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingot import ledger, locks
from ingot.agent.healer import Healer, RepairReport, env_duration
from ingot.build_release import artifact_available
from ingot.deploy_params import DeployParams
from ingot.drift import Finding, find_drift
from ingot.errors import IngotError
from ingot.store import ActivationRow, ReleaseRow, Store

Key = tuple[str, str]
log = logging.getLogger("ingot.agent")

ACTOR = "ingot-agent/self-heal"
INTERVAL_ENV = "INGOT_HEAL_INTERVAL"
DEFAULT_INTERVAL = 5.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
# A replacement that runs this long without a finding proves the release sound: the backoff ends.
STABLE_AFTER = 30.0
# Failed replacements in a row after which the live release is crash-looping: back to the last stable one.
FALLBACK_AFTER = 3
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Deploy(Protocol):
    """The agent's deploy (a rollback here): takes the service's lock, plans, applies, records."""

    async def __call__(self, key: Key, release_id: str, params: DeployParams, *, kind: str, send: Send,
                      actor: str | None = None, dry_run: bool = False) -> dict[str, Any]: ...


def heal_interval(value: str | None = None, source: str = INTERVAL_ENV) -> float:
    """The interval between passes: `value`, else $INGOT_HEAL_INTERVAL, else 5 s. 0 turns self-healing off."""
    return env_duration(INTERVAL_ENV, DEFAULT_INTERVAL, value, source)


@dataclass
class Backoff:
    """Consecutive failed replacements of one service, and when the next attempt may come.

    Pure bookkeeping over a clock given by the caller (monotonic seconds), so that it is testable alone.
    A replacement fails when it does not pass its health gate, or when it is found faulty (dead,
    unhealthy, ...) within `stable_after` seconds of the repair that started it.
    """

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    stable_after: float = STABLE_AFTER
    failures: int = 0
    next_try: float = 0.0
    last_failure: str | None = None
    probation: dict[str, float] = field(default_factory=dict)  # replacement id -> when it was started

    def delay(self) -> float:
        return 0.0 if self.failures == 0 else min(self.base * 2 ** (self.failures - 1), self.cap)

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def fail(self, now: float, reason: str) -> float:
        """Count a failed replacement; return the wait before the next attempt."""
        self.failures += 1
        self.last_failure = reason
        self.probation.clear()
        self.next_try = now + self.delay()
        return self.delay()

    def repaired(self, now: float, started: list[str]) -> None:
        """Healthy replacements are on probation until they have run `stable_after` without a finding."""
        self.probation = dict.fromkeys(started, now)

    def check(self, now: float, faulty: dict[str, str]) -> tuple[str, str] | None:
        """Judge the replacements on probation against the instances found faulty now (id -> finding kind).

        Returns ("failed", why) when one of them is faulty, ("stable", "") when they all stayed healthy
        long enough and a backoff was running (it is reset), else None.
        """
        for instance, since in self.probation.items():
            if instance in faulty:
                return "failed", (f"replacement {instance}: {faulty[instance]} {now - since:.1f}s after passing "
                                  "its health gate")
        if self.probation and all(now - since >= self.stable_after for since in self.probation.values()):
            self.probation.clear()
            if self.failures:
                self.failures, self.next_try, self.last_failure = 0, 0.0, None
                return "stable", ""
        return None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"failed_replacements": self.failures, "next_try_in": round(max(0.0, self.next_try - now), 1),
                "last_failure": self.last_failure}


@dataclass
class ServiceHealth:
    """What self-heal knows of one service: tied to the deployment that made its live state."""

    deployment: str | None
    backoff: Backoff = field(default_factory=Backoff)
    recorded: set[tuple[str, str | None]] = field(default_factory=set)  # findings already in the ledger
    findings: list[Finding] = field(default_factory=list)  # as of the last pass
    paused: str | None = None  # why the last pass left it alone
    passes: int = 0
    repairs: int = 0
    last_repair: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None  # the one fallback tried for this deployment, and how it went


class SelfHealer:
    def __init__(self, store: Store, healer: Healer, lock: Callable[[Key], asyncio.Lock],
                 verifying: Callable[[Key], bool], interval: float,
                 clock: Callable[[], float] = time.monotonic, deploy: Deploy | None = None) -> None:
        self.store = store
        self.healer = healer
        self.lock = lock
        self.verifying = verifying
        self.interval = interval
        self.clock = clock
        self.deploy = deploy  # None: no fallback to an earlier release, only repairs
        self.services: dict[Key, ServiceHealth] = {}
        self.fell_back: dict[Key, dict[str, Any]] = {}  # the last fallback that went through, per service

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    async def run(self) -> None:
        if not self.enabled:
            log.info("self-heal is off (heal interval 0)")
            return
        log.info("self-heal: a pass every %gs", self.interval)
        while True:
            await asyncio.sleep(self._until_next())
            await self.heal_once()

    def _until_next(self) -> float:
        """The interval, or less when a backoff ends sooner: the next attempt comes when it is due."""
        now = self.clock()
        due = [s.backoff.next_try - now for s in self.services.values()
               if s.backoff.failures and s.findings and s.backoff.next_try > now]
        return max(0.05, min([self.interval, *due]))

    # ---- one pass ----------------------------------------------------------------------
    async def heal_once(self) -> None:
        active = self.store.active_services(mine=True)  # another machine's are its agent's to heal
        keys = {(a.environment, a.service) for a in active}
        for gone in set(self.services) - keys:
            del self.services[gone]
        for activation in active:
            try:
                await self._heal_service(activation)
            except IngotError as exc:  # one service that cannot be observed must not stop the others' healing
                log.warning("self-heal of %s/%s: %s", activation.environment, activation.service, exc.message)
            except Exception:
                log.exception("self-heal of %s/%s failed", activation.environment, activation.service)

    def _state(self, key: Key, activation: ActivationRow) -> ServiceHealth:
        state = self.services.get(key)
        if state is None or state.deployment != activation.deployment_id:
            if state is not None and state.backoff.failures:
                ledger.record(self.store, actor=ACTOR, action="self_heal.backoff.end", environment=key[0],
                              service=key[1], subject=activation.release_id,
                              payload={"reason": f"new deployment {activation.deployment_id}",
                                       "failed_replacements": state.backoff.failures})
            state = self.services[key] = ServiceHealth(activation.deployment_id)
        return state

    def _pause_reason(self, key: Key) -> str | None:
        if self.lock(key).locked():
            return "another operation on the service is running"
        if self.verifying(key):
            return "a verification window is open"
        holder = locks.current(self.store, key[0])
        if holder is not None and holder.alive:
            return f"{key[0]} is locked by {holder.describe()}"
        return None

    async def _heal_service(self, activation: ActivationRow) -> None:
        key = (activation.environment, activation.service)
        state = self._state(key, activation)
        state.passes += 1
        state.paused = self._pause_reason(key)
        if state.paused:
            return
        findings = find_drift(await self.healer.observe(activation))
        if self._pause_reason(key) or not self._unchanged(key, activation):
            return  # someone took the service over meanwhile: what was seen may be theirs
        state.findings = findings
        params = DeployParams.from_dict(activation.params)
        now = self.clock()
        self._record_new(key, state, findings, params.self_heal)
        verdict = state.backoff.check(now, {f.instance: f.kind for f in findings if f.instance})
        if verdict is not None and verdict[0] == "failed":
            self._backing_off(key, activation, state, now, verdict[1])
        elif verdict is not None:
            ledger.record(self.store, actor=ACTOR, action="self_heal.backoff.end", environment=key[0],
                          service=key[1], subject=activation.release_id,
                          payload={"reason": f"replacements stayed healthy for {state.backoff.stable_after:g}s"})
        if (findings and params.self_heal and state.backoff.failures >= FALLBACK_AFTER and state.fallback is None
                and self.deploy is not None):
            await self._fall_back(key, activation, state, params)
            return
        if not findings or not params.self_heal or not state.backoff.ready(now):
            return
        lock = self.lock(key)
        if lock.locked():
            return
        async with lock:
            if self.verifying(key) or not self._unchanged(key, activation):
                return
            # Seen again under the lock, as `ingot reconcile` does: what is repaired is what is there now.
            findings = find_drift(await self.healer.observe(activation))
            if not findings:
                state.findings = []
                return
            await self._repair(key, activation, state, findings)

    def _unchanged(self, key: Key, activation: ActivationRow) -> bool:
        current = self.store.current_activation(*key)
        return current == activation

    async def _repair(self, key: Key, activation: ActivationRow, state: ServiceHealth,
                      findings: list[Finding]) -> None:
        started = self.clock()
        state.repairs += 1
        log.info("self-heal %s/%s: repairing %s", key[0], key[1], ", ".join(f.describe() for f in findings))
        try:
            report = await self.healer.repair(activation, findings, _discard)
        except IngotError as exc:
            report = RepairReport(findings=findings, failures=["; ".join([exc.message, *exc.details])])
        except Exception as exc:  # an engine error, say: a failed attempt like any other, backed off
            log.exception("self-heal %s/%s: the repair failed", key[0], key[1])
            report = RepairReport(findings=findings, failures=[f"{type(exc).__name__}: {exc}"])
        now = self.clock()
        state.last_repair = {"at": time.time(), "attempt": state.repairs, "started": report.started,
                             "replaced": report.replaced, "failures": report.failures,
                             "seconds": round(now - started, 3)}
        ledger.record(self.store, actor=ACTOR, action="drift.repair", environment=key[0], service=key[1],
                      subject=activation.release_id,
                      payload={"self_heal": True, "attempt": state.repairs,
                               "findings": [f.as_dict() for f in findings], "replaced": report.replaced,
                               "started": report.started, "stopped_strays": report.stopped_strays,
                               "failures": report.failures, "seconds": round(now - started, 3)})
        if report.failures:
            self._backing_off(key, activation, state, now, report.failures[0])
        else:
            state.findings = []
            state.recorded.clear()
            if report.started:
                state.backoff.repaired(now, report.started)

    def _backing_off(self, key: Key, activation: ActivationRow, state: ServiceHealth, now: float,
                     reason: str) -> None:
        delay = state.backoff.fail(now, reason)
        log.warning("self-heal %s/%s: %d failed replacement(s); next try in %gs: %s", key[0], key[1],
                    state.backoff.failures, delay, reason)
        ledger.record(self.store, actor=ACTOR, action="self_heal.backoff", environment=key[0], service=key[1],
                      subject=activation.release_id,
                      payload={"failed_replacements": state.backoff.failures, "next_try_in": delay,
                               "reason": reason})

    # ---- falling back to the last stable release ---------------------------------------
    async def _fall_back(self, key: Key, activation: ActivationRow, state: ServiceHealth,
                         params: DeployParams) -> None:
        """The live release crash-loops: a rollback, through the health gate, to the last stable release."""
        assert self.deploy is not None
        live = activation.release_id or ""
        reason = (f"{live} crash-loops: {state.backoff.failures} failed replacements in a row "
                  f"(last: {state.backoff.last_failure})")
        target = self.last_stable(key, live)
        note: dict[str, Any] = {"from": live, "reason": reason, "at": time.time()}
        if target is None:
            state.fallback = {**note, "to": None, "outcome": "none"}
            log.warning("self-heal %s/%s: %s; no earlier stable release to go back to", key[0], key[1], reason)
            ledger.record(self.store, actor=ACTOR, action="self_heal.fallback.none", environment=key[0],
                          service=key[1], subject=live,
                          payload={"reason": reason, "note": "no other release of this service succeeded a deploy "
                                   "here and is still in the store; the backoff goes on"})
            return
        note["to"] = target.id
        log.warning("self-heal %s/%s: %s; rolling back to %s, the last release that was stable", key[0], key[1],
                    reason, target.id)
        ledger.record(self.store, actor=ACTOR, action="self_heal.fallback", environment=key[0], service=key[1],
                      subject=target.id, payload={"from": live, "to": target.id, "reason": reason,
                                                  "failed_replacements": state.backoff.failures})
        state.fallback = {**note, "outcome": "rolling back"}
        try:
            result = await self.deploy(key, target.id, params, kind="rollback", send=_discard, actor=ACTOR)
        except IngotError as exc:
            state.fallback = {**note, "outcome": "failed", "error": exc.message}
            log.warning("self-heal %s/%s: the rollback to %s failed: %s", key[0], key[1], target.id, exc.message)
            ledger.record(self.store, actor=ACTOR, action="self_heal.fallback.fail", environment=key[0],
                          service=key[1], subject=target.id,
                          payload={"from": live, "to": target.id, "error": exc.message, "details": exc.details})
            return
        self.fell_back[key] = {**note, "outcome": "rolled back", "deployment": result.get("deployment")}

    def last_stable(self, key: Key, live: str) -> ReleaseRow | None:
        """The newest release other than `live` whose deployment succeeded here, still in the store, and
        not one self-heal already left for crash-looping."""
        left = {e.payload.get("from") for e in ledger.entries(self.store, environment=key[0], service=key[1],
                                                               actions=["self_heal.fallback"])}
        for deployment in self.store.deployments(key[0], key[1], limit=500):
            candidate = deployment.to_release
            if candidate == live or candidate in left:
                continue
            if self.store.deployment_outcome(deployment.id) != "succeeded":
                continue
            release = self.store.get_release(candidate)
            try:
                present = release is not None and artifact_available(self.healer.artifacts, release,
                                                                     self.healer.runtimes)
            except IngotError:
                present = False  # an engine that cannot be asked: try an older one rather than fail
            if present:
                return release
            left.add(candidate)
        return None

    def _record_new(self, key: Key, state: ServiceHealth, findings: list[Finding], repairing: bool) -> None:
        """Each finding goes to the ledger once, when first seen, with its evidence."""
        seen = {(f.kind, f.instance) for f in findings}
        state.recorded &= seen
        new = [f for f in findings if (f.kind, f.instance) not in state.recorded]
        if not new:
            return
        with self.store.begin() as conn:
            for finding in new:
                payload: dict[str, Any] = {"kind": finding.kind, "evidence": finding.evidence, "self_heal": repairing}
                if not repairing:
                    payload["note"] = ("self_heal is off in this environment: recorded, not repaired "
                                       "(ingot reconcile repairs it)")
                ledger.append(conn, actor=ACTOR, action="drift.found", environment=finding.environment,
                              service=finding.service, subject=finding.instance, payload=payload)
        state.recorded |= {(f.kind, f.instance) for f in new}

    # ---- reporting ---------------------------------------------------------------------
    def describe(self, activation: ActivationRow) -> dict[str, Any]:
        """Self-heal's view of one service, for `ingot status`."""
        key = (activation.environment, activation.service)
        state = self.services.get(key)
        if state is None or state.deployment != activation.deployment_id:
            state = ServiceHealth(activation.deployment_id)  # a new deployment: nothing known of it yet
        backoff = state.backoff
        fell_back = self.fell_back.get(key)
        if fell_back is not None and fell_back["deployment"] != activation.deployment_id:
            fell_back = None  # another deployment came since
        return {
            "enabled": self.enabled and DeployParams.from_dict(activation.params).self_heal,
            "interval": self.interval,
            "passes": state.passes,
            "paused": state.paused,
            "findings": [f.describe() for f in state.findings],
            "repairs": state.repairs,
            "last_repair": state.last_repair,
            "backoff": backoff.as_dict(self.clock()) if backoff.failures else None,
            "fallback": fell_back or state.fallback,
        }


async def _discard(_message: dict[str, Any]) -> None:
    return None
