"""ingot's own supervision: keep a daemon (the agent, the edge) running where no systemd does it.

`python -m ingot.supervision --pidfile P MODULE:FUNCTION -- ARGS...` runs FUNCTION(ARGS) in a forked
child and starts it again whenever it dies, unless it ended on purpose. It is what `ingot` starts in
the background on demand; `ingot install` writes systemd units that do the same job
(`Restart=on-failure`) where systemd runs.

Rules, kept small on purpose (a supervisor that can fail is no supervisor):

- The child's exit code 0 means "stopped on purpose" (`ingot down`, a takeover by `ingot serve`,
  SIGTERM), and 75 "another one already runs": the supervisor ends too. Any other end (a crash, kill
  -9, an uncaught error) is restarted at once if the child was SIGKILLed from outside or ran at
  least `STABLE_AFTER` seconds; a child that keeps failing by itself sooner than that (it cannot
  start: a broken state, say) is restarted with a backoff doubling from `FIRST_BACKOFF` to `MAX_BACKOFF`.
- SIGTERM or SIGINT to the supervisor is passed on to the child; the supervisor ends when it does.
- A SIGSTOPped child is not restarted: it is alive. The data plane does not depend on it (DESIGN.md).
- Listening sockets a child hands over (`ingot.fdstore`: the edge's built-in routers do) are held here
  and handed to the next child, so a child's death never closes a listen queue.

The supervisor holds the daemon's modules (imported once), those sockets, and nothing else: no store, no
thread. It waits on the child's pidfd and the fd store's socket, nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ingot.fdstore import Holder
from ingot.paths import private_umask

# Exit codes that end supervision: stopped on purpose, or another instance already runs (AlreadyRunning).
FINAL_EXIT_CODES = (0, 75)
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 30.0
STABLE_AFTER = 1.0


Entry = Callable[[list[str]], int]


class Supervisor:
    """Runs `entry(args)` in a forked child, again and again (see the module's rules).

    The entry's module is imported once, here, before the first fork: a child starts with ingot already
    loaded, so a restart costs the daemon's own recovery, not another second of imports.
    """

    def __init__(self, entry: Entry, args: list[str], pidfile: Path | None, label: str) -> None:
        self.entry = entry
        self.args = args
        self.pidfile = pidfile
        self.label = label
        self.child: int | None = None
        self.stopping = False
        self.restarts = 0
        self.fds = Holder()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def _spawn(self) -> int:
        pid = os.fork()
        if pid:
            return pid
        # The child: a fresh session leader of nothing, default signals, the daemon's entry point.
        code = 1
        try:
            self.fds.hand_over()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = self.entry(self.args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self.pidfile is not None:
            self.pidfile.write_text(f"{os.getpid()}\n")
        backoff = 0.0
        try:
            while True:
                started = time.monotonic()
                self.child = self._spawn()
                status = self._wait(self.child)
                code = os.waitstatus_to_exitcode(status)
                self.child = None
                if code in FINAL_EXIT_CODES or self.stopping:
                    return 0 if code in FINAL_EXIT_CODES or code < 0 else code
                ran = time.monotonic() - started
                # Killed from outside (kill -9, the OOM killer): it did not fail to start, so no backoff.
                killed = code == -signal.SIGKILL
                if killed or ran >= STABLE_AFTER:
                    backoff = 0.0
                else:
                    backoff = min(MAX_BACKOFF, backoff * 2 if backoff else FIRST_BACKOFF)
                self.restarts += 1
                why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                print(f"ingot supervisor: {self.label} ended ({why}) after {ran:.1f} s; "
                      f"restart {self.restarts} in {backoff:.1f} s", file=sys.stderr, flush=True)
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not self.stopping:
                    time.sleep(0.05)
                if self.stopping:
                    return 0
        finally:
            self.fds.close()
            if self.pidfile is not None:
                with contextlib.suppress(OSError):
                    if self.pidfile.read_text().strip() == str(os.getpid()):
                        self.pidfile.unlink()


    def _wait(self, child: int) -> int:
        """Wait for `child` to end (its wait status), taking the sockets it hands over meanwhile."""
        pidfd = os.pidfd_open(child)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.register(self.fds.ours, select.POLLIN)
            while True:
                ready = {fd for fd, _ in poller.poll()}
                self.fds.absorb()
                if pidfd in ready:
                    break
        finally:
            os.close(pidfd)
        _, status = os.waitpid(child, 0)
        self.fds.absorb()  # what it sent just before it died
        return status


def load_entry(spec: str) -> Entry:
    module, _, name = spec.partition(":")
    entry: Entry = getattr(importlib.import_module(module), name)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingot.supervision")
    parser.add_argument("--pidfile", type=Path, default=None)
    parser.add_argument("entry", help="MODULE:FUNCTION, called with the remaining arguments; returns an exit code")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    private_umask()
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return Supervisor(load_entry(args.entry), rest, args.pidfile, args.entry).run()


def running_supervisor(pidfile: Path) -> int | None:
    """The pid of the supervisor that `pidfile` names, if it still runs (a reused pid is not taken for it)."""
    try:
        text = pidfile.read_text().strip()
        pid = int(text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"ingot.supervision" in cmdline and str(pidfile).encode() in cmdline else None


def stop_supervisor(pidfile: Path, timeout: float = 15.0) -> bool:
    """SIGTERM the supervisor (it passes the signal on and ends with its child); True if one ran."""
    pid = running_supervisor(pidfile)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_supervisor(pidfile) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    sys.exit(main())
