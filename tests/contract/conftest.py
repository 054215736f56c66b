"""The contract suite runs every test against each `Router` implementation.

`make_router()` builds an unstarted router of the parametrized kind on 127.0.0.1, any port
(`read_timeout`: how long it waits for a backend's answer, the same option on each). The
HAProxy cases need a haproxy binary (`tests/support/routers.haproxy_bin`: provisioned when missing;
skipped with the reason when none can be had, a failure in CI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingot.routers.base import Address, Router
from ingot.routers.builtin import BuiltinRouter
from tests.support.routers import haproxy_bin, kill_haproxy_of, run

__all__ = ["haproxy_bin", "make_router", "run"]

ROUTER_KINDS = ["builtin", "haproxy"]

MakeRouter = Callable[..., Router]


@pytest.fixture(params=ROUTER_KINDS)
def make_router(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeRouter]:
    haproxy: str | None = request.getfixturevalue("haproxy_bin") if request.param == "haproxy" else None
    workdirs: list[Path] = []

    def make(listen: Address = ("127.0.0.1", 0), name: str = "contract", read_timeout: float = 60.0) -> Router:
        if haproxy is None:
            return BuiltinRouter(listen, name=name, read_timeout=read_timeout)
        from ingot.routers.haproxy import HAProxyRouter
        from ingot.routers.haproxy_config import Timeouts

        workdir = tmp_path / f"hap{len(workdirs)}"
        workdirs.append(workdir)
        return HAProxyRouter(
            listen, name=name, workdir=workdir, haproxy=haproxy, timeouts=Timeouts(server=read_timeout)
        )

    yield make
    for workdir in workdirs:
        kill_haproxy_of(workdir)  # only if a failed test left its haproxy running
