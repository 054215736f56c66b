"""`ingot maintenance on|off`: the router answers 503 + Retry-After while instances keep running; the edge
keeps the mode across its own restart; off serves again at once; the ledger and `ingot status` say it.
The same test on the built-in router, a dedicated HAProxy router and a router of the HAProxy front; on
HAProxy the haproxy itself answers 503 while the edge is down (a map entry, no reload), and is adopted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingot.edge.client import call_sync
from ingot.edge.home import EdgeHome
from ingot.routers.haproxy_config import MAINTENANCE_PAGE_MAX
from tests.support.harness import ExampleProject, free_port, make_example, poll, stop_everything


@dataclass
class Paused:
    kind: str  # builtin | haproxy (dedicated) | front (a router of the HAProxy front)
    example: ExampleProject
    home: EdgeHome
    url: str

    def answer(self) -> httpx.Response:
        return httpx.get(self.url, timeout=5, trust_env=False)

    def haproxy_pids(self) -> set[str]:
        """The haproxy serving this service (none on the built-in router)."""
        if self.kind == "builtin":
            return set()
        if self.kind == "front":
            files = list(self.home.root.rglob("haproxy.pid"))
        else:
            route = next(r for r in call_sync(self.home, "list")["routes"] if "#staging/web@" in r["id"]
                         and Path(r["owner"]).resolve() == self.example.state.resolve())
            files = [self.home.router_dir(route["id"]) / "haproxy.pid"]
        return {f.read_text().strip() for f in files}


@pytest.fixture(params=["builtin", "haproxy", "front"])
def paused(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Paused]:
    kind = str(request.param)
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    router = f'router: {{listen: "127.0.0.1:{example.port}"}}'
    home, url = EdgeHome.default(), example.url
    if kind == "haproxy":
        spec.write_text(spec.read_text().replace(router, router.replace("}", ", kind: haproxy}")))
    elif kind == "front":  # an HAProxy edge of its own, as tests/integration/test_edge_routes.py's
        http = free_port()
        home = EdgeHome(tmp_path / "edge")
        example.env.update({"INGOT_EDGE_HOME": str(home.root), "INGOT_EDGE_KIND": "haproxy",
                            "INGOT_EDGE_HTTP": f"127.0.0.1:{http}", "INGOT_EDGE_HTTPS": f"127.0.0.1:{free_port()}"})
        text = spec.read_text().replace(router, "routes: [{host: 127.0.0.1, tls: off}]")
        spec.write_text(re.sub(r'router: \{listen: "[0-9.:]+"\}', "routes: [{host: localhost, tls: off}]", text))
        url = f"http://127.0.0.1:{http}/"
    try:
        yield Paused(kind, example, home, url)
    finally:
        stop_everything(example)


def edge_pid(home: EdgeHome) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(call_sync(home, "ping", timeout=1.0)["pid"])
    return None


def words(text: str) -> list[str]:
    return text.split()  # HAProxy sends a page's line breaks as spaces


def test_maintenance_answers_503_survives_an_edge_restart_and_ends_at_once(paused: Paused, tmp_path: Path) -> None:
    example = paused.example
    example.ingot("deploy", check=True)
    assert paused.answer().status_code == 200
    instances = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    page = tmp_path / "page.html"
    page.write_text("<h1>Back soon</h1>\n<p>Sorry.</p>\n")
    on = example.ingot("maintenance", "on", "--page", str(page), "--retry-after", "30")
    assert on.code == 0, on.err
    assert "maintenance on" in on.out

    response = paused.answer()  # at once: no poll
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30" and words(response.text) == words(page.read_text())
    if paused.kind == "builtin":
        assert response.text == page.read_text()
    assert response.headers["content-type"].startswith("text/html")
    status = example.ingot("status", check=True)
    assert "staging/web: maintenance on since" in status.out and "Retry-After: 30" in status.out
    assert example.ingot("status", "--json", check=True).json["services"][0]["instances"] == instances

    haproxy = paused.haproxy_pids()
    pid = edge_pid(paused.home)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    if paused.kind != "builtin":  # haproxy answers by itself while the edge is down
        down = paused.answer()
        assert down.status_code == 503 and words(down.text) == words(page.read_text())
    poll(lambda: edge_pid(paused.home) not in (None, pid), timeout=15, what="the edge to be started again")
    again = paused.answer()
    assert again.status_code == 503 and words(again.text) == words(page.read_text())
    assert paused.haproxy_pids() == haproxy  # adopted, not started anew
    if paused.kind != "builtin":  # a haproxy that dies is started again, in maintenance before it serves
        os.killpg(int(next(iter(haproxy))), signal.SIGKILL)
        seen: list[int] = []

        def answered_again() -> bool:
            with contextlib.suppress(httpx.HTTPError, OSError):
                response = paused.answer()
                seen.append(response.status_code)
                return paused.haproxy_pids() != haproxy and words(response.text) == words(page.read_text())
            return False

        poll(answered_again, timeout=20, what="a new haproxy answering 503")
        assert set(seen) == {503}, seen  # never the app's 200

    off = example.ingot("maintenance", "off", check=True)
    assert "maintenance off: serving" in off.out
    assert paused.answer().status_code == 200  # at once: no poll
    assert "maintenance on" not in example.ingot("status", check=True).out
    log = example.ingot("audit", "log", "--json", "--limit", "100", check=True).json
    assert [e["action"] for e in log if e["action"].startswith("maintenance.")] == ["maintenance.on",
                                                                                    "maintenance.off"]

    # The default page, and bad input said plainly.
    example.ingot("maintenance", "on", check=True)
    response = paused.answer()
    assert response.status_code == 503 and response.headers["retry-after"] == "120"
    assert "maintenance" in response.text.lower()
    bad = example.ingot("maintenance", "maybe")
    assert bad.code == 2 and "on or off" in bad.err and "Traceback" not in bad.err
    missing = example.ingot("maintenance", "on", "--page", str(tmp_path / "nope.html"))
    assert missing.code == 2 and "nope.html" in missing.err
    if paused.kind != "builtin":  # a page past one buffer: refused, and the mode as it was
        big = tmp_path / "big.html"
        big.write_text("x" * (MAINTENANCE_PAGE_MAX + 1))
        refused = example.ingot("maintenance", "on", "--page", str(big), "--retry-after", "5")
        assert refused.code == 2 and "big.html" in refused.err and str(MAINTENANCE_PAGE_MAX) in refused.err, refused
        assert "Traceback" not in refused.err
        kept = paused.answer()
        assert kept.status_code == 503 and kept.headers["retry-after"] == "120"
    example.ingot("maintenance", "off", check=True)
    assert paused.answer().status_code == 200
