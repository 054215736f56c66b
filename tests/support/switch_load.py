"""The load client of the router switch and health tests (builtin and HAProxy), as its own process:

    python tests/support/switch_load.py URL

It hammers URL from several keep-alive clients until a line arrives on stdin, checking that every
answer came from release A or B (from a backend named after it: "A-..."), and prints progress
lines, then a final JSON report. `switch_load(url)` runs it for the duration of an `async with`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CLIENT_THREADS = 4
SCRIPT = Path(__file__)


def client_main(url: str) -> None:
    """Hammer `url` until a line arrives on stdin; print progress lines, then a final report."""
    import threading
    from collections import Counter

    import httpx

    lock = threading.Lock()
    stop = threading.Event()
    by_release: Counter[str] = Counter()
    failures: list[str] = []
    total = [0]

    def check(response: httpx.Response, expect_sha: bool) -> str | None:
        release = response.headers.get("x-ingot-release", "")
        if response.status_code != 200:
            return f"HTTP {response.status_code} from {release or 'router'}: {response.text[:120]!r}"
        if release not in ("A", "B"):
            return f"unexpected release {release!r}"
        if expect_sha:
            return None if response.json().get("length") == 1024 else f"bad echo {response.text[:80]!r}"
        if not response.text.startswith(release + "-"):
            return f"release {release} answered by backend {response.text!r}"
        return None

    def worker(n: int) -> None:
        body = bytes(range(256)) * 4
        with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as http:
            i = 0
            while not stop.is_set():
                i += 1
                post = n > 0 and i % 5 == n  # some requests carry a body, to exercise replays
                path = "/sleep?s=0.2" if n == 0 else "/"  # one slow client, so drains have to wait
                try:
                    response = http.post("/sha256", content=body) if post else http.get(path)
                    problem = check(response, post)
                except httpx.HTTPError as exc:
                    problem, response = f"{type(exc).__name__}: {exc}", None
                with lock:
                    total[0] += 1
                    if problem is not None:
                        failures.append(problem)
                    elif response is not None:
                        by_release[response.headers["x-ingot-release"]] += 1

    def report(final: bool) -> None:
        with lock:
            line = {"total": total[0], "failed": len(failures), "by_release": dict(by_release)}
            if final:
                line |= {"final": True, "failures": failures[:20]}
        print(json.dumps(line), flush=True)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    while not stop.wait(0.05):
        report(final=False)
    for thread in threads:
        thread.join(timeout=15)
    report(final=True)


@asynccontextmanager
async def switch_load(url: str) -> AsyncIterator[dict[str, Any]]:
    """Run the client against `url` for the duration of the block, from another process.

    Yields its latest progress line ({"total", "failed", "by_release"}), updated as lines arrive;
    once the block ends the client is stopped and the dict holds its final report ("final",
    "failures": the first 20).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    latest: dict[str, Any] = {"total": 0, "failed": 0, "by_release": {}}

    async def follow() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            latest.update(json.loads(line))

    follower = asyncio.create_task(follow())
    try:
        yield latest
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(follower, 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        follower.cancel()


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Poll `condition` (plain or a coroutine function) until it holds; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if await result if not isinstance(result, bool) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    client_main(sys.argv[1])
