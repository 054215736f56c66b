"""Two "hosts" on one machine: network namespaces joined to the root namespace by veth pairs.

Host i has 10.231.<i>.2 on its side of its pair, and the root namespace 10.231.<i>.1 on the other: a server
in the root namespace listening on the .1 addresses is reached from each host over its own link, never
over loopback (each namespace has a loopback of its own). Commands run in a host through `ip netns exec`,
under a UTS namespace of their own (`unshare --uts`) so that each host has its own host name, as ingot
sees it (`socket.gethostname()`: the deploy lock names the host holding it). Needs root and iproute2;
skipped otherwise, except in CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tests.support.engines import in_ci


@dataclass(frozen=True)
class Host:
    namespace: str
    hostname: str
    address: str  # the host's own address
    server_side: str  # the root namespace's address on this host's link

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run on this host."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def hosts(count: int = 2) -> Iterator[list[Host]]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        reason = "needs root, ip (iproute2) and unshare (util-linux) for network namespaces"
        if in_ci():
            pytest.fail(f"CI is set and {reason}", pytrace=False)
        pytest.skip(reason)
    tag = os.getpid() % 100_000
    made: list[Host] = []
    try:
        for number in range(1, count + 1):
            host = Host(f"ingot-h{number}-{tag}", f"ingot-host-{number}", f"10.231.{number}.2", f"10.231.{number}.1")
            outside, inside = f"igh{number}o{tag}", f"igh{number}i{tag}"
            _ip("netns", "add", host.namespace)
            made.append(host)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("addr", "add", f"{host.server_side}/24", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield made
    finally:
        for number, host in enumerate(made, start=1):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", f"igh{number}o{tag}")  # (its peer goes with it, or with the namespace)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)
