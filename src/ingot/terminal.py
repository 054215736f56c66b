"""The caller's terminal, for a one-off instance run attached to it (`ingot run`), on every runtime.

Whether there is a terminal is decided once, here, for both runtimes: on the process runtime the command
inherits it (its stdin, stdout and stderr are the caller's, so a TTY if they are one); on a container
runtime the container gets a TTY of its own, which this side joins to the caller's: the caller's
terminal in raw mode (every key, Ctrl-C included, goes to the command, whose TTY interprets it, as with
`docker run -it`), its window size passed on at the start and whenever it changes (SIGWINCH).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator

Size = tuple[int, int]  # (rows, columns)


def attached_to_terminal() -> bool:
    """Whether this process's stdin and stdout are both a terminal (then a one-off gets a TTY)."""
    try:
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # replaced or closed streams: no terminal
        return False


def size(fd: int) -> Size | None:
    """The terminal's window size, or None if `fd` is not a terminal (or says 0x0)."""
    try:
        columns, rows = os.get_terminal_size(fd)
    except OSError:
        return None
    return (rows, columns) if rows and columns else None


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """`fd`'s terminal in raw mode (no echo, no line editing, no signals from keys), restored after."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield  # not a terminal after all
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(fd: int, resized: Callable[[Size], None]) -> Iterator[None]:
    """Call `resized` with the new size whenever `fd`'s terminal window changes size (SIGWINCH), until
    the block ends. Signal handlers belong to the main thread: elsewhere the size is not followed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        now = size(fd)
        if now is not None:
            with contextlib.suppress(Exception):  # a container that has just ended has no TTY to resize
                resized(now)

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)
