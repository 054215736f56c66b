"""Just enough of WebSocket framing (RFC 6455 5.2) for the router to close a tunnel cleanly.

The router never decodes a WebSocket: it splices bytes. But when a drain ends it tells the client "going
away" (close 1001) with a frame of its own, and that frame must fall between two of the backend's frames,
not inside one. `FrameBoundary` follows the backend's frame headers as the bytes go by (a few integer
operations per frame, payloads are skipped) and says whether the stream is between frames now.
"""

from __future__ import annotations

# A close frame from the server (unmasked): code 1001 "going away" (RFC 6455 7.4.1).
GOING_AWAY = b"\x88\x0c\x03\xe9going away"


def _header_size(head: bytes) -> int | None:
    """The size of the frame header that `head` begins with, once its first two bytes are there."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + 4 if head[1] & 0x80 else size


def _payload_size(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length


class FrameBoundary:
    """Where the frames end in one direction of a WebSocket, fed the bytes in order."""

    __slots__ = ("head", "left")

    def __init__(self) -> None:
        self.head = b""  # the start of a frame header split across reads
        self.left = 0  # payload bytes of the current frame still to come

    @property
    def between(self) -> bool:
        """No frame is partly sent: a frame of the router's own may go now."""
        return self.left == 0 and not self.head

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                continue
            head = self.head + data[i:i + 14]  # a header is 14 bytes at most
            size = _header_size(head)
            if size is None or len(head) < size:
                self.head += data[i:]
                return
            i += size - len(self.head)
            self.left = _payload_size(head)
            self.head = b""
