"""Following a process instance's log file: new complete lines only, across the logger's rotation (rename to
.1, a new file at the next write), a file not created yet, and what is left once told to stop."""

from __future__ import annotations

import threading
from pathlib import Path

from ingot.runtimes.process import ProcessRuntime
from ingot.store import InstanceRow
from tests.support.harness import poll


def row(tmp_path: Path) -> InstanceRow:
    log = tmp_path / "logs" / "staging" / "web" / "web-1.log"
    log.parent.mkdir(parents=True)
    return InstanceRow(id="web-1", environment="staging", service="web", release_id="r1", runtime="process",
                       pid=None, proc_start=None, host="127.0.0.1", port=1, log_path=str(log), started_at=0.0,
                       stopped_at=None, state="running", handle=None)


def test_follow_reads_the_tail_then_new_lines_across_a_rotation(tmp_path: Path) -> None:
    instance = row(tmp_path)
    log = Path(instance.log_path)
    log.write_text("old 1\nold 2\nold 3\n")
    stop = threading.Event()
    lines = ProcessRuntime().follow_log(instance, 2, stop)
    assert [next(lines), next(lines)] == ["old 2", "old 3"]
    with log.open("a") as handle:
        handle.write("new 1\nnew ")  # a line written in two writes shows once it is complete
        handle.flush()
        assert next(lines) == "new 1"
        handle.write("2\nbefore the rename\n")
    log.rename(log.with_name(log.name + ".1"))  # the logger's rotation
    log.write_text("after the rename\npartial")
    assert [next(lines) for _ in range(3)] == ["new 2", "before the rename", "after the rename"]
    stop.set()
    assert list(lines) == ["partial"]  # once stopped: what is left, then the end


def test_a_new_instance_is_followed_from_its_first_line_once_its_log_exists(tmp_path: Path) -> None:
    instance = row(tmp_path)
    stop = threading.Event()
    lines = ProcessRuntime().follow_log(instance, None, stop)
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.extend(lines))
    reader.start()
    Path(instance.log_path).write_text("listening\n")
    poll(lambda: found == ["listening"], timeout=5, what="the first line of a log made after following began")
    stop.set()
    reader.join(timeout=5)
    assert not reader.is_alive() and found == ["listening"]
