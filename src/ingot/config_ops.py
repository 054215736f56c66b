"""The service functions behind `ingot config` and `ingot secret`; the CLI and the HTTP API call these.

`environment` is an environment the spec defines (see `Project.environment`). Values go in; only config
values ever come out. Secrets come out as names, versions, who and when.
"""

from __future__ import annotations

from typing import Any

from ingot import config_store
from ingot.actor import current_actor
from ingot.config_store import ConfigEntry, SecretEntry
from ingot.errors import UserInputError
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
    taken = config_store.snapshot(project.store, environment, name, service)
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
    return taken
