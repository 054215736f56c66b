"""A corrupt stored artifact is never reused from the build cache, `ingot audit verify` names what is damaged
(artifacts and the database), and `ingot down` works on a damaged database."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from tests.support.harness import ExampleProject, load, poll, processes_of


def stored_object(example: ExampleProject) -> Path:
    [digest] = [e["subject"] for e in example.ingot("audit", "log", "--json", check=True).json
                if e["action"] == "build"][-1:]
    return example.state / "artifacts" / "objects" / digest.removeprefix("sha256:")


def tamper(obj: Path) -> None:
    app = obj / "app.py"
    app.chmod(0o644)
    with open(app, "a") as out:
        out.write("# planted\n")


def test_a_corrupt_cached_artifact_is_rebuilt_never_reused(example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    release = example.get()["release"]
    obj = stored_object(example)
    digest = "sha256:" + obj.name
    tamper(obj)
    with load(example.url, tmp_path) as during:
        audit = example.ingot("audit", "verify")
        assert audit.code == 1
        assert f"DAMAGED: artifact {digest}" in audit.err and "modified: app.py" in audit.err, audit.err

        built = example.ingot("build", check=True)
        assert f"{digest} (built: the stored copy was damaged and has been replaced)" in built.out, built.out
        assert "modified: app.py" in built.out
        assert "# planted" not in (obj / "app.py").read_text()
        assert example.ingot("audit", "verify").code == 0

        # A deploy with nothing changed rebuilds a damaged cached copy too, then finds nothing to do.
        tamper(obj)
        deploy = example.ingot("deploy", check=True)
        assert "damaged and has been replaced" in deploy.out and "nothing changed" in deploy.out, deploy.out
        assert example.ingot("audit", "verify").code == 0

        again = example.ingot("build", "--rebuild", check=True)
        assert f"{digest} (built)" in again.out, again.out  # afresh, to the same digest
    assert during["failures"] == [] and int(during["requests"]) > 20
    assert example.get()["release"] == release
    builds = [e for e in example.ingot("audit", "log", "--json", check=True).json if e["action"] == "build"]
    assert sum(1 for e in builds if e["payload"].get("replaced_corrupt")) == 2


def _page_size_and_pages(db: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file first
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return size, db.stat().st_size // size


def _overwrite_page(db: Path, page: int, size: int) -> None:
    with open(db, "r+b") as out:
        out.seek((page - 1) * size)
        out.write(os.urandom(size))


def test_a_damaged_database_page_is_named_by_audit_verify_and_down_still_stops_everything(
        example: ExampleProject) -> None:
    example.env["INGOT_HEAL_INTERVAL"] = "0"  # nothing writes meanwhile
    example.ingot("deploy", check=True)
    assert len(processes_of(example.state)) >= 5  # the agent, two instances and their loggers
    db = example.state / "state.db"
    size, pages = _page_size_and_pages(db)
    _overwrite_page(db, pages // 2, size)  # a page in the middle of the file

    audit = example.ingot("audit", "verify")
    assert audit.code == 1 and "Traceback" not in audit.err
    assert f"DAMAGED: database {db}" in audit.err, audit.err

    down = example.ingot("down")
    assert down.code == 1 and "Traceback" not in down.err, down
    assert "stopped 2 instance(s)" in down.out, down
    assert "the state database is damaged" in down.err, down.err
    poll(lambda: not processes_of(example.state), timeout=20, what="nothing of the project left running")


def test_down_finds_instances_by_their_labels_when_their_records_are_unreadable(example: ExampleProject) -> None:
    example.env["INGOT_HEAL_INTERVAL"] = "0"
    example.ingot("deploy", check=True)
    db = example.state / "state.db"
    size, _pages = _page_size_and_pages(db)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        [root] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'instances'").fetchone()
    _overwrite_page(db, int(root), size)

    down = example.ingot("down")
    assert down.code == 1 and "Traceback" not in down.err, down
    assert "stopped 2 instance(s)" in down.out, down
    assert "the instance records could not be read" in down.err, down.err
    assert "looked for by their labels" in down.err
    poll(lambda: not processes_of(example.state), timeout=20, what="nothing of the project left running")
