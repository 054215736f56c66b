"""The config store: versioned config values and encrypted secrets per environment.

Every `set` appends a version (the tables are insert-only, enforced by triggers); the newest version
is the current value. A secret's removal is a version too, so a release made before it keeps the
version it snapshotted and can still be rolled back to.

A release snapshots what its service lists: config *values* and secret *versions* (name, environment
and version number: never a value). Changing either makes a new release, started on fresh instances;
the agent decrypts a release's secret versions only when it starts (or checks) an instance.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, select

from ingot import ledger
from ingot.errors import OperationFailed, UserInputError
from ingot.secrets_box import SecretsBox, load_box
from ingot.spec import ServiceSpec
from ingot.store import ReleaseRow, Store
from ingot.store import schema as t

if TYPE_CHECKING:
    from ingot.config_sources import SourceRead

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_VALUE_BYTES = 64 * 1024
SECRET_MASK = "(secret)"
SECRET_DIFFERS = "(secret: differs)"


@dataclass(frozen=True)
class ConfigEntry:
    environment: str
    key: str
    version: int
    value: str
    actor: str
    at: float
    action: str = "set"  # set | unset (its value then empty)

    @property
    def removed(self) -> bool:
        return self.action == "unset"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SecretEntry:
    """One version of a secret, as people may see it: never its value, not even encrypted."""

    environment: str
    name: str
    version: int
    action: str  # set | rm
    key_id: str | None
    actor: str
    at: float

    @property
    def removed(self) -> bool:
        return self.action == "rm"

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "name": self.name, "version": self.version,
                "state": "removed" if self.removed else "set", "key_id": self.key_id, "actor": self.actor,
                "at": self.at}


# ---- input rules ------------------------------------------------------------------------------
def check_name(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise UserInputError(f"{what} name {name!r} is not a valid environment variable name: letters, digits "
                             "and _, not starting with a digit (e.g. FEATURE_FLAG)")
    return name


def check_value(value: str, what: str) -> str:
    if "\0" in value:
        raise UserInputError(f"the value of {what} contains a NUL byte, which an environment variable cannot hold")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise UserInputError(f"the value of {what} is {len(value.encode())} bytes; the limit is {MAX_VALUE_BYTES}")
    return value


def secret_context(environment: str, name: str, version: int) -> str:
    """What a ciphertext is bound to (AES-GCM associated data), and how errors name it."""
    return f"secret {name} version {version} in {environment}"


# ---- writes: each one appends a version and its ledger entry in one transaction ---------------
def _next_version(conn: Connection, table: Any, column: Any, environment: str, name: str) -> int:
    query = select(func.coalesce(func.max(table.c.version), 0)).where(
        and_(table.c.environment == environment, column == name))
    return int(conn.execute(query).scalar_one()) + 1


def set_config(store: Store, environment: str, key: str, value: str, actor: str) -> ConfigEntry:
    return set_configs(store, environment, [(key, value)], actor)[0]


def set_configs(store: Store, environment: str, pairs: list[tuple[str, str]], actor: str) -> list[ConfigEntry]:
    """Set several keys in one transaction: all of them or (on bad input) none."""
    for key, value in pairs:
        check_name(key, "config")
        check_value(value, f"config {key}")
    entries = []
    with store.begin() as conn:
        for key, value in pairs:
            version = _next_version(conn, t.config_values, t.config_values.c.key, environment, key)
            entry = ConfigEntry(environment, key, version, value, actor, time.time())
            conn.execute(t.config_values.insert().values(**entry.as_dict()))
            # The value itself is in the config table (and in releases' snapshots), not in the ledger.
            ledger.append(conn, actor=actor, action="config.set", environment=environment, subject=key,
                          payload={"key": key, "version": version})
            entries.append(entry)
    return entries


def unset_config(store: Store, environment: str, key: str, actor: str) -> ConfigEntry:
    """Remove a key: a new version that unsets it. Services listing it are refused a new release until it
    is set again; releases made before keep the value they snapshotted (rollback still works)."""
    check_name(key, "config")
    with store.begin() as conn:
        c = t.config_values.c
        newest = conn.execute(select(c.action).where(and_(c.environment == environment, c.key == key))
                              .order_by(c.id.desc()).limit(1)).scalar()
        if newest is None or newest == "unset":
            state = "was unset" if newest else "was never set"
            raise UserInputError(f"config {key} {state} in {environment}: nothing to unset; see "
                                 f"'ingot config list --env {environment}'")
        version = _next_version(conn, t.config_values, c.key, environment, key)
        entry = ConfigEntry(environment, key, version, "", actor, time.time(), "unset")
        conn.execute(t.config_values.insert().values(**entry.as_dict()))
        ledger.append(conn, actor=actor, action="config.unset", environment=environment, subject=key,
                      payload={"key": key, "version": version})
    return entry


def set_secret(store: Store, box: SecretsBox, environment: str, name: str, value: str, actor: str) -> SecretEntry:
    check_name(name, "secret")
    check_value(value, f"secret {name}")
    if not value:
        raise UserInputError(f"the value of secret {name} is empty; nothing was set")
    foreign = _other_key(store, box)
    if foreign:
        raise OperationFailed(f"the secrets in this store were encrypted with key {foreign}, but the key at "
                              f"{box.path} is {box.key_id}; refusing to mix keys",
                              details=["point INGOT_SECRETS_KEY_FILE at the original key file"])
    with store.begin() as conn:
        version = _next_version(conn, t.secret_versions, t.secret_versions.c.name, environment, name)
        sealed = box.seal(value, secret_context(environment, name, version))
        entry = SecretEntry(environment, name, version, "set", box.key_id, actor, time.time())
        conn.execute(t.secret_versions.insert().values(
            environment=environment, name=name, version=version, action="set", ciphertext=sealed,
            key_id=box.key_id, actor=actor, at=entry.at))
        ledger.append(conn, actor=actor, action="secret.set", environment=environment, subject=name,
                      payload={"name": name, "version": version, "key_id": box.key_id})
    return entry


def remove_secret(store: Store, environment: str, name: str, actor: str) -> SecretEntry:
    check_name(name, "secret")
    with store.begin() as conn:
        current = _secret_rows(conn, environment, name)
        if not current or current[0].removed:
            state = "was removed" if current else "was never set"
            raise UserInputError(f"secret {name} {state} in {environment}: nothing to remove; see "
                                 f"'ingot secret list --env {environment}'")
        version = current[0].version + 1
        entry = SecretEntry(environment, name, version, "rm", None, actor, time.time())
        conn.execute(t.secret_versions.insert().values(
            environment=environment, name=name, version=version, action="rm", ciphertext=None, key_id=None,
            actor=actor, at=entry.at))
        ledger.append(conn, actor=actor, action="secret.rm", environment=environment, subject=name,
                      payload={"name": name, "version": version, "removed_version": current[0].version})
    return entry


def _other_key(store: Store, box: SecretsBox) -> str | None:
    """The id of a key other than `box`'s that sealed a secret in this store, if any."""
    query = (select(t.secret_versions.c.key_id)
             .where(and_(t.secret_versions.c.key_id.is_not(None), t.secret_versions.c.key_id != box.key_id))
             .limit(1))
    with store.engine.connect() as conn:
        found = conn.execute(query).scalar()
    return str(found) if found else None


# ---- reads ------------------------------------------------------------------------------------
def config_history(store: Store, environment: str, key: str | None = None) -> list[ConfigEntry]:
    """Every version, newest first."""
    c = t.config_values.c
    query = select(t.config_values).where(c.environment == environment)
    if key is not None:
        query = query.where(c.key == key)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(c.id.desc()))
        return [ConfigEntry(r.environment, r.key, r.version, r.value, r.actor, r.at, r.action) for r in rows]


def current_config(store: Store, environment: str) -> dict[str, ConfigEntry]:
    """The newest value of each key that has one (an unset key is not there)."""
    current: dict[str, ConfigEntry] = {}
    for entry in config_history(store, environment):
        current.setdefault(entry.key, entry)
    return {key: entry for key, entry in sorted(current.items()) if not entry.removed}


def _secret_rows(conn: Connection, environment: str, name: str | None) -> list[SecretEntry]:
    c = t.secret_versions.c
    query = select(c.environment, c.name, c.version, c.action, c.key_id, c.actor, c.at).where(
        c.environment == environment)
    if name is not None:
        query = query.where(c.name == name)
    return [SecretEntry(r.environment, r.name, r.version, r.action, r.key_id, r.actor, r.at)
            for r in conn.execute(query.order_by(c.id.desc()))]


def secret_history(store: Store, environment: str, name: str | None = None) -> list[SecretEntry]:
    """Every version (and removal), newest first; never a value."""
    with store.engine.connect() as conn:
        return _secret_rows(conn, environment, name)


def current_secrets(store: Store, environment: str) -> dict[str, SecretEntry]:
    """The newest version of each secret ever set, removed ones included (with state `removed`)."""
    current: dict[str, SecretEntry] = {}
    for entry in secret_history(store, environment):
        current.setdefault(entry.name, entry)
    return dict(sorted(current.items()))


# ---- releases ---------------------------------------------------------------------------------
def snapshot(store: Store, environment: str, name: str, service: ServiceSpec,
             sourced: SourceRead | None = None) -> dict[str, Any]:
    """What a release of `service` in `environment` takes from the store: config values, secret versions.

    A service with neither snapshots `{"values": {}}`, as releases always have. A key the service lists
    without a value in the environment refuses the release (exit 2), naming the key and the command.

    `sourced`: what the environment's config source (ingot.config_sources) holds of the listed keys. Its values
    are taken exactly as the store's are. A key in both the source and the store is refused rather than one
    silently shadowing the other (each variable has one source, as with env/config/secrets in the spec); a
    secret's name in the source is refused too: a source never supplies secrets.
    """
    config = current_config(store, environment) if service.config else {}
    secrets = current_secrets(store, environment) if service.secrets else {}
    from_source = sourced.values if sourced is not None else {}
    problems = []
    for key in service.config:
        if key in from_source:
            assert sourced is not None
            if key in config:
                problems.append(f"config {key} is set both in {sourced.describe()} at {sourced.key(key)} and in "
                                f"ingot's config store (version {config[key].version}); each key needs one "
                                "source: delete one of them")
            check_value(from_source[key], f"config {key} ({sourced.key(key)} in {sourced.kind})")
        elif key not in config:
            problems.append(_missing(key, environment, sourced))
    for secret in service.secrets:
        entry = secrets.get(secret)
        if secret in from_source:
            assert sourced is not None
            problems.append(f"secret {secret} is in {sourced.describe()} at {sourced.key(secret)}: a config "
                            "source never supplies secrets, which stay in ingot's encrypted store: delete it "
                            f"there and use ingot secret set {secret} --env {environment}")
        elif entry is None or entry.removed:
            how = f"was removed from {environment} (by {entry.actor})" if entry else f"has no value in {environment}"
            problems.append(f"secret {secret} {how}: ingot secret set {secret} --env {environment}")
    if problems:
        raise UserInputError(f"services.{name} in {environment} lists keys that have no value in {environment}; "
                             "set them, then deploy again", details=problems)
    taken: dict[str, Any] = {"values": {key: from_source[key] if key in from_source else config[key].value
                                        for key in sorted(service.config)}}
    if service.secrets:
        taken["secrets"] = {secret: {"environment": environment, "version": secrets[secret].version}
                            for secret in sorted(service.secrets)}
    return taken


def _missing(key: str, environment: str, sourced: SourceRead | None) -> str:
    store_hint = f"ingot config set {key} VALUE --env {environment}"
    if sourced is None:
        return f"config {key} has no value in {environment}: {store_hint}"
    return (f"config {key} has no value in {environment}: {sourced.key(key)} is not in {sourced.describe()} "
            f"(revision {sourced.revision}), nor is {key} in ingot's config store: put it in {sourced.kind} "
            f"(or {store_hint})")


def secret_refs(release: ReleaseRow) -> dict[str, dict[str, Any]]:
    """The secret versions a release uses, by variable name (no values: those are decrypted on use)."""
    return dict(release.config.get("secrets") or {})


def check_secrets_for(release: ReleaseRow, environment: str) -> None:
    """A release made with one environment's secrets never runs in another."""
    foreign = sorted({str(ref["environment"]) for ref in secret_refs(release).values()} - {environment})
    if foreign:
        raise UserInputError(
            f"release {release.id} of {release.service} was made with the secrets of {', '.join(foreign)}; "
            f"it does not run in {environment}",
            details=[f"deploy the service to {environment} ('ingot deploy --env {environment}' or "
                     "'ingot promote'): that makes a release with its own secrets"])


def secret_values(store: Store, keys_dir: Path, release: ReleaseRow, environment: str) -> dict[str, str]:
    """The decrypted values of the secret versions a release snapshotted: for an instance's environment only."""
    refs = secret_refs(release)
    if not refs:
        return {}
    check_secrets_for(release, environment)
    box = load_box(keys_dir)
    c = t.secret_versions.c
    values = {}
    with store.engine.connect() as conn:
        for name, ref in sorted(refs.items()):
            version = int(ref["version"])
            row = conn.execute(select(c.ciphertext, c.key_id).where(and_(
                c.environment == environment, c.name == name, c.version == version, c.action == "set"))).first()
            if row is None or row.ciphertext is None:
                raise OperationFailed(f"release {release.id}: {secret_context(environment, name, version)} is "
                                      "not in the store")
            values[name] = box.open(row.ciphertext, secret_context(environment, name, version),
                                    sealed_with=row.key_id)
    return values


def current_secret_value(store: Store, keys_dir: Path, environment: str, name: str) -> str:
    """The decrypted value of `name`'s newest version in `environment` (for ingot's own use: a webhook's
    URL or signing key); refused if it was never set or is removed."""
    current = current_secrets(store, environment).get(name)
    if current is None or current.removed:
        raise OperationFailed(f"secret {name} is not set in {environment}",
                              details=[f"ingot secret set {name} --env {environment}"])
    c = t.secret_versions.c
    with store.engine.connect() as conn:
        row = conn.execute(select(c.ciphertext, c.key_id).where(and_(
            c.environment == environment, c.name == name, c.version == current.version))).first()
    assert row is not None and row.ciphertext is not None
    return load_box(keys_dir).open(row.ciphertext, secret_context(environment, name, current.version),
                                   sealed_with=row.key_id)


def mask_secrets(differences: tuple[tuple[str, str | None, str | None], ...],
                 names: set[str]) -> tuple[tuple[str, str | None, str | None], ...]:
    """Environment differences fit to show: a secret's values become a mask, only its name stays."""
    return tuple(
        (name, SECRET_MASK, None if actual is None else SECRET_DIFFERS) if name in names else (name, expected, actual)
        for name, expected, actual in differences
    )
