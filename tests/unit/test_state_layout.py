"""State per project: `.ingot/<project>/`, and which project a state of the older shared layout belongs to."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from ingot.errors import UserInputError
from ingot.state_layout import legacy_owner, project_state, states_in
from ingot.store import Store


def legacy(tmp_path: Path, releases: list[tuple[str, str]], live: list[str]) -> Path:
    """A state in the older layout (`.ingot/` itself) with releases (id, project) and live ones, in order."""
    base = tmp_path / ".ingot"
    store = Store(base)
    with store.begin() as conn:
        for number, (release, project) in enumerate(releases):
            conn.execute(text(
                "INSERT INTO releases (id, project, service, artifact_digest, config_digest, spec_digest, spec_json, "
                "config_json, created_at, created_by, public_key, signature) VALUES (:id, :project, 'web', 'a', 'c', "
                "'s', '{}', '{}', :at, 'me', 'k', 'sig')"), {"id": release, "project": project, "at": float(number)})
        for number, release in enumerate(live):
            conn.execute(text("INSERT INTO activations (environment, service, release_id, deployment_id, "
                              "params_json, at) VALUES ('staging', 'web', :r, NULL, '{}', :at)"),
                         {"r": release, "at": float(number)})
    store.close()
    (base / "keys").mkdir()
    (base / "keys" / "signing.key").write_text("secret")
    return base


def test_a_fresh_directory_gives_each_project_its_own_state(tmp_path: Path) -> None:
    assert project_state(tmp_path, "hello").paths.root == tmp_path / ".ingot" / "hello"
    assert project_state(tmp_path, "other").paths.root == tmp_path / ".ingot" / "other"
    assert not (tmp_path / ".ingot").exists()  # resolving makes nothing


def test_the_owner_is_the_project_whose_release_went_live_last(tmp_path: Path) -> None:
    # Two projects shared it (the bug): the one whose release runs there now owns it, history and all.
    base = legacy(tmp_path, [("r1", "hello"), ("r2", "hello-container"), ("r3", "hello")], ["r1", "r2"])
    assert legacy_owner(base) == "hello-container"
    never_live = legacy(tmp_path / "b", [("r1", "hello"), ("r2", "other")], [])
    assert legacy_owner(never_live) == "other"  # nothing went live: the newest release's project


def test_the_owner_moves_it_into_its_own_directory_once_idle_and_others_never_touch_it(tmp_path: Path) -> None:
    base = legacy(tmp_path, [("r1", "hello")], ["r1"])
    other = project_state(tmp_path, "other")
    assert other.paths.root == base / "other" and other.moved_from is None
    assert (base / "state.db").exists()
    mine = project_state(tmp_path, "hello")
    assert mine.paths.root == base / "hello" and mine.moved_from == base and not mine.claimed
    assert not (base / "state.db").exists() and (base / "hello" / "keys" / "signing.key").read_text() == "secret"
    store = Store(mine.paths.root)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT project FROM releases")).scalars().all() == ["hello"]
    store.close()
    assert project_state(tmp_path, "hello").moved_from is None  # once only
    assert states_in(tmp_path) == [base / "hello"]


def test_a_running_agent_keeps_the_legacy_state_in_place(tmp_path: Path) -> None:
    base = legacy(tmp_path, [("r1", "hello")], ["r1"])
    fd = os.open(base / "agent.pid", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running agent holds it
    try:
        assert project_state(tmp_path, "hello").paths.root == base
        assert (base / "state.db").exists()
    finally:
        os.close(fd)


def test_running_instances_keep_it_in_place(tmp_path: Path) -> None:
    base = legacy(tmp_path, [("r1", "hello")], ["r1"])
    store = Store(base)
    with store.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, environment, service, release_id, runtime, pid, host, port, "
                          "log_path, started_at, state) VALUES ('i1', 'staging', 'web', 'r1', 'process', 1, "
                          "'127.0.0.1', 1, 'x', 0, 'running')"))
    store.close()
    assert project_state(tmp_path, "hello").paths.root == base


def test_an_unclaimed_legacy_state_goes_to_the_first_project_that_opens_it(tmp_path: Path) -> None:
    base = legacy(tmp_path, [], [])  # only keys, config or secrets: nothing names a project
    assert legacy_owner(base) is None
    first = project_state(tmp_path, "hello")
    assert first.paths.root == base / "hello" and first.claimed
    assert (base / "hello" / "project").read_text().strip() == "hello"
    assert project_state(tmp_path, "other").paths.root == base / "other"


def test_a_move_interrupted_halfway_is_finished_by_the_next_command(tmp_path: Path) -> None:
    base = legacy(tmp_path, [("r1", "hello")], ["r1"])
    staging = base / ".moving-hello"
    staging.mkdir()
    os.rename(base / "keys", staging / "keys")  # it stopped after moving the keys, before the database
    resolved = project_state(tmp_path, "hello")
    assert resolved.paths.root == base / "hello" and resolved.moved_from == base
    assert (base / "hello" / "state.db").exists() and (base / "hello" / "keys" / "signing.key").exists()
    assert not staging.exists() and not (base / "state.db").exists()


def test_a_project_named_like_a_part_of_the_legacy_layout_is_refused_until_it_moves(tmp_path: Path) -> None:
    legacy(tmp_path, [("r1", "hello")], ["r1"])
    with pytest.raises(UserInputError, match="older layout"):
        project_state(tmp_path, "keys")
