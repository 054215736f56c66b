"""A dead instance row is retired once and never repaired again (issue 9: one that never cleared made
self-heal copy the whole artifact to `.ingot/runs/` and write two ledger entries every 5 s, for ever)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.harness import ExampleProject, load, poll

SELF_HEAL = "ingot-agent/self-heal"


def passes(example: ExampleProject) -> int:
    return int(example.ingot("status", "--json", check=True).json["services"][0]["self_heal"]["passes"])


def about(example: ExampleProject, instance: str) -> list[dict[str, Any]]:
    entries = example.ingot("audit", "log", "--json", "--limit", "100000", check=True).json
    return [e for e in entries if e["subject"] == instance or instance in str(e["payload"])]


def test_a_dead_row_with_full_capacity_is_retired_once(example: ExampleProject, tmp_path: Path) -> None:
    example.env["INGOT_HEAL_INTERVAL"] = "0.5s"
    example.ingot("deploy", check=True)
    release = example.get()["release"]
    # A row of the live release whose process is long gone, beside the two that serve: capacity is full,
    # so there is nothing to replace, only something to retire.
    gone = subprocess.Popen(["true"])
    gone.wait()
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as conn:
        handle, log_path = conn.execute("SELECT handle, log_path FROM instances WHERE state = 'running'").fetchone()
        conn.execute("INSERT INTO instances (id, environment, service, release_id, runtime, pid, proc_start, host, "
                     "port, log_path, started_at, stopped_at, state, handle) VALUES ('web-dead01', 'staging', "
                     "'web', ?, 'process', ?, '1', '127.0.0.1', 1, ?, ?, NULL, 'running', ?)",
                     (release, gone.pid, log_path + ".dead", time.time(), handle))
        conn.commit()
    runs = example.runs
    with load(example.url, tmp_path) as during:
        poll(lambda: _state(example, "web-dead01") == "failed", timeout=30, what="the dead row to be retired")
        settled = about(example, "web-dead01")
        checkouts = sorted(p.name for p in runs.iterdir())
        start = passes(example)
        poll(lambda: passes(example) >= start + 6, timeout=60, interval=0.3, what="six more self-heal passes")
        assert about(example, "web-dead01") == settled  # nothing more about it: not found, not "repaired"
        assert sorted(p.name for p in runs.iterdir()) == checkouts == [Path(handle).name]
    assert during["failures"] == [] and int(during["requests"]) > 20
    actions = [e["action"] for e in settled]
    assert actions.count("drift.repair") == 1 and actions.count("drift.found") <= 1
    [repair] = [e for e in settled if e["action"] == "drift.repair"]
    assert repair["actor"] == SELF_HEAL and repair["payload"]["replaced"] == ["web-dead01"]
    assert repair["payload"]["started"] == []  # capacity was full: nothing started for it
    assert example.ingot("drift").code == 0


def _state(example: ExampleProject, instance: str) -> str:
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as conn:
        return str(conn.execute("SELECT state FROM instances WHERE id = ?", (instance,)).fetchone()[0])
