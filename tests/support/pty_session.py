"""A command run on a real pseudo-terminal, as a user at a terminal runs it: the pty is its controlling
terminal (so resizing the window sends it SIGWINCH and Ctrl-C is a key), and the test reads what the
terminal shows and types into it."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import ExampleProject


class PtySession:
    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], rows: int, columns: int) -> None:
        self.master, follower = os.openpty()
        self.resize(rows, columns, fd=follower)
        self.shown = b""

        def controlling_terminal() -> None:  # in the child, after setsid (start_new_session)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower,
                                            start_new_session=True, preexec_fn=controlling_terminal)
        finally:
            os.close(follower)

    def resize(self, rows: int, columns: int, fd: int | None = None) -> None:
        """Set the window size (the kernel sends SIGWINCH to the terminal's foreground process group)."""
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def read_until(self, wanted: str, timeout: float = 30.0, since: int = 0) -> str:
        """Everything shown so far once it shows `wanted` (after byte `since`); AssertionError with it all if
        it never does."""
        deadline = time.monotonic() + timeout
        while wanted.encode() not in self.shown[since:]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"{wanted!r} never shown; the terminal shows:\n{self.text}")
        return self.text

    def until(self, action: Callable[[], None], wanted: str, attempts: int = 40) -> bool:
        """Do `action` until `wanted` is shown after it (a change that reaches the command a moment later)."""
        for _ in range(attempts):
            mark = len(self.shown)
            action()
            try:
                self.read_until(wanted, timeout=0.5, since=mark)
                return True
            except AssertionError:
                continue
        return False

    def modes(self) -> tuple[bool, bool]:
        """(echo, canonical) of the terminal now, as its user's shell finds it."""
        lflag = termios.tcgetattr(self.master)[3]
        return bool(lflag & termios.ECHO), bool(lflag & termios.ICANON)

    def _read(self, timeout: float) -> bool:
        """Read what is shown within `timeout`; False once nothing more can ever be (or nothing came)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return self.process.poll() is None
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the terminal has closed it
            return False
        self.shown += data
        return bool(data)

    @property
    def text(self) -> str:
        return self.shown.decode("utf-8", "replace")

    def wait(self, timeout: float = 30.0) -> int:
        """The command's exit code, once it has ended (what it showed last is read first)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while select.select([self.master], [], [], 0.2)[0] and self._read(0):
            pass
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self.master)


def ingot_on_pty(example: ExampleProject, *args: str, rows: int = 24, columns: int = 80) -> PtySession:
    """`ingot ARGS` of `example` on a terminal of its own, `rows` x `columns`."""
    env = {**os.environ, "INGOT_ACTOR": "tester@ci"}
    env.pop("INGOT_HOME", None)
    env.update(example.env)
    return PtySession([sys.executable, "-m", "ingot", *args], cwd=example.root, env=env, rows=rows, columns=columns)
