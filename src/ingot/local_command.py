"""One bounded local command (a smoke check's, a hook's): its exit code, the end of its output, its time.

The command runs in a session of its own, so a timeout ends it and whatever it started in that session;
its output is kept only as its last part, so a chatty command cannot fill the ledger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT = 4000  # characters of output kept (its end: where a failure usually says why)


@dataclass(frozen=True)
class CommandResult:
    code: int | None  # None: it did not finish (timed out, or could not be started)
    output: str
    seconds: float
    timed_out: bool = False
    error: str | None = None  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self, timeout: float) -> str:
        if self.error is not None:
            return f"could not be started: {self.error}"
        if self.timed_out:
            return f"did not finish within {timeout:g}s (killed)"
        return f"exited {self.code}"


def tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """The last `limit` characters of `text`, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut]\n" + text[-limit:]


def run_command(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | str, timeout: float,
                preexec: Callable[[], None] | None = None) -> CommandResult:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=preexec)  # preexec: fence.preexec, safe with threads
    except (OSError, subprocess.SubprocessError) as exc:
        return CommandResult(None, "", round(time.monotonic() - started, 3), error=str(exc))
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # a process that left the session may still hold the pipe: do not wait for it long
            out, _ = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = b""
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it left running in its session goes with it
        proc.wait()
    text = tail(out.decode("utf-8", errors="replace"))
    return CommandResult(None if timed_out else proc.returncode, text, round(time.monotonic() - started, 3),
                         timed_out=timed_out)
