"""Fixtures for `HAProxyRouter` tests against a real haproxy (Debian's 2.6 package).

haproxy comes from `scripts/provision-haproxy` when it is not installed (idempotent: it returns at
once when haproxy is there). Without haproxy the tests are skipped with the reason, except in CI
(`CI` set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from tests.haproxy.helpers import find_haproxy, kill_haproxy_of

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "scripts" / "provision-haproxy"
MIN_VERSION = (2, 6)

try:
    import uvloop

    LOOPS = ["asyncio", "uvloop"]
except ImportError:  # pragma: no cover
    uvloop = None
    LOOPS = ["asyncio"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the HAProxy router tests have no haproxy: {reason}", pytrace=False)
    pytest.skip(f"no haproxy >= {'.'.join(map(str, MIN_VERSION))} (run: bash scripts/provision-haproxy): {reason}")


def provision() -> None:
    try:
        done = subprocess.run(["bash", str(PROVISION)], capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{PROVISION} could not run: {exc}")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        unavailable(f"{PROVISION} failed with exit code {done.returncode}:\n{tail}")


@pytest.fixture(scope="session")
def haproxy_bin() -> str:
    """The haproxy executable, installed first if need be."""
    found = find_haproxy()
    if found is None:
        provision()
        found = find_haproxy()
    if found is None:
        unavailable(f"{PROVISION} ran but no haproxy is on PATH or in /usr/sbin")
    version = subprocess.run([found, "-v"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version (\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        unavailable(f"{found} says {version.splitlines()[:1]}")
    return found


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], T]:
    """Run an async test body to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" and uvloop else asyncio.new_event_loop

    def runner(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(body(), 60))

    return runner


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The router's workdir; a test that failed before `stop()` does not leave its haproxy running."""
    path = tmp_path / "hap"
    yield path
    kill_haproxy_of(path)
