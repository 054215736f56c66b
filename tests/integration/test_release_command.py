"""release_command (a migration run once per new release, before any of its instances starts), irreversible
releases, and `ingot run` (a command in a one-off instance of the live release), on the process runtime."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot.runtimes.process import _is_zombie, process_environment
from tests.support.harness import ExampleProject, load, make_example, poll, processes_of, stop_everything
from tests.support.pty_session import ingot_on_pty

# The migration the release runs: a table for v1, a NOT NULL column that v2's code reads; "bad" fails.
MIGRATE = '''\
import os, sqlite3, sys
from app import VERSION
print("migrating to", VERSION, "as uid", os.getuid(), flush=True)
if VERSION == "bad":
    print("boom: cannot migrate", flush=True)
    sys.exit(3)
if VERSION == "slow":
    import time; time.sleep(60)
db = sqlite3.connect(os.environ["DB_PATH"])
db.execute("CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY)")
if VERSION != "1" and "note" not in [r[1] for r in db.execute("PRAGMA table_info(visits)")]:
    db.execute("ALTER TABLE visits ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'")
db.commit()
print("migrated", flush=True)
'''

# v1 reads the table; v2 needs the column (a 500 without it, as an unmigrated deploy would serve).
READS = '''\
    def _db_check(self) -> bool:
        import sqlite3
        try:
            db = sqlite3.connect(os.environ["DB_PATH"])
            db.execute("SELECT note FROM visits" if VERSION == "2" else "SELECT id FROM visits").fetchall()
            db.close()
            return True
        except sqlite3.Error as exc:
            self._send(500, f"{exc}\\n".encode(), "text/plain")
            return False

    def do_GET(self) -> None:
        if self.path != "/healthz" and not self._db_check():
            return
'''


@pytest.fixture
def migrating(tmp_path: Path) -> Iterator[ExampleProject]:
    # The database lives where the instances' own user can write it (tmp_path is root's alone).
    shared = Path(tempfile.mkdtemp(prefix="ingot-test-db-", dir="/tmp"))
    shared.chmod(0o1777)
    example = make_example(tmp_path, extra_service_yaml="\n    release_command: [python, migrate.py]\n"
                                                        "    release_command_timeout: 5s")
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("env: {GREETING: hello}",
                                             f"env: {{GREETING: hello, DB_PATH: {shared}/app.db}}"))
    (example.root / "migrate.py").write_text(MIGRATE)
    app = example.root / "app.py"
    app.write_text(app.read_text().replace("    def do_GET(self) -> None:\n", READS, 1))
    yield example
    stop_everything(example)
    shutil.rmtree(shared, ignore_errors=True)


def entries(example: ExampleProject, *actions: str) -> list[dict[str, Any]]:
    """Ledger entries with one of `actions`, read from the store (the CLI's start-up costs seconds here)."""
    marks = ",".join("?" * len(actions))
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as db:
        rows = db.execute(f"SELECT actor, action, subject, payload_json FROM ledger WHERE action IN ({marks}) "
                          "ORDER BY seq", actions).fetchall()
    return [{"actor": a, "action": b, "subject": c, "payload": json.loads(p)} for a, b, c, p in rows]


def processes_of_instance(instance: str) -> list[int]:
    """The pids whose environment says they are `instance` (a one-off carries no INGOT_STATE)."""
    found = []
    for entry in Path("/proc").iterdir():
        env = process_environment(int(entry.name)) if entry.name.isdigit() else None
        if env is not None and env.get("INGOT_INSTANCE") == instance and not _is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return found


def instances(example: ExampleProject) -> set[tuple[str, str, int]]:
    """The service's live instances (id, release, pid), from the store."""
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as db:
        return set(db.execute("SELECT id, release_id, pid FROM instances WHERE state = 'running'").fetchall())


def test_a_migration_runs_once_before_the_code_that_needs_it_with_no_failed_request(
        migrating: ExampleProject, tmp_path: Path) -> None:
    first = migrating.ingot("deploy", check=True)
    assert "| migrating to 1" in first.out and "| migrated" in first.out, first.out
    v1 = migrating.get()["release"]
    migrating.set_version("2")
    with load(migrating.url, tmp_path) as during:
        # Marked not safe to roll back past (a dropped column, say), by the deploy's flag.
        second = migrating.ingot("deploy", "--irreversible", check=True)
    assert during["failures"] == [], during["failures"][:5]
    assert int(during["requests"]) > 50 and set(during["versions"]) >= {"2"}
    v2 = migrating.get()["release"]
    assert v2 != v1 and migrating.get()["version"] == "2"
    # Its output was streamed into the deploy's, as the instances' own user (not root), and is kept.
    assert "| migrating to 2 as uid" in second.out and "as uid 0" not in second.out
    ran = entries(migrating, "release_command.succeeded")
    assert [e["subject"] for e in ran] == [v1, v2]
    assert ran[1]["payload"]["exit_code"] == 0 and "migrated" in ran[1]["payload"]["tail"]
    assert Path(ran[1]["payload"]["log_path"]).read_text().count("migrating to 2") == 1
    # It ran before any instance of the new release started: the plan's first step, recorded so.
    [start] = [e for e in entries(migrating, "deploy.start") if e["payload"]["to"] == v2]
    kinds = [s["kind"] for s in start["payload"]["plan"]["steps"]]
    assert kinds[0] == "release_command" and kinds.index("start") == 1
    # Going back past it is refused, saying which release and why, unless forced (recorded).
    refused = migrating.ingot("rollback")
    assert refused.code == 2, refused.out + refused.err
    assert f"past irreversible release {v2}" in refused.err and "deployed with --irreversible" in refused.err
    assert "--force" in refused.err and migrating.get()["release"] == v2
    # A rollback reuses v1, whose migration already ran: not run again (unless asked).
    back = migrating.ingot("rollback", "--force", check=True)
    assert "migrating" not in back.out and migrating.get()["release"] == v1
    [forced] = entries(migrating, "rollback.forced")
    assert forced["subject"] == v1 and forced["payload"]["past_irreversible"] == [v2]
    assert forced["actor"] == "tester@ci"
    assert len(entries(migrating, "release_command.succeeded")) == 2
    again = migrating.ingot("rollback", "--to", v2, "--rerun-release-command", check=True)
    assert "| migrating to 2" in again.out and migrating.get()["release"] == v2
    assert [e["subject"] for e in entries(migrating, "release_command.succeeded")] == [v1, v2, v2]


def test_a_failing_or_hung_release_command_fails_the_deploy_and_the_previous_release_keeps_serving(
        migrating: ExampleProject, tmp_path: Path) -> None:
    migrating.ingot("deploy", check=True)
    old = migrating.get()["release"]
    before = instances(migrating)
    migrating.set_version("bad")
    with load(migrating.url, tmp_path) as during:
        failed = migrating.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "release command `python migrate.py`" in failed.err and "exited with code 3" in failed.err
    assert "| boom: cannot migrate" in failed.err and f"still serving: release {old}" in failed.err
    assert "Traceback" not in failed.err
    assert during["failures"] == [] and migrating.get()["release"] == old
    assert instances(migrating) == before  # nothing of the new release ever started
    [bad] = entries(migrating, "release_command.failed")
    assert bad["payload"]["exit_code"] == 3 and "boom: cannot migrate" in bad["payload"]["tail"]
    [fail] = entries(migrating, "deploy.fail")
    assert "exited with code 3" in fail["payload"]["error"] and fail["payload"]["release"] == bad["subject"]
    with contextlib.closing(sqlite3.connect(migrating.state / "state.db")) as db:
        started = db.execute("SELECT count(*) FROM instances WHERE release_id = ?", (bad["subject"],)).fetchone()
    assert started == (0,)
    # Past its deadline (release_command_timeout: 5s) it is stopped, and the deploy fails the same way.
    migrating.set_version("slow")
    slow = migrating.ingot("deploy", timeout=60)
    assert slow.code == 1 and "did not finish within release_command_timeout 5s" in slow.err, slow.err
    assert migrating.get()["release"] == old and instances(migrating) == before
    timed_out = entries(migrating, "release_command.failed")[-1]["payload"]
    assert timed_out["timed_out"] is True and timed_out["exit_code"] is None


def test_an_abort_stops_a_running_release_command_and_starts_nothing(migrating: ExampleProject) -> None:
    migrating.ingot("deploy", check=True)
    old, before = migrating.get()["release"], instances(migrating)
    migrating.set_version("slow")  # it would run 60 s
    spec = migrating.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("release_command_timeout: 5s", "release_command_timeout: 50s"))
    deploy = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=migrating.root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said: list[str] = []

    def read() -> None:  # line by line, as they come (list.extend would show them only at the end)
        for line in deploy.stdout or ():
            said.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    poll(lambda: any("migrating to slow" in line for line in said), timeout=30, what="the migration to start")
    assert "aborted the rollout of web" in migrating.ingot("abort", check=True).out
    _, err = deploy.communicate(timeout=30)
    # Stopped by the abort, not by its deadline: the ledger says which.
    assert deploy.returncode == 1 and "aborted by" in err, err
    [stopped] = entries(migrating, "release_command.failed")
    assert stopped["payload"]["aborted"].startswith("aborted by") and stopped["payload"]["timed_out"] is False
    assert migrating.get()["release"] == old and instances(migrating) == before
    assert not [cmd for _, cmd in processes_of(migrating.state) if "migrate.py" in cmd]
    assert migrating.ingot("history", "--json", check=True).json[0]["outcome"] == "aborted"


def test_ingot_run_runs_a_command_in_a_fresh_instance_of_the_live_release(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    live = example.get()["release"]
    before = instances(example)
    script = ("import os, sys; print(os.environ['GREETING'], os.environ['INGOT_RELEASE'], os.getuid()); "
              "sys.stdout.flush(); sys.exit(7)")
    ran = example.ingot("run", "web", "--", "python", "-c", script)
    assert ran.code == 7, ran.out + ran.err
    greeting, release, uid = ran.out.split()
    assert (greeting, release) == ("hello", live)
    if os.geteuid() == 0:
        assert uid != "0"  # the service's own unprivileged user, as its instances
    finish = entries(example, "run.finish")[-1]
    assert finish["payload"]["exit_code"] == 7 and finish["payload"]["command"][:2] == ["python", "-c"]
    assert finish["actor"] == "tester@ci" and finish["subject"] == live
    assert instances(example) == before and example.get()["release"] == live
    for _id, _release, pid in before:
        os.kill(pid, 0)  # still running, untouched
    # A release given by a prefix of its id.
    given = example.ingot("run", "web", "--release", live[:8], "--", "python", "-c",
                          "import os; print(os.environ['INGOT_RELEASE'])")
    assert given.code == 0 and given.out.strip() == live, given.out + given.err
    missing = example.ingot("run", "web")
    assert missing.code == 2 and "needs a command" in missing.err
    assert not any("-run-" in row[0] for row in instances(example))  # a one-off is not one of the service's
    # On a terminal the command has it (the caller's own, inherited), with its size, and its exit code comes back.
    session = ingot_on_pty(example, "run", "web", "--", "python", "-c",
                           "import os, sys; print('tty', os.ttyname(0), *os.get_terminal_size(0)); sys.exit(3)",
                           rows=29, columns=91)
    try:
        assert session.wait() == 3, session.text
        assert "tty /dev/pts/" in session.text and " 91 29" in session.text, session.text
    finally:
        session.close()
    # Detached: it runs on after `ingot run` returns, `ingot status` lists it, `ingot down` stops it.
    started = example.ingot("run", "web", "--detach", "--json", "--", "python", "-c",
                            "import time; time.sleep(300)", check=True).json
    one = started["instance"]
    [pid] = processes_of_instance(one)
    [listed] = example.ingot("status", "--json", check=True).json["one_offs"]
    assert (listed["id"], listed["pid"], listed["runtime"]) == (one, pid, "process")
    example.ingot("down", check=True)
    assert processes_of_instance(one) == []
    [finished] = [e for e in entries(example, "run.finish") if e["payload"]["instance"] == one]
    assert finished["payload"]["stopped_by"] == "down"
    assert example.ingot("status", "--json", check=True).json["one_offs"] == []
