"""ingot's own supervision: keep a daemon (the agent, the edge) running where no systemd does it.

`python -m ingot.supervision --pidfile P -- CMD...` runs CMD as its child and starts it again whenever
it dies, unless it ended on purpose. It is what `ingot` starts in the background on demand;
`ingot install` writes systemd units that do the same job (`Restart=on-failure`) where systemd runs.

Rules, kept small on purpose (a supervisor that can fail is no supervisor):

- The child's exit code 0 means "stopped on purpose" (`ingot down`, a takeover by `ingot serve`,
  SIGTERM), and 75 "another one already runs": the supervisor ends too. Any other end (a crash, kill
  -9, an uncaught error) of a child that ran at least `STABLE_AFTER` seconds is restarted at once; a
  child that keeps dying sooner than that (it cannot start: a broken state, say) is restarted with
  a backoff that doubles from `FIRST_BACKOFF` up to `MAX_BACKOFF`.
- SIGTERM or SIGINT to the supervisor is passed on to the child; the supervisor ends when it does.
- A SIGSTOPped child is not restarted: it is alive. The data plane does not depend on it (DESIGN.md).

Only the standard library is imported: the supervisor starts in a few milliseconds and holds ~10 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

# Exit codes that end supervision: stopped on purpose, or another instance already runs (AlreadyRunning).
FINAL_EXIT_CODES = (0, 75)
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 30.0
STABLE_AFTER = 1.0


class Supervisor:
    def __init__(self, command: list[str], pidfile: Path | None) -> None:
        self.command = command
        self.pidfile = pidfile
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self.pidfile is not None:
            self.pidfile.write_text(f"{os.getpid()}\n")
        backoff = 0.0
        try:
            while True:
                started = time.monotonic()
                self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
                code = self.child.wait()
                if code in FINAL_EXIT_CODES or self.stopping:
                    return 0 if code in FINAL_EXIT_CODES or code < 0 else code
                ran = time.monotonic() - started
                backoff = 0.0 if ran >= STABLE_AFTER else min(MAX_BACKOFF, backoff * 2 if backoff else FIRST_BACKOFF)
                self.restarts += 1
                why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                print(f"ingot supervisor: {' '.join(self.command[-2:])} ended ({why}) after {ran:.1f} s; "
                      f"restart {self.restarts} in {backoff:.1f} s", file=sys.stderr, flush=True)
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not self.stopping:
                    time.sleep(0.05)
                if self.stopping:
                    return 0
        finally:
            if self.pidfile is not None:
                with contextlib.suppress(OSError):
                    if self.pidfile.read_text().strip() == str(os.getpid()):
                        self.pidfile.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingot.supervision")
    parser.add_argument("--pidfile", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to supervise is required after --")
    return Supervisor(command, args.pidfile).run()


def supervisor_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if __name__ == "__main__":
    sys.exit(main())
