"""A queue worker for the tests: claims jobs from a sqlite queue in its volume, one at a time, atomically.

On SIGTERM it finishes the job in hand and exits 0, so that a deploy that stops it (SIGTERM, then SIGKILL
after stop_timeout) loses nothing. The first instance ever seeds $JOBS jobs; only those below the number in
`limit` in the volume are offered (the test feeds them, so that work goes on whatever ingot's pace).
Each start appends a line to `boots` in the volume, and writes `ready-<instance>` once it works (what the
health command looks for).
"""

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

volume = Path(os.environ["INGOT_VOLUME_QUEUE"])
instance = sys.argv[1]  # ${INGOT_INSTANCE}, expanded by ingot
version = os.environ.get("VERSION", "?")
stopping = False


def stop(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
with (volume / "boots").open("a") as boots:
    boots.write(f"{version} {instance}\n")
db = sqlite3.connect(volume / "queue.db", timeout=30, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL DEFAULT 'new')")
db.execute("CREATE TABLE IF NOT EXISTS done (job INTEGER NOT NULL, instance TEXT NOT NULL, version TEXT)")
if db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0:
    db.executemany("INSERT INTO jobs (id) VALUES (?)", [(i,) for i in range(int(os.environ.get("JOBS", "0")))])
db.execute("COMMIT")
(volume / f"ready-{instance}").write_text(version)
print(f"worker {instance} of version {version} ready", flush=True)



def limit() -> int:
    try:
        return int((volume / "limit").read_text() or 0)
    except (OSError, ValueError):
        return 0


while not stopping:
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT id FROM jobs WHERE state = 'new' AND id < ? ORDER BY id LIMIT 1", (limit(),)).fetchone()
    if row is None:
        db.execute("COMMIT")
        time.sleep(0.05)
        continue
    db.execute("UPDATE jobs SET state = 'taken' WHERE id = ?", row)
    db.execute("COMMIT")
    time.sleep(float(os.environ.get("JOB_SECONDS", "0.02")))  # the work; a SIGTERM now waits for it
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", row)
    db.execute("INSERT INTO done VALUES (?, ?, ?)", (row[0], instance, version))
    db.execute("COMMIT")
print(f"worker {instance} stopping after its job in hand", flush=True)
