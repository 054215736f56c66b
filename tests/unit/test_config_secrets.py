"""The config store and secrets: encryption, keys, versions, insert-only history, release snapshots."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from ingot import config_store, ledger
from ingot.agent.healer import Healer
from ingot.artifacts import ArtifactStore
from ingot.canonical import content_digest
from ingot.config_store import SECRET_DIFFERS, SECRET_MASK
from ingot.errors import OperationFailed, UserInputError
from ingot.executor import Executor
from ingot.paths import StatePaths
from ingot.releases import load_or_create_key, new_release
from ingot.runtimes.registry import Runtimes
from ingot.secrets_box import KEY_FILE_ENV, SecretsKeyError, load_box
from ingot.spec import ServiceSpec
from ingot.store import InstanceRow, ReleaseRow, Store

SERVICE = ServiceSpec(command=["./run"], config=["FEATURE_FLAG"], secrets=["API_KEY"])


@pytest.fixture(autouse=True)
def _default_key_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    return StatePaths(tmp_path / "state")


@pytest.fixture
def store(paths: StatePaths) -> Store:
    return Store(paths.root)


def _release(paths: StatePaths, config: dict[str, object]) -> ReleaseRow:
    return new_release(key=load_or_create_key(paths.keys), project="p", service="web",
                       artifact_digest="sha256:" + "a" * 64, spec=SERVICE.release_fields(), config=config,
                       actor="tester")


# ---- encryption and keys ------------------------------------------------------------------------
def test_encryption_round_trip_binds_the_value_to_its_row(paths: StatePaths) -> None:
    box = load_box(paths.keys, create=True)
    token = box.seal("s3cr3t-välue", "secret API_KEY version 1 in staging")
    assert "s3cr3t" not in token and box.seal("s3cr3t-välue", "secret API_KEY version 1 in staging") != token
    assert box.open(token, "secret API_KEY version 1 in staging", sealed_with=box.key_id) == "s3cr3t-välue"
    # A ciphertext copied onto another row (name, version or environment) does not decrypt.
    with pytest.raises(SecretsKeyError, match="cannot be decrypted"):
        box.open(token, "secret API_KEY version 1 in production")


def test_key_file_is_made_private_on_first_use_and_reused(paths: StatePaths) -> None:
    with pytest.raises(SecretsKeyError, match="no secrets key at"):
        load_box(paths.keys)
    first = load_box(paths.keys, create=True)
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.keys.stat().st_mode) == 0o700
    assert first.path == paths.keys / "secrets.key"
    assert load_box(paths.keys, create=True).key == first.key == load_box(paths.keys).key


def test_wrong_key_fails_clearly(paths: StatePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    right = load_box(paths.keys, create=True)
    token = right.seal("value", "ctx")
    other_file = tmp_path / "other.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(other_file))
    wrong = load_box(paths.keys, create=True)
    assert wrong.path == other_file and wrong.key != right.key
    with pytest.raises(SecretsKeyError) as raised:
        wrong.open(token, "ctx", sealed_with=right.key_id)
    assert right.key_id in raised.value.message and wrong.key_id in raised.value.message
    assert str(other_file) in raised.value.message
    with pytest.raises(SecretsKeyError, match="wrong key, or the stored value was altered"):
        wrong.open(token, "ctx")


def test_a_key_readable_by_others_or_malformed_is_refused(paths: StatePaths) -> None:
    box = load_box(paths.keys, create=True)
    os.chmod(box.path, 0o644)
    with pytest.raises(SecretsKeyError, match="accessible to other users") as raised:
        load_box(paths.keys)
    assert f"chmod 600 {box.path}" in raised.value.details
    os.chmod(box.path, 0o600)
    box.path.write_text("not a key\n")
    with pytest.raises(SecretsKeyError, match="is not an ingot secrets key"):
        load_box(paths.keys)


# ---- versions and insert-only history ------------------------------------------------------------
def test_every_set_appends_a_version_per_environment(store: Store) -> None:
    for value in ("a", "b", "c"):
        config_store.set_config(store, "staging", "FEATURE_FLAG", value, "alice")
    config_store.set_config(store, "production", "FEATURE_FLAG", "p", "bob")
    history = config_store.config_history(store, "staging", "FEATURE_FLAG")
    assert [(e.version, e.value) for e in history] == [(3, "c"), (2, "b"), (1, "a")]
    assert config_store.current_config(store, "staging")["FEATURE_FLAG"].value == "c"
    current = config_store.current_config(store, "production")["FEATURE_FLAG"]
    assert (current.version, current.value, current.actor) == (1, "p", "bob")


def test_bad_names_and_values_are_refused(store: Store) -> None:
    for name in ("1ABC", "A-B", "", "A B"):
        with pytest.raises(UserInputError, match="not a valid environment variable name"):
            config_store.set_config(store, "staging", name, "x", "alice")
    with pytest.raises(UserInputError, match="NUL"):
        config_store.set_config(store, "staging", "A", "x\0y", "alice")
    with pytest.raises(UserInputError, match="empty"):
        config_store.set_secret(store, load_box(store.state_dir / "keys", create=True), "staging", "K", "", "a")
    assert config_store.config_history(store, "staging") == []


@pytest.mark.parametrize("table", ["config_values", "secret_versions"])
def test_config_history_is_insert_only(store: Store, paths: StatePaths, table: str) -> None:
    config_store.set_config(store, "staging", "FEATURE_FLAG", "on", "alice")
    config_store.set_secret(store, load_box(paths.keys, create=True), "staging", "API_KEY", "v", "alice")
    with pytest.raises((IntegrityError, OperationalError), match="insert-only"), store.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET actor = 'mallory'"))
    with pytest.raises((IntegrityError, OperationalError), match="insert-only"), store.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT actor FROM {table}")).scalars().all() == ["alice"]


def test_secrets_are_stored_encrypted_and_recorded_without_values(store: Store, paths: StatePaths) -> None:
    box = load_box(paths.keys, create=True)
    config_store.set_secret(store, box, "staging", "API_KEY", "plain-text-value-1", "alice")
    config_store.set_secret(store, box, "staging", "API_KEY", "plain-text-value-2", "alice")
    removal = config_store.remove_secret(store, "staging", "API_KEY", "bob")
    assert (removal.version, removal.removed) == (3, True)
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT ciphertext FROM secret_versions")).scalars().all()
    assert all(c is None or "plain-text" not in c for c in stored) and len(stored) == 3
    actions = [(e.action, e.payload) for e in ledger.entries(store)]
    assert actions == [("secret.set", {"name": "API_KEY", "version": 1, "key_id": box.key_id}),
                       ("secret.set", {"name": "API_KEY", "version": 2, "key_id": box.key_id}),
                       ("secret.rm", {"name": "API_KEY", "version": 3, "removed_version": 2})]
    with pytest.raises(UserInputError, match="was removed in staging"):
        config_store.remove_secret(store, "staging", "API_KEY", "bob")
    with pytest.raises(UserInputError, match="was never set in staging"):
        config_store.remove_secret(store, "staging", "OTHER", "bob")


def test_a_second_key_is_never_mixed_into_the_store(store: Store, paths: StatePaths, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config_store.set_secret(store, load_box(paths.keys, create=True), "staging", "API_KEY", "v", "alice")
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "typo.key"))
    with pytest.raises(OperationFailed, match="refusing to mix keys"):
        config_store.set_secret(store, load_box(paths.keys, create=True), "staging", "OTHER", "v", "alice")


# ---- snapshots -----------------------------------------------------------------------------------
def test_snapshot_digest_follows_the_values(store: Store, paths: StatePaths) -> None:
    box = load_box(paths.keys, create=True)
    config_store.set_config(store, "staging", "FEATURE_FLAG", "on", "alice")
    config_store.set_secret(store, box, "staging", "API_KEY", "one", "alice")
    first = config_store.snapshot(store, "staging", "web", SERVICE)
    assert first == {"values": {"FEATURE_FLAG": "on"},
                     "secrets": {"API_KEY": {"environment": "staging", "version": 1}}}
    assert config_store.snapshot(store, "staging", "web", SERVICE) == first  # nothing changed: same release
    config_store.set_config(store, "staging", "FEATURE_FLAG", "off", "alice")
    second = config_store.snapshot(store, "staging", "web", SERVICE)
    config_store.set_secret(store, box, "staging", "API_KEY", "two", "alice")
    third = config_store.snapshot(store, "staging", "web", SERVICE)
    digests = {content_digest(s) for s in (first, second, third)}
    assert len(digests) == 3
    assert len({_release(paths, s).id for s in (first, second, third)}) == 3
    # A service with no config and no secrets snapshots what releases always had: its ids do not move.
    assert config_store.snapshot(store, "staging", "web", ServiceSpec(command=["x"])) == {"values": {}}


def test_snapshot_refuses_missing_keys_naming_the_command(store: Store, paths: StatePaths) -> None:
    with pytest.raises(UserInputError) as raised:
        config_store.snapshot(store, "production", "web", SERVICE)
    assert raised.value.exit_code == 2
    assert raised.value.details == [
        "config FEATURE_FLAG has no value in production: ingot config set FEATURE_FLAG VALUE --env production",
        "secret API_KEY has no value in production: ingot secret set API_KEY --env production",
    ]


def test_a_removed_secret_blocks_new_releases_but_old_ones_keep_their_version(store: Store,
                                                                              paths: StatePaths) -> None:
    box = load_box(paths.keys, create=True)
    config_store.set_config(store, "staging", "FEATURE_FLAG", "on", "alice")
    config_store.set_secret(store, box, "staging", "API_KEY", "old-value", "alice")
    old = _release(paths, config_store.snapshot(store, "staging", "web", SERVICE))
    config_store.remove_secret(store, "staging", "API_KEY", "bob")
    with pytest.raises(UserInputError, match="was removed from staging"):
        config_store.snapshot(store, "staging", "web", SERVICE)
    assert config_store.secret_values(store, paths.keys, old, "staging") == {"API_KEY": "old-value"}
    # A release made with staging's secrets never runs with them elsewhere.
    with pytest.raises(UserInputError, match="made with the secrets of staging"):
        config_store.secret_values(store, paths.keys, old, "production")


# ---- drift evidence ------------------------------------------------------------------------------
def test_drift_evidence_names_a_changed_secret_without_its_values(store: Store, paths: StatePaths,
                                                                  tmp_path: Path) -> None:
    box = load_box(paths.keys, create=True)
    config_store.set_config(store, "staging", "FEATURE_FLAG", "on", "alice")
    config_store.set_secret(store, box, "staging", "API_KEY", "expected-secret-value", "alice")
    release = _release(paths, config_store.snapshot(store, "staging", "web", SERVICE))
    # A real process whose environment differs from its release: the secret and the config value.
    env = {"PATH": os.environ["PATH"], "FEATURE_FLAG": "off", "API_KEY": "actual-secret-value",
           "INGOT_RELEASE": release.id, "INGOT_INSTANCE": "web-1"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env, cwd=tmp_path)
    try:
        row = InstanceRow("web-1", "staging", "web", release.id, "process", proc.pid, None, "127.0.0.1", 1,
                          str(tmp_path / "log"), time.time(), None, "running")
        artifacts = ArtifactStore(paths.artifacts)
        executor = Executor(store, Runtimes(), artifacts, paths)
        healer = Healer(store, Runtimes(), artifacts, executor, {}, lambda _key: asyncio.Lock())
        differences = {name: (expected, actual) for name, expected, actual in healer._facts(row, release)["env_diff"]}
    finally:
        proc.kill()
        proc.wait()
    assert differences["FEATURE_FLAG"] == ("on", "off")
    assert differences["API_KEY"] == (SECRET_MASK, SECRET_DIFFERS)
    assert "secret-value" not in repr(differences)
