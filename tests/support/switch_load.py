"""The load client of the router switch tests (builtin and HAProxy), run as its own process:

    python tests/support/switch_load.py URL

It hammers URL from several keep-alive clients until a line arrives on stdin, checking that every
answer came from release A or B, and prints progress lines, then a final JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

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
