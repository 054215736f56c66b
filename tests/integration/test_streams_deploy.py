"""WebSockets and server-sent events across a deploy and a rollback, through the CLI and the edge.

The app is tests/support/stream_app.py (a WebSocket echo that names its version, and an event stream);
the WebSocket client is the `websockets` library. An open connection stays on the release it opened on
while the new release serves new ones, until drain_timeout: then it is closed (a WebSocket with close
1001) and the deploy says how many were cut.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.harness import ExampleProject, Result, load, make_example, poll, stop_everything, use_strategy

STREAM_APP = Path(__file__).resolve().parents[1] / "support" / "stream_app.py"
DRAIN = 3


@pytest.fixture(params=["builtin", "haproxy"])
def streams(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_example(tmp_path, replicas=1)
    shutil.copy(STREAM_APP, example.root / "app.py")
    use_strategy(example, f"    strategy: {{type: blue-green, drain_timeout: {DRAIN}s}}")
    if request.param == "haproxy":
        spec = example.root / "ingot.yaml"
        spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                                 f'router: {{listen: "127.0.0.1:{example.port}", kind: haproxy}}'))
    example.env["TEST_ROUTER_KIND"] = request.param  # read back by the test (harmless to ingot)
    yield example
    stop_everything(example)


def builtin(example: ExampleProject) -> bool:
    return example.env["TEST_ROUTER_KIND"] == "builtin"


def going_away(example: ExampleProject) -> int | None:
    """The close code a cut WebSocket sees: 1001 from the built-in router; haproxy just closes (none)."""
    return 1001 if example.env["TEST_ROUTER_KIND"] == "builtin" else None


class Events(threading.Thread):
    """An SSE client in a thread: the events as they arrive, and whether the stream ended."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[str] = []
        self.ended = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(5, read=30), trust_env=False) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()


def in_background(example: ExampleProject, *args: str) -> tuple[threading.Thread, list[Result]]:
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(example.ingot(*args)), daemon=True)
    thread.start()
    return thread, out


def echo(ws: ClientConnection, text: str) -> str:
    ws.send(text)
    return str(ws.recv(timeout=5))


def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=DRAIN + 30)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


def switch(example: ExampleProject, version: str, *args: str) -> tuple[threading.Thread, list[Result]]:
    """Run `ingot <args>` in the background and return once `version` answers new requests."""
    thread, out = in_background(example, *args)
    poll(lambda: example.get()["version"] == version, timeout=60, what=f"v{version} serving new requests")
    return thread, out


def test_long_lived_connections_stay_on_their_release_then_are_cut(streams: ExampleProject) -> None:
    streams.ingot("deploy", check=True)
    ws_url = f"ws://127.0.0.1:{streams.port}/ws"
    with connect(ws_url, open_timeout=5) as old:
        deploy_cuts(streams, old, ws_url)
        rollback_cuts(streams, ws_url)


def deploy_cuts(streams: ExampleProject, old: ClientConnection, ws_url: str) -> None:
    events = Events(f"{streams.url}events?every=0.1")
    events.start()
    poll(lambda: len(events.events) >= 2, timeout=10, what="events streaming from v1")
    assert echo(old, "a") == "1:a"

    streams.set_version("2")
    thread, out = switch(streams, "2", "deploy")
    # The new release serves new connections; the open ones stay on the old release meanwhile.
    with connect(ws_url, open_timeout=5) as new:
        assert echo(new, "b") == "2:b"
    assert echo(old, "c") == "1:c"
    seen = len(events.events)
    poll(lambda: len(events.events) > seen, timeout=5, what="events still streaming from v1")
    assert closed_with(old) == going_away(streams)
    # On HAProxy the event stream is not cut by the drain (it cannot be told from a slow response): it
    # ends when its instance stops.
    assert events.ended.wait(20) and all(e.startswith("1 ") for e in events.events)
    thread.join(60)
    assert out and out[0].code == 0, out
    cut = 2 if builtin(streams) else 1
    assert f"{cut} long-lived connection{'s' if cut > 1 else ''} closed after drain_timeout {DRAIN}s" in out[0].out
    log = streams.ingot("audit", "log", "--json", "--limit", "200", check=True).json
    cuts = [e["payload"].get("cut") for e in log if e["action"] == "deploy.step"
            and e["payload"].get("step") == "drain" and e["payload"].get("status") == "done"]
    assert cuts == [cut]



def rollback_cuts(streams: ExampleProject, ws_url: str) -> None:
    """A rollback drains the same way."""
    with connect(ws_url, open_timeout=5) as current:
        rolled_back(streams, current)


def rolled_back(streams: ExampleProject, current: ClientConnection) -> None:
    assert echo(current, "d") == "2:d"
    thread, out = switch(streams, "1", "rollback")
    assert echo(current, "e") == "2:e"
    assert closed_with(current) == going_away(streams)
    thread.join(60)
    assert out and out[0].code == 0, out
    assert f"1 long-lived connection closed after drain_timeout {DRAIN}s" in out[0].out


def test_hold_lets_no_request_overlap_the_switch(tmp_path: Path) -> None:
    example = make_example(tmp_path, replicas=1)
    try:
        shutil.copy(STREAM_APP, example.root / "app.py")
        use_strategy(example, "    strategy: {type: blue-green, drain_timeout: 3s, hold: 5s}")
        example.ingot("deploy", check=True)
        example.set_version("2")
        # Each request takes 30 ms in the app: at the switch some are always in flight on the old release.
        with load(f"{example.url}?sleep=0.03", tmp_path, connections=6) as during:
            deployed = example.ingot("deploy", check=True)
            poll(lambda: example.get()["version"] == "2", timeout=10, what="v2 serving")
        assert "holding new requests up to 5s" in deployed.out
        assert during["failures"] == [], during["failures"][:5]
        spans = during["spans"]
        old = [(s, f) for v, s, f in spans if v == "1"]
        new = [(s, f) for v, s, f in spans if v == "2"]
        assert old and new
        # Not one request of the new release began before the last of the old one had finished.
        assert max(f for _, f in old) <= min(s for s, _ in new), (max(f for _, f in old), min(s for s, _ in new))
        log = example.ingot("audit", "log", "--json", "--limit", "200", check=True).json
        routes = [e["payload"] for e in log if e["action"] == "deploy.step" and e["payload"].get("step") == "route"
                  and e["payload"].get("status") == "done"]
        assert routes[-1]["hold"] == 5.0 and routes[-1]["held"] >= 1
    finally:
        stop_everything(example)
