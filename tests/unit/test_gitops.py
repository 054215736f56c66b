"""GitOps without deploying: the mirror and its checkouts, repository sources, and pins derived from the ledger."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ingot import gitops, ledger
from ingot.errors import UserInputError
from ingot.paths import StatePaths
from ingot.store import Store

GIT_ENV = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def test_each_commit_is_checked_out_exactly_into_a_fresh_directory(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    git(source, "init", "--quiet", "-b", "main")
    (source / "app.py").write_text("v1\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    git(source, "add", "-A")
    git(source, "commit", "--quiet", "-m", "one")
    first = git(source, "rev-parse", "HEAD")
    (source / "untracked.txt").write_text("not committed\n")

    mirror = gitops.Mirror.for_url(StatePaths(tmp_path / "state"), str(source))
    mirror.probe("main")
    assert mirror.fetch("main") == first
    checkout = mirror.checkout(first)
    assert sorted(p.name for p in checkout.iterdir()) == ["app.py", "run.sh"]  # no .git, nothing uncommitted
    assert os.access(checkout / "run.sh", os.X_OK)

    (source / "app.py").write_text("v2\n")
    git(source, "commit", "--quiet", "-am", "two")
    second = mirror.fetch("main")
    assert second == git(source, "rev-parse", "HEAD") != first
    assert (mirror.checkout(second) / "app.py").read_text() == "v2\n"
    assert (mirror.checkout(first) / "app.py").read_text() == "v1\n"  # made afresh, not reused

    with pytest.raises(gitops.GitFailure, match="branch 'nope' is not in"):
        mirror.probe("nope")
    with pytest.raises(gitops.GitFailure, match="branch 'nope' is not in"):
        mirror.fetch("nope")


def test_repository_sources_and_arguments(tmp_path: Path) -> None:
    assert gitops.source_url("https://example.org/a.git", tmp_path) == "https://example.org/a.git"
    assert gitops.source_url("git@example.org:team/a.git", tmp_path) == "git@example.org:team/a.git"
    (tmp_path / "repo").mkdir()
    assert gitops.source_url("repo", tmp_path) == str(tmp_path / "repo")
    for bad in ("missing", "--upload-pack=evil", ""):
        with pytest.raises(UserInputError):
            gitops.source_url(bad, tmp_path)
    with pytest.raises(UserInputError, match="not a valid branch name"):
        gitops.check_branch("a..b")
    for bad in ("/etc/ingot.yaml", "../ingot.yaml", ""):
        with pytest.raises(UserInputError, match="--path"):
            gitops.check_spec_path(bad)
    assert gitops.check_spec_path("deploy/ingot.yaml") == "deploy/ingot.yaml"


def test_pins_are_derived_from_the_ledger(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def record(action: str, actor: str = "alice", subject: str | None = None, **payload: object) -> None:
        ledger.record(store, actor=actor, action=action, environment="staging", subject=subject, payload=payload)

    assert gitops.find_pin(store, "staging") is None
    with pytest.raises(UserInputError, match="staging is not watched"):
        gitops.unpin(store, "staging", "alice")

    # The watcher's own deployment comes before its record of the commit: not a pin.
    record("deploy.start", actor="watcher", subject="dep1", to="rel1")
    record("watch.deploy", actor="watcher", subject="c1")
    assert gitops.find_pin(store, "staging") is None
    record("deploy.finish", actor="watcher", subject="dep1")
    record("recover.start", actor="agent", subject="dep2")  # the agent's own repairs do not pin either
    with pytest.raises(UserInputError, match="staging is not pinned"):
        gitops.unpin(store, "staging", "alice")

    record("rollback.start", subject="dep3", to="rel0")
    pin = gitops.find_pin(store, "staging")
    assert pin is not None and pin.commit == "c1" and pin.release == "rel0" and pin.actor == "alice"
    assert pin.describe().startswith("a rollback to release rel0 by alice at ")
    assert gitops.find_pin(store, "production") is None

    assert gitops.unpin(store, "staging", "bob") == pin
    assert gitops.find_pin(store, "staging") is None
    record("down", actor="carol")
    pin = gitops.find_pin(store, "staging")
    assert pin is not None and pin.describe().startswith("ingot down by carol")

    # The watcher's next attempt (a newer commit, deployed or failed) ends the pin.
    record("watch.fail", actor="watcher", subject="c2", error="bad spec")
    assert gitops.find_pin(store, "staging") is None
    store.close()


def test_a_failed_verification_window_is_recorded_as_the_commits_failure(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    git(source, "init", "--quiet", "-b", "main")
    (source / "ingot.yaml").write_text("project: x\n")
    git(source, "add", "-A")
    git(source, "commit", "--quiet", "-m", "one")
    head = git(source, "rev-parse", "HEAD")
    watcher = gitops.Watcher(str(source), "main", "staging", StatePaths(tmp_path / "state"), interval=0.1)
    store = watcher.store
    # What a deploy whose verification window was still open left: the watcher recorded it as deployed.
    with store.begin() as conn:
        dep = store.create_deployment(conn, environment="staging", service="web", kind="deploy", from_release="r0",
                                      to_release="r1", strategy="canary", params={}, actor="watcher")
    ledger.record(store, actor="watcher", action="watch.deploy", environment="staging", subject=head,
                  payload={"commit": head, "deployments": [dep.id], "verifying": [dep.id], "reason": "new commit"})
    assert watcher.poll_once().outcome == "unchanged"  # still verifying
    with store.begin() as conn:
        store.add_step(conn, dep.id, "finish", "failed",
                       {"outcome": "failed", "error": "error rate 0.5 > 0.01", "details": ["5xx: 50 of 100"]})
    result = watcher.poll_once()
    assert (result.outcome, result.phase, result.commit) == ("failed", "verification", head)
    assert result.message == f"verification of {head[:10]} failed: error rate 0.5 > 0.01"
    failure = ledger.last_entry(store, actions=("watch.fail",), environment="staging")
    assert failure is not None and failure.subject == head and failure.payload["details"] == ["5xx: 50 of 100"]
    # Recorded once; the commit is not tried again.
    assert watcher.poll_once().outcome == "unchanged"
    assert len(ledger.entries(store, actions=("watch.fail",))) == 1
    watcher.close()
