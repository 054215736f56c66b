"""`ingot maintenance on|off`: the router answers 503 + Retry-After while instances keep running; the edge
keeps the mode across its own restart; off serves again at once; the ledger and `ingot status` say it."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx

from ingot.edge.client import call_sync
from ingot.edge.home import EdgeHome
from tests.support.harness import ExampleProject, poll


def edge_pid(home: EdgeHome) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(call_sync(home, "ping", timeout=1.0)["pid"])
    return None


def test_maintenance_answers_503_survives_an_edge_restart_and_ends_at_once(example: ExampleProject,
                                                                            tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    instances = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    page = tmp_path / "page.html"
    page.write_text("<h1>Back soon</h1>\n")
    on = example.ingot("maintenance", "on", "--page", str(page), "--retry-after", "30")
    assert on.code == 0, on.err
    assert "maintenance on" in on.out

    def answer() -> httpx.Response:
        return httpx.get(example.url, timeout=5, trust_env=False)

    response = answer()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30" and response.text == "<h1>Back soon</h1>\n"
    assert response.headers["content-type"].startswith("text/html")
    status = example.ingot("status", check=True)
    assert "staging/web: maintenance on since" in status.out and "Retry-After: 30" in status.out
    assert example.ingot("status", "--json", check=True).json["services"][0]["instances"] == instances

    home = EdgeHome.default()
    pid = edge_pid(home)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    poll(lambda: edge_pid(home) not in (None, pid), timeout=15, what="the edge to be started again")
    assert answer().status_code == 503 and answer().text == "<h1>Back soon</h1>\n"

    off = example.ingot("maintenance", "off", check=True)
    assert "maintenance off: serving" in off.out
    assert answer().status_code == 200  # at once: no poll
    assert "maintenance on" not in example.ingot("status", check=True).out
    log = example.ingot("audit", "log", "--json", "--limit", "100", check=True).json
    assert [e["action"] for e in log if e["action"].startswith("maintenance.")] == ["maintenance.on",
                                                                                    "maintenance.off"]

    # The default page, and bad input said plainly.
    example.ingot("maintenance", "on", check=True)
    response = answer()
    assert response.status_code == 503 and response.headers["retry-after"] == "120"
    assert "maintenance" in response.text.lower()
    bad = example.ingot("maintenance", "maybe")
    assert bad.code == 2 and "on or off" in bad.err and "Traceback" not in bad.err
    missing = example.ingot("maintenance", "on", "--page", str(tmp_path / "nope.html"))
    assert missing.code == 2 and "nope.html" in missing.err
    example.ingot("maintenance", "off", check=True)


def test_maintenance_is_refused_on_haproxy_and_traffic_is_untouched(example: ExampleProject) -> None:
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                             f'router: {{listen: "127.0.0.1:{example.port}", kind: haproxy}}'))
    example.ingot("deploy", check=True)
    refused = example.ingot("maintenance", "on")
    assert refused.code == 2 and "maintenance mode needs the built-in router" in refused.err, refused
    assert httpx.get(example.url, timeout=5, trust_env=False).status_code == 200
    assert not [e for e in example.ingot("audit", "log", "--json", check=True).json
                if e["action"].startswith("maintenance.")]
