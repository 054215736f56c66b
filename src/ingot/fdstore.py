"""Listening sockets that outlive the process serving them: held by ingot's supervisor, handed to each child.

Why the supervisor holds them (and not SO_REUSEPORT). A listening socket's queue lives as long as
one descriptor of it is open. The supervisor is the long-lived parent of the edge: when the edge
dies (kill -9, a crash), the supervisor's copy keeps the socket listening, the kernel goes on
completing handshakes into its backlog, and the edge the supervisor forks next accepts them. No
connection is refused. SO_REUSEPORT is a handover between two *live* processes: it needs the old
one alive until the new one has bound, which a kill -9 or a crash never grants, and the old
socket's queue (connections already handshaken into it) is reset when it closes. What is lost
either way: requests the dead edge had already accepted (in flight on its connections); only a
kill mid-request does that.

The protocol is systemd's file-descriptor store in miniature (`FDSTORE=1` / `FDSTOREREMOVE=1`):

- The supervisor makes a SOCK_SEQPACKET pair before the first fork. Each child is forked, not
  exec'd: it inherits the held fds themselves, and finds its end of the pair and the fds by name in
  `HANDED` (set in the child right after the fork; no environment variable, so nothing the child
  starts ever sees any of it).
- The child sends `keep <name>` with the fd attached (SCM_RIGHTS) once it listens, and `drop <name>`
  when it stops serving that socket for good, so that the supervisor never keeps a queue that
  nobody will accept from. Messages are read before the next child is forked, so a child killed
  right after sending still has them applied.

Without a supervisor (a foreground edge, a systemd unit, a test) the store is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket

MAX_MESSAGE = 4096


class Handed:
    """What a forked child got from its supervisor: its end of the pair, and the held fds by name."""

    def __init__(self, channel: socket.socket, fds: dict[str, int]) -> None:
        self.channel = channel
        self.fds = fds


# Set in a supervised child right after the fork (by `Holder.hand_over`); None anywhere else.
HANDED: Handed | None = None


class Holder:
    """The supervisor's side: fds by name, and the socket a child talks to it on."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ours.setblocking(False)

    def hand_over(self) -> None:
        """In a freshly forked child: make the held fds and the child's end of the pair its own."""
        global HANDED
        HANDED = Handed(self.theirs, dict(self.fds))
        self.ours.close()

    def absorb(self) -> None:
        """Apply every message waiting from a child (the live one, or one that just died)."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.ours, MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            verb, _, name = data.decode("utf-8", "replace").partition(" ")
            for fd in fds[1:]:
                os.close(fd)
            old = self.fds.pop(name, None)
            if old is not None:
                os.close(old)
            if verb == "keep" and fds:
                os.set_inheritable(fds[0], False)  # forked children get it; exec'd programs never do
                self.fds[name] = fds[0]
            elif fds:
                os.close(fds[0])

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.ours.close()
        self.theirs.close()


class Store:
    """The child's side: sockets its supervisor held for it, and `keep`/`drop` to tell it what to hold."""

    def __init__(self) -> None:
        handed = HANDED
        self._sock: socket.socket | None = handed.channel if handed is not None else None
        self._held: dict[str, int] = dict(handed.fds) if handed is not None else {}

    @property
    def active(self) -> bool:
        return self._sock is not None

    def take(self, name: str) -> socket.socket | None:
        """The listening socket held under `name` (once), or None."""
        fd = self._held.pop(name, None)
        if fd is None:
            return None
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return None
        sock.setblocking(False)
        return sock

    def keep(self, name: str, fd: int) -> None:
        self._send(f"keep {name}", [fd])

    def drop(self, name: str) -> None:
        self._send(f"drop {name}", [])

    def drop_unclaimed(self) -> list[str]:
        """Close and forget what was held for this process but is not served any more."""
        names = list(self._held)
        for name in names:
            with contextlib.suppress(OSError):
                os.close(self._held.pop(name))
            self.drop(name)
        return names

    def _send(self, message: str, fds: list[int]) -> None:
        if self._sock is None:
            return
        try:
            socket.send_fds(self._sock, [message.encode()], fds)
        except OSError:
            self._sock = None  # the supervisor is gone: nothing to hand over to any more
