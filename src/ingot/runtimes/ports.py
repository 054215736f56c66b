"""Host ports for process instances, picked outside the kernel's ephemeral range.

A port found by binding port 0 comes from the ephemeral range (`net.ipv4.ip_local_port_range`), the
range the kernel also gives every outgoing connection. Between ingot's probe and the app's own bind, an
outgoing connection (the edge's to another backend, a client's, a test's) may take that port and the new
instance dies with EADDRINUSE: seen in CI, where the edge keeps hundreds of backend connections open.
Nomad picks dynamic ports from 20000-32000 for the same reason; ingot does too, by default, and leaves
out whatever part of the range the kernel's ephemeral range overlaps.

A port given out is not given again by this process for `HELD_FOR` seconds, the time an app takes to
bind it. Two agents on one machine pick at random from about 12,000 ports, checked free by a bind: their
picks meet, and then one of two apps fails to start, about once in tens of thousands of starts at once.

A router's own `listen` port inside the range is free until its router binds it, which for a service
deployed for the first time (one of many deployed in parallel, say) comes after other services' instances
start: the agent reserves every `router.listen` port of the specs it deploys (`reserve`), and no instance
is given one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ingot.errors import OperationFailed, UserInputError

log = logging.getLogger("ingot.agent")
PORTS_ENV = "INGOT_INSTANCE_PORTS"
DEFAULT_PORTS = (20000, 32000)
HELD_FOR = 120.0
EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: dict[int, float] = {}
_reserved: set[int] = set()
_giving = threading.Lock()


def reserve(ports: Iterable[int]) -> None:
    """Never give these ports to an instance (routers' listen ports), for the life of this process."""
    with _giving:
        _reserved.update(int(port) for port in ports if port)


def configured_range() -> tuple[int, int]:
    """The inclusive range of $INGOT_INSTANCE_PORTS ("LOW-HIGH"), or DEFAULT_PORTS."""
    given = os.environ.get(PORTS_ENV, "").strip()
    if not given:
        return DEFAULT_PORTS
    low, dash, high = given.partition("-")
    if not (dash and re.fullmatch(r"[0-9]+", low.strip()) and re.fullmatch(r"[0-9]+", high.strip())):
        raise UserInputError(f"${PORTS_ENV} is {given!r}: expected a range of ports like 20000-32000")
    first, last = int(low), int(high)
    if not 1024 < first <= last <= 65535:
        raise UserInputError(f"${PORTS_ENV} is {given!r}: expected LOW-HIGH with 1024 < LOW <= HIGH <= 65535 "
                             "(an instance does not run as root, so it cannot bind a port below 1024)")
    return first, last


def ephemeral_range(path: Path = EPHEMERAL_FILE) -> tuple[int, int] | None:
    try:
        low, high = path.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def candidates(wanted: tuple[int, int], ephemeral: tuple[int, int] | None) -> list[int]:
    """The ports of `wanted` outside `ephemeral`; all of `wanted` when nothing else is left."""
    ports = range(wanted[0], wanted[1] + 1)
    if ephemeral is None:
        return list(ports)
    outside = [port for port in ports if not ephemeral[0] <= port <= ephemeral[1]]
    if not outside:
        log.warning("$%s %d-%d lies inside the kernel's ephemeral range %d-%d: an outgoing connection may take "
                    "an instance's port before it binds it", PORTS_ENV, wanted[0], wanted[1], *ephemeral)
    return outside or list(ports)


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT from an instance just stopped is passed over too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def instance_port(host: str = "127.0.0.1") -> int:
    """A port for a new instance: free now, not given out lately by this process."""
    low, high = configured_range()
    pool = candidates((low, high), ephemeral_range())
    tries = min(len(pool), 256)
    now = time.monotonic()
    with _giving:
        for port, since in list(_given.items()):
            if now - since > HELD_FOR:
                del _given[port]
        for port in random.sample(pool, tries):
            if port not in _given and port not in _reserved and is_free(port, host):
                _given[port] = now
                return port
    raise OperationFailed(f"no free port for a new instance in {low}-{high}: {len(pool)} ports, every one of "
                          f"{tries} tried is in use, a router's listen port or was given out in the last two minutes",
                          details=[f"widen the range with ${PORTS_ENV}=LOW-HIGH"])
