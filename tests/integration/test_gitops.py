"""`ingot watch`: each new commit of a branch is deployed; bad commits are not, and a manual rollback pins."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot.ledger import entries
from ingot.store import Store
from tests.support.harness import ExampleProject, poll

GIT_ENV = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}
WATCH = ("--branch", "main", "--env", "staging")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT_ENV}, timeout=60)
    return done.stdout.strip()


def commit(example: ExampleProject, message: str) -> str:
    git(example.root, "add", "-A")
    git(example.root, "commit", "--quiet", "-m", message)
    return git(example.root, "rev-parse", "HEAD")


@pytest.fixture
def repo(example: ExampleProject) -> ExampleProject:
    """The example as a git repository with one commit on main; ingot's state (./.ingot) is not in it."""
    (example.root / ".gitignore").write_text(".ingot/\n__pycache__/\n")
    git(example.root, "init", "--quiet", "-b", "main")
    commit(example, "version 1")
    return example


def ledger(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    """Read straight from the store: the work tree's spec may be the broken one under test."""
    store = Store(example.state)
    try:
        return [e.as_dict() for e in entries(store, actions=(action,))]
    finally:
        store.close()


def version(example: ExampleProject) -> str | None:
    with contextlib.suppress(Exception):
        return str(example.get()["version"])
    return None


@contextlib.contextmanager
def watching(example: ExampleProject, tmp_path: Path) -> Iterator[Path]:
    """`ingot watch` running in the background for the block; yields the file its output goes to.
    On leaving, SIGTERM must stop it cleanly (exit 0)."""
    output = tmp_path / f"watch-{os.urandom(3).hex()}.out"
    with open(output, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ingot", "watch", ".", *WATCH, "--interval", "200ms"],
                                cwd=example.root, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "INGOT_ACTOR": "watcher@ci", "COLUMNS": "200"})
    try:
        poll(lambda: "watching main of" in output.read_text(), timeout=30, what="the watcher to start")
        yield output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, output.read_text()
        assert "SIGTERM: stopping after the poll under way" in output.read_text()
        assert "stopped watching" in output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_watch_once_deploys_each_new_commit_and_records_it(repo: ExampleProject, form: str) -> None:
    source = str(repo.root) if form == "path" else repo.root.as_uri()
    first = git(repo.root, "rev-parse", "HEAD")
    result = repo.ingot("watch", source, *WATCH, "--once", check=True)
    answer = repo.get()
    assert answer["version"] == "1"
    assert f"{first[:10]}: web: release {answer['release']} is live at {repo.url}" in result.out
    history = repo.ingot("history", "--json", check=True).json
    assert history[0]["release"] == answer["release"] and history[0]["commit"] == first

    repo.set_version("2")
    second = commit(repo, "version 2")
    repo.ingot("watch", source, *WATCH, "--once", check=True)
    answer = repo.get()
    assert answer["version"] == "2"
    history = repo.ingot("history", "--json", check=True).json
    assert history[0]["release"] == answer["release"] and history[0]["commit"] == second

    # Nothing new on the branch: nothing is done.
    again = repo.ingot("watch", source, *WATCH, "--once", check=True)
    assert f"{second[:10]} is applied to staging" in again.out
    assert len(repo.ingot("history", "--json", check=True).json) == 2
    assert [e["subject"] for e in ledger(repo, "watch.deploy")] == [first, second]
    # Every commit deployed into the one state directory, none beside its checkout.
    checkouts = list((repo.state / "gitops").glob("*/checkouts/*"))
    assert checkouts and not [p for c in checkouts for p in c.glob(".ingot")]


def test_bad_commits_leave_the_previous_release_serving_and_are_not_retried(repo: ExampleProject,
                                                                           tmp_path: Path) -> None:
    spec, app = repo.root / "ingot.yaml", repo.root / "app.py"
    good_spec, good_app = spec.read_text(), app.read_text()
    with watching(repo, tmp_path) as output:
        poll(lambda: version(repo) == "1", timeout=90, what="version 1 to go live")
        live = repo.get()["release"]

        # A spec error: reported with the file, line and key; nothing is built or deployed.
        spec.write_text(good_spec.replace("replicas: 2", "replicas: many"))
        bad_spec = commit(repo, "a spec error")
        failure = poll(lambda: [e for e in ledger(repo, "watch.fail") if e["subject"] == bad_spec], timeout=60,
                       what="the spec error in the ledger")[0]
        assert failure["payload"]["phase"] == "spec" and failure["payload"]["commit"] == bad_spec
        assert any(line.startswith("ingot.yaml:8: services.web.replicas") for line in failure["payload"]["details"])
        assert failure["payload"]["serving"] == {"web": live}
        poll(lambda: f"{bad_spec[:10]}: FAILED at spec" in output.read_text(), what="the failure line")
        assert repo.get()["release"] == live

        # An app that fails its health gate: the previous release keeps serving.
        spec.write_text(good_spec.replace("deadline: 30s", "deadline: 3s"))
        app.write_text(good_app.replace('self._send(200, b"ok\\n", "text/plain")',
                                        'self._send(503, b"broken\\n", "text/plain")'))
        repo.set_version("3")
        unhealthy = commit(repo, "an app that never gets healthy")
        failure = poll(lambda: [e for e in ledger(repo, "watch.fail") if e["subject"] == unhealthy], timeout=90,
                       what="the failed health gate in the ledger")[0]
        assert failure["payload"]["phase"] == "deploy" and failure["payload"]["serving"] == {"web": live}
        assert len(failure["payload"]["deployments"]) == 1
        assert repo.get()["release"] == live
        poll(lambda: f"{unhealthy[:10]}: FAILED at deploy" in output.read_text(), what="the failure line")
        assert f"staging still serves: web release {live}" in output.read_text()

        # The next good commit goes live.
        spec.write_text(good_spec)
        app.write_text(good_app)
        repo.set_version("4")
        fixed = commit(repo, "fixed")
        poll(lambda: version(repo) == "4", timeout=90, what="version 4 to go live")
        poll(lambda: [e["subject"] for e in ledger(repo, "watch.deploy")][-1:] == [fixed], what="its record")
    # Each bad commit was tried once, however many polls saw it.
    assert [e["subject"] for e in ledger(repo, "watch.fail")] == [bad_spec, unhealthy]
    history = repo.ingot("history", "--json", check=True).json
    assert [(h["commit"], h["outcome"]) for h in history[:2]] == [(fixed, "succeeded"), (unhealthy, "failed")]


def test_a_manual_rollback_pins_until_a_newer_commit_or_unpin(repo: ExampleProject, tmp_path: Path) -> None:
    first = git(repo.root, "rev-parse", "HEAD")
    with watching(repo, tmp_path) as output:
        poll(lambda: version(repo) == "1", timeout=90, what="version 1 to go live")
        repo.set_version("2")
        second = commit(repo, "version 2")
        poll(lambda: [e["subject"] for e in ledger(repo, "watch.deploy")] == [first, second], timeout=90,
             what="version 2 deployed")
        assert version(repo) == "2"

        # The operator rolls back: the watcher does not deploy version 2 again.
        repo.ingot("rollback", check=True)
        poll(lambda: "staging is pinned by a rollback to release" in output.read_text(), what="the pin")
        assert "by tester@ci" in output.read_text()
        assert version(repo) == "1"
        assert len(repo.ingot("history", "--json", check=True).json) == 3  # two deploys, the rollback

        # A newer commit ends the pin.
        repo.set_version("3")
        third = commit(repo, "version 3")
        poll(lambda: [e["subject"] for e in ledger(repo, "watch.deploy")][-1:] == [third], timeout=90,
             what="version 3 deployed")
        assert version(repo) == "3"
        assert "(this ends the pin of a rollback" in output.read_text()

        # Pinned again by another rollback; `ingot unpin` gives staging back to the watcher.
        repo.ingot("rollback", check=True)
        assert version(repo) == "1"  # what was live before version 3
        poll(lambda: output.read_text().count("staging is pinned by a rollback") == 2, what="the second pin")
        unpinned = repo.ingot("unpin", "--env", "staging", check=True)
        assert "staging: unpinned (a rollback to release" in unpinned.out
        poll(lambda: version(repo) == "3", timeout=90, what="version 3 live again")
        assert f"{third[:10]}: staging was unpinned: applying the head of main again" in output.read_text()
    unpin = ledger(repo, "unpin")
    assert len(unpin) == 1 and unpin[0]["actor"] == "tester@ci" and unpin[0]["subject"] == third
    nothing = repo.ingot("unpin", "--env", "staging")
    assert nothing.code == 2 and "staging is not pinned" in nothing.err


def test_a_bad_repository_or_branch_is_bad_input(repo: ExampleProject, tmp_path: Path) -> None:
    cases = [
        ((str(tmp_path / "nowhere"), *WATCH), "no such directory"),
        ((str(repo.root), "--branch", "nope", "--env", "staging"), "branch 'nope' is not in"),
        ((f"file://{tmp_path}/nowhere", *WATCH), f"cannot watch main of file://{tmp_path}/nowhere"),
        ((str(tmp_path), *WATCH), "does not appear to be a git repository"),
        ((str(repo.root), "--branch", "main"), "--env is required"),
        ((str(repo.root), *WATCH, "--interval", "soon"), "--interval soon"),
    ]
    for args, expected in cases:
        result = repo.ingot("watch", *args, "--once")
        assert result.code == 2, (args, result)
        assert expected in result.err, (args, result.err)
        assert "Traceback" not in result.out + result.err
    assert not (repo.state / "gitops").exists()  # nothing left behind
    assert repo.ingot("unpin", "--env", "staging").code == 2
