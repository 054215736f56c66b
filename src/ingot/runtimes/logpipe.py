"""An instance's logger: copies what the instance writes (its stdout and stderr, through a pipe) into its
log file, rotated by size with the standard library's `RotatingFileHandler`.

It runs as its own small process (`python -I -S logpipe.py LOG MAX_BYTES BACKUPS`, importing nothing of
ingot, so it starts in milliseconds), in a session of its own: it outlives the agent like the instance
does, ignores the signals that stop the instance, and exits when the pipe closes, that is once the
instance and everything it started have exited. Writes never block or fail the instance: when the disk
is full, output is dropped (and counted) instead, and a line in the log says how much once writing works
again.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import sys

CHUNK = 64 * 1024


class _Log(logging.handlers.RotatingFileHandler):
    """Rotation by the standard library; a failed write drops that text and reopens the file next time."""

    dropped = 0
    _failed = False

    def write(self, text: str) -> None:
        if self.dropped:
            text = f"[ingot: {self.dropped} bytes of output were dropped: the log could not be written]\n" + text
        record = logging.makeLogRecord({"msg": text})
        self._failed = False
        self.handle(record)
        self.dropped = len(text.encode("utf-8", "surrogateescape")) if self._failed else 0

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True
        # The stream may hold what it could not write: start afresh rather than retry it forever.
        stream, self.stream = self.stream, None  # type: ignore[assignment]
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def main(argv: list[str]) -> int:
    path, max_bytes, backups = argv[1], int(argv[2]), int(argv[3])
    os.umask(0o077)  # the log and its rotations: 0600, readable by ingot alone (instances only write the pipe)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the instance is stopped; its logger ends at end of output
    log = _Log(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", errors="surrogateescape",
               delay=True)
    log.terminator = ""
    log.setFormatter(logging.Formatter("%(message)s"))
    pending = b""
    while True:
        try:
            data = os.read(0, CHUNK)
        except InterruptedError:
            continue
        if not data:
            break
        pending += data
        # Whole lines only, so that a rotation never splits one; a very long line goes as it is.
        cut = pending.rfind(b"\n") + 1 if len(pending) < CHUNK else len(pending)
        if cut:
            log.write(pending[:cut].decode("utf-8", "surrogateescape"))
            pending = pending[cut:]
    if pending:
        log.write(pending.decode("utf-8", "surrogateescape"))
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
