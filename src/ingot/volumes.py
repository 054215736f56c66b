"""Named volumes: a service's persistent state, which survives replacement and rollback.

A volume is named by (project, environment, name), never by release: every instance of every release of
the service sees the same one. It is declared state, not part of an artifact or of what drift compares.

- Process runtime: a directory `<volumes>/<project>/<environment>/<name>` (see `StatePaths.volumes`), the
  instance user's alone; the instance finds it in `INGOT_VOLUME_<NAME>`. A process cannot be given a bind
  mount without a mount namespace, so the spec's path (`volumes: {NAME: /path}`) is for containers only.
- Containers: an engine volume `ingot-<project>-<environment>-<name>` mounted at the path (writable even
  on the read-only root file system); `INGOT_VOLUME_<NAME>` names the path inside.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingot import ledger
from ingot.artifacts.store import force_rmtree
from ingot.errors import OperationFailed, UserInputError
from ingot.paths import StatePaths
from ingot.runtimes.base import VolumeMount
from ingot.spec.models import volume_variable

if TYPE_CHECKING:
    from ingot.project import Project

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def host_dir(paths: StatePaths, project: str, environment: str, name: str) -> Path:
    return paths.volumes / project / environment / name


def engine_name(project: str, environment: str, name: str) -> str:
    return _UNSAFE.sub("-", f"ingot-{project}-{environment}-{name}")


def mounts(paths: StatePaths, project: str, environment: str, runtime: str,
           volumes: Mapping[str, str]) -> tuple[VolumeMount, ...]:
    """The volumes an instance of the service gets on `runtime`, in name order."""
    return tuple(
        VolumeMount(name, target, str(host_dir(paths, project, environment, name)) if runtime == "process"
                    else engine_name(project, environment, name))
        for name, target in sorted(volumes.items())
    )


def variables(mounts: tuple[VolumeMount, ...], runtime: str) -> dict[str, str]:
    """INGOT_VOLUME_<NAME> of each volume: where the instance finds it."""
    return {volume_variable(m.name): m.source if runtime == "process" else m.target for m in mounts}


# ---- ingot volume ls | rm --------------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeInfo:
    environment: str
    name: str
    runtime: str
    location: str  # the host directory, or the engine volume's name
    services: tuple[str, ...]  # the spec's services that declare it (none: left from an older spec)
    used_by: tuple[str, ...]  # releases with live instances that mount it
    exists: bool | None  # None: the engine could not be asked

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["services"], data["used_by"] = list(self.services), list(self.used_by)
        return data


def list_volumes(project: Project, environment: str | None = None) -> list[VolumeInfo]:
    """The volumes of the spec's services (per environment), and process volumes still on disk that no
    service declares any more; with the live releases that use each one."""
    spec = project.spec
    found: dict[tuple[str, str], VolumeInfo] = {}
    for env in [environment] if environment else spec.environment_names:
        for service in spec.services:
            effective = spec.service_for(env, service)
            for name in effective.volumes:
                known = found.get((env, name))
                services = (*known.services, service) if known else (service,)
                found[(env, name)] = _info(project, env, name, effective.runtime, services)
        leftovers = project.paths.volumes / spec.project / env
        for directory in sorted(leftovers.iterdir()) if leftovers.is_dir() else ():
            if (env, directory.name) not in found:
                found[(env, directory.name)] = _info(project, env, directory.name, "process", ())
    return sorted(found.values(), key=lambda v: (v.environment, v.name))


def _info(project: Project, env: str, name: str, runtime: str, services: tuple[str, ...]) -> VolumeInfo:
    if runtime == "process":
        location = host_dir(project.paths, project.spec.project, env, name)
        exists: bool | None = location.is_dir()
        where = str(location)
    else:
        where = engine_name(project.spec.project, env, name)
        exists = _engine_volume_exists(where)
    return VolumeInfo(env, name, runtime, where, services, _used_by(project, env, name), exists)


def _used_by(project: Project, env: str, name: str) -> tuple[str, ...]:
    store = project.store
    releases = {row.release_id for row in store.live_instances(env)}
    using = []
    for release_id in sorted(releases):
        release = store.get_release(release_id)
        if release is not None and name in (release.spec.get("volumes") or {}):
            using.append(release_id)
    return tuple(using)


def _engine_volume_exists(name: str) -> bool | None:
    from docker.errors import NotFound  # type: ignore[import-untyped]

    from ingot.runtimes.engine import connect_engine

    try:
        connect_engine().volumes.get(name)
    except NotFound:
        return False
    except Exception:  # no engine, or it would not answer: not known
        return None
    return True


def remove_volume(project: Project, environment: str, name: str, actor: str) -> VolumeInfo:
    """Delete a volume and what is in it. Refused (exit 2) while a live release uses it, or if there is none."""
    info = next((v for v in list_volumes(project, environment) if v.name == name), None)
    if info is None or info.exists is False:
        raise UserInputError(f"no volume {name!r} in {environment}",
                             details=["`ingot volume ls` lists the volumes of each environment"])
    if info.used_by:
        raise UserInputError(
            f"volume {name} in {environment} is used by the live release(s) {', '.join(info.used_by)}; not removed",
            details=[f"stop or redeploy what uses it first (services: {', '.join(info.services) or '-'})"])
    if info.runtime == "process":
        force_rmtree(Path(info.location))
    else:
        _remove_engine_volume(project.spec.project, info)
    ledger.record(project.store, actor=actor, action="volume.rm", environment=environment, subject=name,
                  payload={"runtime": info.runtime, "location": info.location})
    return info


VOLUME_RM_TRIES = 25  # 0.2 s apart: Podman takes about 0.3 s to remove an exited container


def _remove_engine_volume(project_name: str, info: VolumeInfo) -> None:
    """Remove an engine volume, first the exited containers of this project still holding it.

    An instance's exited container is removed in the background after it stops (see DockerRuntime.stop),
    and the engine refuses to remove a volume any container names, exited or not. A running container, or
    another's, is not ingot's to remove: the volume is kept and the message names it."""
    from docker.errors import APIError, NotFound  # type: ignore[import-untyped]

    from ingot.runtimes.engine import connect_engine

    try:
        engine = connect_engine()
        # ignore_removed: a container the background removal takes meanwhile is not an error.
        holders = engine.containers.list(all=True, filters={"volume": info.location}, ignore_removed=True)
    except Exception as exc:
        raise OperationFailed(f"engine volume {info.location} could not be removed: {exc}") from exc
    for container in holders:
        labels = (container.attrs.get("Config") or {}).get("Labels") or {}
        if container.status in ("running", "paused", "restarting") or labels.get("ingot.project") != project_name:
            raise UserInputError(
                f"volume {info.name} in {info.environment} is mounted by container {container.name} "
                f"({container.status}); not removed",
                details=["stop and remove that container first" if labels.get("ingot.project") != project_name
                         else "`ingot status` shows what runs; a --detach'ed `ingot run` is stopped by `ingot down`"])
    try:
        for container in holders:
            with contextlib.suppress(NotFound):
                try:
                    container.remove(force=True)
                except APIError as exc:
                    if exc.status_code != 409:  # 409: its removal is already in progress (the background one)
                        raise
        # The engine lets go of the volume once the holders' removal has ended: a few tries, briefly apart.
        for attempt in range(VOLUME_RM_TRIES):
            try:
                engine.volumes.get(info.location).remove()
                break
            except APIError as exc:
                if exc.status_code != 409 or attempt == VOLUME_RM_TRIES - 1:
                    raise
                time.sleep(0.2)
    except Exception as exc:
        raise OperationFailed(f"engine volume {info.location} could not be removed: {exc}") from exc
