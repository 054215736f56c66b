"""The state store's operations. Every caller goes through here; nobody writes SQL elsewhere."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, or_, select, true, union_all

from ingot.machine import MACHINE_ENV, machine_name
from ingot.paths import StatePaths
from ingot.signing import register_store
from ingot.store import schema as t
from ingot.store.db import database_url, open_engine, shown, transaction

# An instance whose row is written before it is spawned: intent first, so that whatever ingot starts is
# recorded even if the agent dies the next moment. Its pid, port and handle are filled in once it runs;
# until then `down`, recovery and drift find it by its labels (see `Runtime.find`).
SPAWNING = "spawning"
LIVE_STATES = (SPAWNING, "starting", "running")


@dataclass(frozen=True)
class ReleaseRow:
    id: str
    project: str
    service: str
    artifact_digest: str
    config_digest: str
    spec_digest: str
    spec: dict[str, Any]
    config: dict[str, Any]
    commit: str | None
    created_at: float
    created_by: str
    public_key: str
    signature: str


@dataclass(frozen=True)
class DeploymentRow:
    id: str
    environment: str
    service: str
    kind: str
    from_release: str | None
    to_release: str
    strategy: str
    params: dict[str, Any]
    actor: str
    started_at: float
    machine: str | None = None  # None: recorded before the store knew machines (see ingot.machine)


@dataclass(frozen=True)
class HistoryRow:
    """A deployment as `ingot history` lists it."""
    deployment: DeploymentRow
    commit: str | None
    artifact: str | None
    outcome: str
    live: bool


@dataclass(frozen=True)
class StepRow:
    deployment_id: str
    seq: int
    name: str
    status: str
    detail: dict[str, Any]
    at: float


@dataclass(frozen=True)
class ActivationRow:
    environment: str
    service: str
    release_id: str | None
    deployment_id: str | None
    params: dict[str, Any]
    at: float
    machine: str | None = None  # None: recorded before the store knew machines (see ingot.machine)


@dataclass(frozen=True)
class InstanceRow:
    id: str
    environment: str
    service: str
    release_id: str
    runtime: str
    pid: int | None
    proc_start: str | None
    host: str
    port: int
    log_path: str
    started_at: float
    stopped_at: float | None
    state: str
    handle: str | None = None
    machine: str | None = None  # where it runs; None: before the store knew machines (see ingot.machine)


def _release(row: Any) -> ReleaseRow:
    return ReleaseRow(
        id=row.id,
        project=row.project,
        service=row.service,
        artifact_digest=row.artifact_digest,
        config_digest=row.config_digest,
        spec_digest=row.spec_digest,
        spec=json.loads(row.spec_json),
        config=json.loads(row.config_json),
        commit=row.commit,
        created_at=row.created_at,
        created_by=row.created_by,
        public_key=row.public_key,
        signature=row.signature,
    )


def _deployment(row: Any) -> DeploymentRow:
    return DeploymentRow(
        id=row.id,
        environment=row.environment,
        service=row.service,
        kind=row.kind,
        from_release=row.from_release,
        to_release=row.to_release,
        strategy=row.strategy,
        params=json.loads(row.params_json),
        actor=row.actor,
        started_at=row.started_at,
        machine=row.machine,
    )


def _activation(row: Any) -> ActivationRow:
    return ActivationRow(
        row.environment, row.service, row.release_id, row.deployment_id, json.loads(row.params_json), row.at,
        row.machine,
    )


def _instance(row: Any) -> InstanceRow:
    return InstanceRow(**{c: getattr(row, c) for c in InstanceRow.__dataclass_fields__})


class Store:
    """ingot's durable state: one SQLite database in the state directory, or the PostgreSQL database that
    $INGOT_DATABASE_URL (or `url`) names. The state directory holds the rest either way (keys, artifacts,
    logs, the agent's socket)."""

    def __init__(self, state_dir: Path, url: str | None = None, *, local: bool = False) -> None:
        """`local`: the state directory's SQLite store, whatever $INGOT_DATABASE_URL says."""
        self.state_dir = state_dir
        self.url = None if local else (url or database_url())
        self.engine: Engine = open_engine(state_dir, self.url)
        # This machine, as its rows record it; `mine=True` reads keep to its rows (see ingot.machine). A SQLite
        # file is one machine's: its rows name none unless $INGOT_MACHINE says, so that a renamed host (a
        # laptop's name changing with its network, a cloned VM) is still the machine that runs its services.
        self.machine = machine_name() if self.dialect != "sqlite" or os.environ.get(MACHINE_ENV) else None
        # Its ledger entries are signed with the state's signing key (or $INGOT_SIGNING_KEY's).
        register_store(self.engine, StatePaths(state_dir).keys)

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return str(self.engine.dialect.name)

    @property
    def where(self) -> str:
        """The database as it may be printed: its file, or its URL with the password masked."""
        return shown(self.url) if self.url else str(self.state_dir / "state.db")

    def close(self) -> None:
        self.engine.dispose()

    def on_this_machine(self, machine: str | None) -> bool:
        """Whether a row naming `machine` is this machine's: its own name, or none (recorded before the store
        knew machines, when it was its own). `mine=True` reads select the same rows."""
        return self.machine is None or machine in (None, self.machine)

    def _mine(self, column: Any) -> ColumnElement[bool]:
        """`on_this_machine` as a condition on `column`."""
        return true() if self.machine is None else or_(column == self.machine, column.is_(None))

    def elsewhere(self, environment: str) -> set[str]:
        """The other machines `environment` runs on (none when this store names no machine)."""
        return set() if self.machine is None else self.machines_of(environment) - {self.machine}

    def machines_of(self, environment: str) -> set[str]:
        """The machines the environment runs on now: those of its live instances and of its services'
        current activations (a service may have no instance live). Empty if it runs nowhere or only in rows
        that name no machine."""
        with self.engine.connect() as conn:
            found = set(conn.execute(select(t.instances.c.machine).distinct().where(
                t.instances.c.environment == environment, t.instances.c.state.in_(LIVE_STATES),
                t.instances.c.machine.is_not(None))).scalars())
        found |= {a.machine for a in self.active_services() if a.environment == environment and a.machine}
        return {str(m) for m in found}

    def missing_triggers(self) -> list[str]:
        """The insert-only triggers (see `schema.insert_only_triggers`) the database does not have (or has
        disabled, on PostgreSQL)."""
        query = ("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'"
                 if self.dialect == "postgresql" else "SELECT name FROM sqlite_master WHERE type = 'trigger'")
        with self.engine.connect() as conn:
            present = {str(r[0]) for r in conn.exec_driver_sql(query)}
        return [name for name in t.insert_only_triggers(self.dialect) if name not in present]

    def integrity_problems(self, limit: int = 20, *, quick: bool = False) -> list[str]:
        """SQLite's own check of every page and index (`PRAGMA integrity_check`); empty when sound.

        `quick` skips checking that indexes match their tables (`quick_check`): several times faster.
        A PostgreSQL server checks its own pages (data checksums, amcheck: its administrator's tools): empty.
        """
        if self.dialect == "postgresql":
            return []
        pragma = "quick_check" if quick else "integrity_check"
        with self.engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA {pragma}({int(limit)})")]
        return [] if rows == ["ok"] else rows

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with transaction(self.engine) as conn:
            yield conn

    # releases -----------------------------------------------------------------------------
    def insert_release(self, conn: Connection, release: ReleaseRow) -> None:
        conn.execute(
            t.releases.insert().values(
                id=release.id,
                project=release.project,
                service=release.service,
                artifact_digest=release.artifact_digest,
                config_digest=release.config_digest,
                spec_digest=release.spec_digest,
                spec_json=json.dumps(release.spec, sort_keys=True),
                config_json=json.dumps(release.config, sort_keys=True),
                commit=release.commit,
                created_at=release.created_at,
                created_by=release.created_by,
                public_key=release.public_key,
                signature=release.signature,
            )
        )

    def get_release(self, release_id: str) -> ReleaseRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.releases).where(t.releases.c.id == release_id)).first()
        return _release(row) if row else None

    def find_releases(self, prefix: str, service: str | None = None) -> list[ReleaseRow]:
        query = select(t.releases).where(t.releases.c.id.startswith(prefix))
        if service:
            query = query.where(t.releases.c.service == service)
        with self.engine.connect() as conn:
            return [_release(r) for r in conn.execute(query)]

    def all_releases(self) -> list[ReleaseRow]:
        with self.engine.connect() as conn:
            return [_release(r) for r in conn.execute(select(t.releases).order_by(t.releases.c.created_at))]

    # artifacts ----------------------------------------------------------------------------
    def record_artifact(self, digest: str, service: str, input_key: str) -> None:
        with self.begin() as conn:
            exists = conn.execute(select(t.artifacts.c.digest).where(t.artifacts.c.digest == digest)).first()
            if not exists:
                conn.execute(
                    t.artifacts.insert().values(
                        digest=digest, service=service, input_key=input_key, created_at=time.time()
                    )
                )

    def artifact_for_input(self, service: str, input_key: str) -> str | None:
        with self.engine.connect() as conn:
            query = (select(t.artifacts.c.digest)
                     .where(and_(t.artifacts.c.service == service, t.artifacts.c.input_key == input_key))
                     .order_by(t.artifacts.c.created_at.desc()).limit(1))
            found = conn.execute(query).scalar()
        return str(found) if found else None

    def artifact_digests(self, service: str) -> list[str]:
        with self.engine.connect() as conn:
            query = select(t.artifacts.c.digest).where(t.artifacts.c.service == service)
            return [str(d) for d in conn.execute(query).scalars()]

    # deployments --------------------------------------------------------------------------
    def create_deployment(
        self,
        conn: Connection,
        *,
        environment: str,
        service: str,
        kind: str,
        from_release: str | None,
        to_release: str,
        strategy: str,
        params: dict[str, Any],
        actor: str,
    ) -> DeploymentRow:
        row = DeploymentRow(
            id=uuid.uuid4().hex[:12],
            environment=environment,
            service=service,
            kind=kind,
            from_release=from_release,
            to_release=to_release,
            strategy=strategy,
            params=params,
            actor=actor,
            started_at=time.time(),
            machine=self.machine,
        )
        conn.execute(
            t.deployments.insert().values(
                id=row.id,
                environment=environment,
                service=service,
                kind=kind,
                from_release=from_release,
                to_release=to_release,
                strategy=strategy,
                params_json=json.dumps(params, sort_keys=True),
                actor=actor,
                started_at=row.started_at,
                machine=self.machine,
            )
        )
        return row

    def add_step(
        self, conn: Connection, deployment_id: str, name: str, status: str, detail: dict[str, Any]
    ) -> StepRow:
        seq = conn.execute(
            select(func.coalesce(func.max(t.deployment_steps.c.seq), 0)).where(
                t.deployment_steps.c.deployment_id == deployment_id
            )
        ).scalar_one()
        step = StepRow(deployment_id, int(seq) + 1, name, status, detail, time.time())
        conn.execute(
            t.deployment_steps.insert().values(
                deployment_id=deployment_id,
                seq=step.seq,
                name=name,
                status=status,
                detail_json=json.dumps(detail, sort_keys=True),
                at=step.at,
            )
        )
        return step

    def steps(self, deployment_id: str) -> list[StepRow]:
        query = (
            select(t.deployment_steps)
            .where(t.deployment_steps.c.deployment_id == deployment_id)
            .order_by(t.deployment_steps.c.seq)
        )
        with self.engine.connect() as conn:
            return [
                StepRow(r.deployment_id, r.seq, r.name, r.status, json.loads(r.detail_json), r.at)
                for r in conn.execute(query)
            ]

    def deployments(
        self, environment: str | None = None, service: str | None = None, limit: int = 100, *, mine: bool = False
    ) -> list[DeploymentRow]:
        """The newest `limit` deployments; `mine`: of this machine only (and those that name no machine)."""
        query = select(t.deployments).order_by(t.deployments.c.started_at.desc()).limit(limit)
        if mine:
            query = query.where(self._mine(t.deployments.c.machine))
        if environment:
            query = query.where(t.deployments.c.environment == environment)
        if service:
            query = query.where(t.deployments.c.service == service)
        with self.engine.connect() as conn:
            return [_deployment(r) for r in conn.execute(query)]

    def deployment_history(self, environment: str | None = None, service: str | None = None,
                           limit: int = 100) -> list[HistoryRow]:
        """The newest `limit` deployments (as `deployments`) with what `ingot history` shows of each: its
        release's commit and artifact, its outcome (as `deployment_outcome`), whether it is the live one.

        Four queries on one connection, whatever `limit`: the deployments (an index walked from its end),
        their releases and their `finish` steps (key lookups of the ids found), and the newest activation
        of each service among them (one index seek each, in one UNION ALL)."""
        with self.engine.connect() as conn:
            query = select(t.deployments).order_by(t.deployments.c.started_at.desc()).limit(limit)
            if environment:
                query = query.where(t.deployments.c.environment == environment)
            if service:
                query = query.where(t.deployments.c.service == service)
            deployments = [_deployment(r) for r in conn.execute(query)]
            if not deployments:
                return []
            releases = {r.id: (r.commit, r.artifact_digest) for r in conn.execute(
                select(t.releases.c.id, t.releases.c.commit, t.releases.c.artifact_digest)
                .where(t.releases.c.id.in_({d.to_release for d in deployments})))}
            outcomes: dict[str, str] = {}
            steps = t.deployment_steps
            for r in conn.execute(select(steps.c.deployment_id, steps.c.detail_json)
                                  .where(steps.c.deployment_id.in_([d.id for d in deployments]),
                                         steps.c.name == "finish")
                                  .order_by(steps.c.deployment_id, steps.c.seq)):
                outcomes[r.deployment_id] = str(json.loads(r.detail_json).get("outcome", "succeeded"))  # the last
            acts = t.activations
            newest = [select(acts.c.environment, acts.c.service, acts.c.release_id, acts.c.deployment_id)
                      .where(acts.c.environment == env, acts.c.service == svc)
                      .order_by(acts.c.id.desc()).limit(1).subquery()
                      for env, svc in dict.fromkeys((d.environment, d.service) for d in deployments)]
            live = {(r.environment, r.service): (r.release_id, r.deployment_id)
                    for r in conn.execute(union_all(*(select(sub) for sub in newest)))}
        return [HistoryRow(d, *releases.get(d.to_release, (None, None)), outcomes.get(d.id, "running"),
                           live.get((d.environment, d.service)) == (d.to_release, d.id)) for d in deployments]

    def get_deployment(self, deployment_id: str) -> DeploymentRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.deployments).where(t.deployments.c.id == deployment_id)).first()
        return _deployment(row) if row else None

    def deployment_outcome(self, deployment_id: str) -> str:
        """`succeeded`, `failed`, `interrupted` or `running`, derived from the recorded steps."""
        steps = self.steps(deployment_id)
        for step in reversed(steps):
            if step.name == "finish":
                return str(step.detail.get("outcome", "succeeded"))
        return "running"

    # activations --------------------------------------------------------------------------
    def activate(
        self,
        conn: Connection,
        *,
        environment: str,
        service: str,
        release_id: str | None,
        deployment_id: str | None,
        params: dict[str, Any],
    ) -> None:
        conn.execute(
            t.activations.insert().values(
                environment=environment,
                service=service,
                release_id=release_id,
                deployment_id=deployment_id,
                params_json=json.dumps(params, sort_keys=True),
                at=time.time(),
                machine=self.machine,
            )
        )

    def activation_history(self, environment: str, service: str) -> list[ActivationRow]:
        query = (
            select(t.activations)
            .where(and_(t.activations.c.environment == environment, t.activations.c.service == service))
            .order_by(t.activations.c.id)
        )
        with self.engine.connect() as conn:
            return [_activation(r) for r in conn.execute(query)]

    def current_activation(self, environment: str, service: str) -> ActivationRow | None:
        # The newest row only (an index walk from its end), not the service's whole history.
        query = (select(t.activations)
                 .where(and_(t.activations.c.environment == environment, t.activations.c.service == service))
                 .order_by(t.activations.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _activation(row) if row else None

    def active_services(self, *, mine: bool = False) -> list[ActivationRow]:
        """The newest activation of every (environment, service) that is not taken down.

        `mine`: only this machine's, for its agent to recover, supervise and heal: activated here (or before
        the store knew machines), and with no instance live on another machine (a service activated before
        machines were known and running elsewhere since is that machine's)."""
        with self.engine.connect() as conn:
            newest = (
                select(func.max(t.activations.c.id))
                .group_by(t.activations.c.environment, t.activations.c.service)
                .scalar_subquery()
            )
            query = select(t.activations).where(t.activations.c.id.in_(newest))
            if mine:
                query = query.where(self._mine(t.activations.c.machine))
            result = [_activation(r) for r in conn.execute(query)]
            if mine and self.machine is not None:  # a store that names no machine has no elsewhere
                elsewhere = set(conn.execute(select(t.instances.c.environment).distinct().where(
                    t.instances.c.state.in_(LIVE_STATES), t.instances.c.machine.is_not(None),
                    t.instances.c.machine != self.machine)).scalars())
                result = [a for a in result if a.environment not in elsewhere]
        return [a for a in result if a.release_id is not None]

    # instances ----------------------------------------------------------------------------
    def add_instance(self, row: InstanceRow) -> None:
        self.add_instances([row])

    def add_instances(self, rows: list[InstanceRow]) -> None:
        with self.begin() as conn:
            for row in rows:
                conn.execute(t.instances.insert().values(**{**row.__dict__, "machine": row.machine or self.machine}))

    def fill_instance(self, row: InstanceRow) -> bool:
        """Fill in what a spawned instance turned out to be (pid, port, handle), once.

        False if its row is no longer `spawning` (`down` or recovery gave up on it meanwhile): the
        caller must then stop what it just started.
        """
        values = {c: getattr(row, c) for c in ("pid", "proc_start", "host", "port", "handle", "started_at", "state")}
        with self.begin() as conn:
            done = conn.execute(t.instances.update()
                                .where(and_(t.instances.c.id == row.id, t.instances.c.state == SPAWNING))
                                .values(**values))
        return bool(done.rowcount)

    def give_up_spawning(self, instance_id: str) -> bool:
        """Mark a `spawning` row failed (nothing carries its labels); False if it is no longer spawning."""
        with self.begin() as conn:
            done = conn.execute(t.instances.update()
                                .where(and_(t.instances.c.id == instance_id, t.instances.c.state == SPAWNING))
                                .values(state="failed", stopped_at=time.time()))
        return bool(done.rowcount)

    def claim_instances(self, instance_ids: list[str]) -> int:
        """Name this machine on those of `instance_ids` that name none (recorded before the store knew
        machines) once its agent has found them running here: from then on they are this machine's to every
        other machine's agent too (which then leaves their service alone; see `active_services`)."""
        if not instance_ids:
            return 0
        with self.begin() as conn:
            done = conn.execute(t.instances.update()
                                .where(t.instances.c.id.in_(instance_ids), t.instances.c.machine.is_(None))
                                .values(machine=self.machine))
        return int(done.rowcount)

    def get_instance(self, instance_id: str) -> InstanceRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.instances).where(t.instances.c.id == instance_id)).first()
        return _instance(row) if row else None

    def set_instance_state(self, instance_id: str, state: str, *, stopped: bool = False) -> None:
        values: dict[str, Any] = {"state": state}
        if stopped:
            values["stopped_at"] = time.time()
        with self.begin() as conn:
            conn.execute(t.instances.update().where(t.instances.c.id == instance_id).values(**values))

    def instance_states(self, environment: str, service: str) -> dict[str, str]:
        """Every instance ever recorded for the service, with its state."""
        query = select(t.instances.c.id, t.instances.c.state).where(
            and_(t.instances.c.environment == environment, t.instances.c.service == service))
        with self.engine.connect() as conn:
            return {str(r.id): str(r.state) for r in conn.execute(query)}

    def exited_instances(self, environment: str, service: str, *, mine: bool = False) -> list[InstanceRow]:
        """Instances that died on their own and have not been replaced yet (`mine`: of this machine)."""
        query = select(t.instances).where(and_(t.instances.c.state == "exited",
                                               t.instances.c.environment == environment,
                                               t.instances.c.service == service))
        if mine:
            query = query.where(self._mine(t.instances.c.machine))
        with self.engine.connect() as conn:
            return [_instance(r) for r in conn.execute(query.order_by(t.instances.c.started_at))]

    def live_instances(self, environment: str | None = None, service: str | None = None, *,
                       mine: bool = False) -> list[InstanceRow]:
        """Instances recorded live; `mine`: only those on this machine (and those that name no machine), the
        only ones its agent can see, stop or adopt."""
        query = select(t.instances).where(t.instances.c.state.in_(LIVE_STATES))
        if mine:
            query = query.where(self._mine(t.instances.c.machine))
        if environment:
            query = query.where(t.instances.c.environment == environment)
        if service:
            query = query.where(t.instances.c.service == service)
        with self.engine.connect() as conn:
            return [_instance(r) for r in conn.execute(query.order_by(t.instances.c.started_at))]
