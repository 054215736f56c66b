"""Rows written by someone who can write the database but holds no key: none of them makes ingot read a
file it should not, signal a process that is not an instance, or start another service's release."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingot.errors import OperationFailed
from ingot.paths import StatePaths
from ingot.release_trust import refuse_untrusted
from ingot.releases import new_release
from ingot.runtimes.process import ProcessRuntime, process_start_time
from ingot.signing import load_or_create_key, public_key_text
from ingot.store import InstanceRow, Store


def forged(pid: int | None, **changes: object) -> InstanceRow:
    values: dict[str, object] = dict(
        id="web-abcdef-123456", environment="staging", service="web", release_id="r" * 12, runtime="process",
        pid=pid, proc_start=process_start_time(pid) if pid else None, host="127.0.0.1", port=1,
        log_path="/nonexistent/logs/staging/web/web-abcdef-123456.log", started_at=time.time(), stopped_at=None,
        state="running")
    values.update(changes)
    return InstanceRow(**values)  # type: ignore[arg-type]


def test_a_log_path_that_is_not_an_instance_log_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "keys" / "release-signing.ed25519"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY MATERIAL\n")
    runtime = ProcessRuntime()
    for path in (secret, tmp_path / "logs" / "staging" / "web" / ".." / ".." / ".." / "keys" / secret.name,
                 tmp_path / "logs" / "staging" / "web" / "other-instance.log"):
        assert runtime.log_tail(forged(None, log_path=str(path)), 10) == [], path
    real = tmp_path / "logs" / "staging" / "web" / "web-abcdef-123456.log"
    real.parent.mkdir(parents=True)
    real.write_text("its own line\n")
    assert runtime.log_tail(forged(None, log_path=str(real)), 10) == ["its own line"]


def test_a_row_naming_pid_1_is_not_an_instance() -> None:
    seen = ProcessRuntime().observe(forged(1))
    assert not seen.alive and "not an instance" in seen.detail


def test_a_row_naming_a_process_that_is_no_instance_never_gets_it_signalled() -> None:
    # A group leader of someone else's (its start time is public): the row copies it exactly.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                             env={"PATH": os.environ.get("PATH", "")})
    try:
        row = forged(other.pid)
        assert row.proc_start is not None
        runtime = ProcessRuntime()  # a fresh one: the process is not its child, as after an agent restart
        seen = runtime.observe(row)
        if os.geteuid() == 0:
            assert not seen.alive and "not an instance" in seen.detail
            runtime.stop(row, 1.0)
            time.sleep(0.2)
            assert other.poll() is None  # still running: nothing was sent to it
        else:
            pytest.skip("not root: instances run as ingot's own user, so a uid cannot tell them apart")
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_a_process_carrying_another_instance_id_is_not_this_instance() -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                             env={"PATH": os.environ.get("PATH", ""), "INGOT_INSTANCE": "api-000000-999999"})
    try:
        seen = ProcessRuntime().observe(forged(other.pid))
        assert not seen.alive and "another instance" in seen.detail
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_a_signed_release_of_another_service_is_refused(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state", pin=tmp_path / "ingot.pub")
    paths.keys.mkdir(parents=True)
    key = load_or_create_key(paths.keys)
    paths.pin.write_text(public_key_text(key) + "\n")
    store = Store(paths.root)
    release = new_release(key=key, project="hello", service="api", artifact_digest="sha256:" + "a" * 64,
                          spec={"port": 8000}, config={}, actor="tester")
    refuse_untrusted(store, paths, "staging", "api", release)  # its own service: fine
    with pytest.raises(OperationFailed, match="release of service api, not of web"):
        refuse_untrusted(store, paths, "staging", "web", release)
