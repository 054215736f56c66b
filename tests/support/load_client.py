"""A load client that runs in its own process: GETs a URL until told to stop, then reports.

Usage: python load_client.py URL STOP_FILE RESULT_FILE [CONNECTIONS]
Every request is checked: a failure is any transport error or non-200 answer. The report counts the
`version` field of each JSON body, so a test can tell which releases answered; bodies that say when the
app began and finished answering (`started`, `finished`) are kept as `spans` [version, started, finished].
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx


def worker(url: str, stop: Path, results: dict[str, object], lock: threading.Lock) -> None:
    versions: Counter[str] = Counter()
    failures: list[str] = []
    spans: list[tuple[str, float, float]] = []
    count = 0
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        while not stop.exists():
            count += 1
            try:
                response = client.get(url)
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                versions[str(body.get("version"))] += 1
                if "started" in body:
                    spans.append((str(body["version"]), float(body["started"]), float(body["finished"])))
            except (httpx.HTTPError, ValueError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    with lock:
        results["requests"] = int(results.get("requests", 0)) + count  # type: ignore[call-overload]
        merged: Counter[str] = Counter(results.get("versions", {}))  # type: ignore[arg-type]
        merged.update(versions)
        results["versions"] = dict(merged)
        results["failures"] = [*results.get("failures", []), *failures]  # type: ignore[misc]
        if spans:
            results["spans"] = [*results.get("spans", []), *spans]  # type: ignore[misc]


def main() -> None:
    url, stop, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    results: dict[str, object] = {"started": time.time()}
    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(url, stop, results, lock)) for _ in range(connections)]
    for thread in threads:
        thread.start()
    Path(str(out) + ".ready").write_text("1")
    for thread in threads:
        thread.join()
    results["finished"] = time.time()
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
