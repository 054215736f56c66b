"""The builtin router's WebSocket frame boundaries: however the backend's bytes are split into reads, the
router knows exactly when it is between two frames (where its own close frame may go)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from ingot.routers.builtin.websocket import FrameBoundary


def frame(payload: bytes, *, masked: bool = False, opcode: int = 1) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n | (0x80 if masked else 0))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126 | (0x80 if masked else 0), n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127 | (0x80 if masked else 0), n)
    return head + (b"mask" if masked else b"") + payload


@given(sizes=st.lists(st.sampled_from([0, 1, 125, 126, 300, 65535, 65536, 70000]), min_size=1, max_size=6),
       masked=st.booleans(), cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=40))
def test_between_is_true_exactly_at_frame_ends(sizes: list[int], masked: bool, cuts: list[int]) -> None:
    frames = [frame(b"x" * n, masked=masked) for n in sizes]
    stream = b"".join(frames)
    ends = set()
    at = 0
    for f in frames:
        at += len(f)
        ends.add(at)
    boundary = FrameBoundary()
    position = 0
    pieces = []
    for cut in cuts:
        if position >= len(stream):
            break
        pieces.append(stream[position:position + cut])
        position += cut
    pieces.append(stream[position:])
    fed = 0
    for piece in pieces:
        boundary.feed(piece)
        fed += len(piece)
        assert boundary.between == (fed in ends or fed == 0), (fed, sorted(ends))
    assert boundary.between
