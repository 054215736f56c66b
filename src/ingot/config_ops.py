"""The service functions behind `ingot config` and `ingot secret`; the CLI and the HTTP API call these.

`environment` is an environment the spec defines (see `Project.environment`). Values go in; only config
values ever come out. Secrets come out as names, versions, who and when.
"""

from __future__ import annotations

from typing import Any

from ingot import config_sources, config_store, ledger
from ingot.actor import current_actor
from ingot.config_sources import ConfigSource, SourceRead, SourceUnavailable
from ingot.config_store import ConfigEntry, SecretEntry
from ingot.errors import OperationFailed, UserInputError
from ingot.project import Project
from ingot.secrets_box import SecretsKeyError, load_box
from ingot.spec import ServiceSpec


def set_configs(project: Project, environment: str, pairs: list[tuple[str, str]]) -> list[ConfigEntry]:
    return config_store.set_configs(project.store, environment, pairs, current_actor())


def unset_config(project: Project, environment: str, key: str) -> ConfigEntry:
    return config_store.unset_config(project.store, environment, key, current_actor())


def parse_assignments(args: list[str]) -> list[tuple[str, str]]:
    """`KEY=VALUE ...`, or the older `KEY VALUE`; a key given twice keeps its last value."""
    if len(args) == 2 and "=" not in args[0]:
        return [(args[0], args[1])]
    pairs: dict[str, str] = {}
    for arg in args:
        key, equals, value = arg.partition("=")
        if not equals:
            raise UserInputError(f"config set: {arg!r} has no value; write {arg}=VALUE (or KEY VALUE for one key)")
        if not key:
            raise UserInputError(f"config set: {arg!r} has no key before '='; write KEY=VALUE")
        config_store.check_name(key, "config")
        pairs[key] = value
    return list(pairs.items())


def get_config(project: Project, environment: str, key: str) -> ConfigEntry:
    config_store.check_name(key, "config")
    entry = config_store.current_config(project.store, environment).get(key)
    if entry is None:
        raise UserInputError(f"config {key} has no value in {environment}; set it with "
                             f"'ingot config set {key} VALUE --env {environment}'")
    return entry


def list_config(project: Project, environment: str) -> list[ConfigEntry]:
    return list(config_store.current_config(project.store, environment).values())


def config_history(project: Project, environment: str, key: str | None = None) -> list[ConfigEntry]:
    if key is not None:
        config_store.check_name(key, "config")
    return config_store.config_history(project.store, environment, key)


def set_secret(project: Project, environment: str, name: str, value: str) -> SecretEntry:
    config_store.check_name(name, "secret")
    box = load_box(project.paths.keys, create=True)
    return config_store.set_secret(project.store, box, environment, name, value, current_actor())


def list_secrets(project: Project, environment: str) -> list[SecretEntry]:
    return list(config_store.current_secrets(project.store, environment).values())


def secret_history(project: Project, environment: str, name: str | None = None) -> list[SecretEntry]:
    if name is not None:
        config_store.check_name(name, "secret")
    return config_store.secret_history(project.store, environment, name)


def remove_secret(project: Project, environment: str, name: str) -> SecretEntry:
    return config_store.remove_secret(project.store, environment, name, current_actor())


def release_config(project: Project, environment: str, name: str, service: ServiceSpec) -> dict[str, Any]:
    """The config snapshot a release of `name` in `environment` takes now.

    Refused (exit 2) when a listed key has no value there. With secrets, the secrets key must be at hand
    and be the one that sealed them: a deploy fails here, before anything is built, not at instance start.
    """
    return release_config_read(project, environment, name, service)[0]


def release_config_read(project: Project, environment: str, name: str, service: ServiceSpec, *,
                        record_failure: bool = True) -> tuple[dict[str, Any], SourceRead | None]:
    """`release_config`, with what the environment's config source gave (None: no source involved)."""
    taken, sourced = release_snapshot(project, environment, name, service, record_failure=record_failure)
    refs = taken.get("secrets") or {}
    if refs:
        box = load_box(project.paths.keys)
        current = config_store.current_secrets(project.store, environment)
        for secret in refs:
            sealed_with = current[secret].key_id
            if sealed_with != box.key_id:
                raise SecretsKeyError(
                    f"secret {secret} in {environment} was encrypted with secrets key {sealed_with}, but the key "
                    f"at {box.path} is {box.key_id}",
                    details=["restore the original key file, or point INGOT_SECRETS_KEY_FILE at it"])
    return taken, sourced


# ---- config sources (ingot.config_sources) ------------------------------------------------------------
def release_snapshot(project: Project, environment: str, name: str, service: ServiceSpec, *,
                     record_failure: bool = True) -> tuple[dict[str, Any], SourceRead | None]:
    """The config snapshot a release takes now (see `config_store.snapshot`), with what the environment's
    config source gave, read once for this snapshot: its revision goes into the ledger with the release."""
    sourced = read_source(project, environment, name, service, record_failure=record_failure)
    return config_store.snapshot(project.store, environment, name, service, sourced), sourced


def read_source(project: Project, environment: str, name: str, service: ServiceSpec, *,
                record_failure: bool = True) -> SourceRead | None:
    """The listed keys as the environment's config source holds them (None: it has no source, or the service
    lists no keys). Secret names are read too, only so that one found there is refused.

    An unreachable source fails the operation (exit 1) before any instance of a new release starts, recorded in
    the ledger (`config_source.fail`) when `record_failure`."""
    source = config_sources.for_environment(project.spec, environment)
    if source is None or not (service.config or service.secrets):
        return None
    return _read(project, environment, source, [*service.config, *service.secrets], name, record_failure)


def _read(project: Project, environment: str, source: ConfigSource, names: list[str], service: str | None,
          record_failure: bool) -> SourceRead:
    try:
        return source.read(names)
    except SourceUnavailable as exc:
        if record_failure:
            ledger.record(project.store, actor=current_actor(), action="config_source.fail",
                          environment=environment, service=service,
                          payload={"kind": source.kind, "endpoints": list(source.endpoints), "prefix": source.prefix,
                                   "error": exc.message, "details": exc.details})
        if service is None:
            raise OperationFailed(f"{environment}: its config source could not be read: {exc.message}",
                                  details=exc.details) from None
        raise OperationFailed(f"{environment}: the config of {service} could not be read: {exc.message}",
                              details=[*exc.details, "no instance of a new release was started: what was serving "
                                       "keeps serving"]) from None


def source_diff(project: Project, environment: str) -> dict[str, Any]:
    """What changed in the environment's config source since each service's live release: per listed key that
    the source holds (or held when the live release was made), its live and its current value.

    Values are config, never secrets: a secret's name found in the source is reported, not its value."""
    source = config_sources.for_environment(project.spec, environment)
    if source is None:
        raise UserInputError(f"environment {environment} has no config_source in {project.spec.path}",
                             details=[f"add environments.{environment}.config_source: {{etcd: {{endpoints: "
                                      "[http://127.0.0.1:2379], prefix: /apps/NAME/}}"])
    services = {name: project.spec.service_for(environment, name) for name in project.spec.services}
    names = sorted({key for s in services.values() for key in (*s.config, *s.secrets)})
    sourced = _read(project, environment, source, names, None, record_failure=False)
    rows = []
    for name, service in services.items():
        if not (service.config or service.secrets):
            continue
        current = project.store.current_activation(environment, name)
        live = project.store.get_release(current.release_id) if current and current.release_id else None
        live_values: dict[str, Any] = dict(live.config.get("values") or {}) if live else {}
        made_with = _source_record(project, environment, name, live.id) if live else {}
        changes = []
        for key in sorted(service.config):
            if key not in sourced.values and key not in (made_with.get("keys") or {}):
                continue  # a key of ingot's own store, not the source's
            old, new = live_values.get(key), sourced.values.get(key)
            status = ("removed" if new is None else "added" if key not in live_values
                      else "unchanged" if old == new else "changed")
            changes.append({"key": key, "source_key": sourced.key(key), "status": status, "live": old, "source": new,
                            "version": sourced.versions.get(key)})
        rows.append({"service": name, "release": live.id if live else None,
                     "release_revision": made_with.get("revision"), "changes": changes,
                     "secrets_in_source": sorted(set(service.secrets) & set(sourced.values))})
    return {"environment": environment, "source": {"kind": sourced.kind, "endpoints": list(sourced.endpoints),
                                                   "prefix": sourced.prefix, "revision": sourced.revision},
            "services": rows}


def _source_record(project: Project, environment: str, name: str, release_id: str) -> dict[str, Any]:
    """The config source record of a release's ledger entry: where its values came from, at which revision."""
    for entry in reversed(ledger.entries(project.store, environment=environment, service=name, actions=["release"])):
        if entry.subject == release_id:
            return dict(entry.payload.get("config_source") or {})
    return {}
