"""Fixtures and helpers shared by the router tests (contract, builtin, HAProxy).

`run` runs an async test body on a fresh loop of each kind (the default asyncio loop and uvloop,
which the data plane uses when it is there). `haproxy_bin` finds haproxy, provisioning it with
`scripts/provision-haproxy` when it is missing (idempotent: it returns at once when haproxy is
there); without haproxy a test that needs it is skipped with the reason, except in CI (`CI` set),
where that is a failure. Import the fixtures into a conftest to use them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "scripts" / "provision-haproxy"
MIN_HAPROXY = (2, 6)

try:
    import uvloop

    LOOPS = ["asyncio", "uvloop"]
except ImportError:  # pragma: no cover
    uvloop = None
    LOOPS = ["asyncio"]


def runner(loop: str) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], T]:
    """Run an async body to completion (60 s at most) on a fresh loop of kind `loop`."""
    factory = uvloop.new_event_loop if loop == "uvloop" and uvloop else asyncio.new_event_loop

    def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(body(), 60))

    return run


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], T]:
    """Run an async test body to completion on a fresh loop of the parametrized kind."""
    return runner(request.param)


# ---- haproxy --------------------------------------------------------------------------------------


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin:/sbin")


def haproxy_pids_of(workdir: Path) -> list[int]:
    """Processes whose command line names this workdir's config: the master and its worker."""
    config = str(workdir / "haproxy.cfg").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if config in cmdline.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_haproxy_of(workdir: Path) -> None:
    """Kill the haproxy a test started in `workdir` (and only that one), if a failure left it running."""
    for pid in haproxy_pids_of(workdir):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the HAProxy router tests have no haproxy: {reason}", pytrace=False)
    pytest.skip(f"no haproxy >= {'.'.join(map(str, MIN_HAPROXY))} (run: bash scripts/provision-haproxy): {reason}")


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
    if match is None or (int(match[1]), int(match[2])) < MIN_HAPROXY:
        unavailable(f"{found} says {version.splitlines()[:1]}")
    return found


STREAM_APP = REPO / "tests" / "support" / "stream_app.py"


@pytest.fixture(scope="module")
def stream_app() -> Iterator[tuple[str, int]]:
    """tests/support/stream_app.py (WebSocket echo, server-sent events) in a process of its own: its address."""
    import httpx

    from tests.support.harness import free_port, poll

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STREAM_APP)], env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).status_code == 200,
             timeout=10, what="the stream app")
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
